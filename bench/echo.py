"""
The floor for a round trip: a plain Python TCP echo server, in its own process.

``python -m bench.echo [--lifetime SECONDS]`` listens on 127.0.0.1 (a free
port), prints ``echo ready on 127.0.0.1:PORT`` and echoes every byte back on
one connection at a time, with TCP_NODELAY, from blocking sockets: the least
work a Python server can do per round trip. It ends itself after *lifetime*
seconds (SIGALRM) if nobody stops it first; it serves a bounded number of
connections and of messages per connection.
"""

import argparse
import signal
import socket
import sys

HOST = '127.0.0.1'
#: More messages than any benchmark sends on one connection.
MAX_MESSAGES = 10_000_000
MAX_CONNECTIONS = 10_000


def echo_connection(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(MAX_MESSAGES):
        data = conn.recv(65536)
        if not data:
            return
        conn.sendall(data)


def serve(lifetime):
    signal.signal(signal.SIGALRM, lambda signum, frame: sys.exit(0))
    signal.alarm(int(lifetime))
    with socket.create_server((HOST, 0)) as listener:
        print(f'echo ready on {HOST}:{listener.getsockname()[1]}', flush=True)
        for _ in range(MAX_CONNECTIONS):
            conn, _ = listener.accept()
            with conn:
                echo_connection(conn)


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.echo', description=__doc__.split('\n\n')[0])
    p.add_argument('--lifetime', type=float, default=600.0,
                   help='seconds after which the server ends itself (default: %(default)s)')
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    serve(args.lifetime)


if __name__ == '__main__':
    main()
