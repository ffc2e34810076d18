"""What the Python benchmarks share."""
import os
import subprocess


def start(args, env=None):
    """Starts a `batch-runner` server command; returns the process and the URL it printed."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, **(env or {})))
    line = p.stdout.readline().strip()
    assert line.startswith("listening on "), line
    return p, line[len("listening on "):]
