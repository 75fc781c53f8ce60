"""
The quick-start demo: start a remoteio server on the mock backend (simulated
pins, on this machine only), run unmodified gpiozero examples against it with
GPIOZERO_PIN_FACTORY=remoteio, and show the server's pins changing.

    python3 examples/demo.py [--seconds N]
"""

import argparse
import os
import re
import subprocess
import sys
import time

from remoteio_factory import server_status

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = ['led_blink.py', 'pwmled_pulse.py', 'rgbled_colours.py']
BAR = ' ▁▂▃▄▅▆▇█'


def start_server():
    server = subprocess.Popen(
        [sys.executable, '-m', 'remoteio_server', '--host', '127.0.0.1', '--port', '0',
         '--backend', 'mock', '--log-level', 'warning'],
        stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    match = re.search(r'ready on (\S+):(\d+)', line)
    if not match:
        server.kill()
        sys.exit(f'the server did not start: {line!r}')
    print(line.strip())
    return server, int(match.group(2))


def picture(status):
    cells = []
    for pin in status['pins']:
        if pin['status'] != 'claimed':
            continue
        state = pin['state']
        if pin['frequency']:
            cells.append(f'{pin["name"]:>6} {BAR[round(state * 8)]} {state:4.2f}')
        else:
            cells.append(f'{pin["name"]:>6} {"█" if state else "·"} {"on " if state else "off"} ')
    return ' │'.join(cells) or '(no pins claimed)'


def live_picture_possible():
    """The live header needs a terminal and the rich library (the watch extra)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return sys.stdout.isatty()


def show_header(port, clients, deadline):
    """What `remoteio watch` shows: the server's 40-pin header, live."""
    from rich.live import Live

    from remoteio_factory.connection import Connection
    from remoteio_factory.watch import picture, title_of
    connection = Connection('127.0.0.1', port)
    try:
        status = connection.request('status', history=0)
        with Live(picture(status, title_of(status, '127.0.0.1', port)),
                  refresh_per_second=10) as live:
            while time.monotonic() < deadline and any(c.poll() is None for c in clients):
                time.sleep(0.1)
                status = connection.request('status', history=0)
                live.update(picture(status, title_of(status, '127.0.0.1', port)))
    finally:
        connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=6.0, help='how long to show the pins')
    parser.add_argument('--plain', action='store_true',
                        help='print lines instead of the live picture of the header')
    args = parser.parse_args()
    server, port = start_server()
    env = dict(os.environ, GPIOZERO_PIN_FACTORY='remoteio', REMOTEIO_HOST='127.0.0.1',
               REMOTEIO_PORT=str(port))
    clients = []
    try:
        for name in EXAMPLES:
            print(f'running examples/{name} with GPIOZERO_PIN_FACTORY=remoteio')
            clients.append(subprocess.Popen([sys.executable, os.path.join(HERE, name)], env=env))
        deadline = time.monotonic() + args.seconds
        if live_picture_possible() and not args.plain:
            show_header(port, clients, deadline)
        else:
            print('the server\'s pins, as `remoteio status` sees them:')
            while time.monotonic() < deadline and any(c.poll() is None for c in clients):
                status = server_status('127.0.0.1', port, history=0)
                print(f'{args.seconds - (deadline - time.monotonic()):5.1f}s {picture(status)}',
                      flush=True)
                time.sleep(0.2)
        for client in clients:
            client.wait(30)
        print('examples finished; every pin released:')
        status = server_status('127.0.0.1', port, history=0)
        for pin in status['pins']:
            print(f'  {pin["name"]}: {pin["status"]}, {pin["function"]}')
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        server.terminate()
        server.wait(15)
    failed = [name for name, c in zip(EXAMPLES, clients) if c.returncode != 0]
    if failed:
        sys.exit(f'examples failed: {", ".join(failed)}')


if __name__ == '__main__':
    main()
