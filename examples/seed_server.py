"""
The seed project's server example: run a remoteio server from Python.

    python3 seed_server.py [PORT]

It uses the best GPIO backend this machine has (on a PC: simulated pins) and
runs until Ctrl+C or SIGTERM, which switch every pin off and release it.
"""

import logging
import sys

from remoteio_server import run_server

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 1234
    run_server(port=port, ready=lambda server: print(
        f'remoteio-server ready on {server.host}:{server.port}', flush=True))
