"""Starts moto's S3-compatible server on a free port for the integration tests.

Prints `listening on http://127.0.0.1:PORT` once it serves, and stops when its standard input
closes (the test process ended), so no server outlives the tests.
"""
import sys

from moto.server import ThreadedMotoServer

server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
port = server._server.server_port
print(f"listening on http://127.0.0.1:{port}", flush=True)
sys.stdin.read()
server.stop()
