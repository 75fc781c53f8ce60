"""
The quick-start demo: start a remoteio server on the mock backend (simulated
pins, on this machine only) with a virtual breadboard (a button, a
potentiometer on an MCP3008 ADC, an HC-SR04 distance sensor: the circuit file
examples/virtual_pi.circuit), run unmodified gpiozero examples against it with
GPIOZERO_PIN_FACTORY=remoteio, play the person at the breadboard (press the
button, turn the knob, move an object in front of the sensor), and show the
server's pins and the examples' output changing.

    python3 examples/demo.py [--seconds N] [--plain]
"""

import argparse
import math
import os
import re
import subprocess
import sys
import threading
import time

from remoteio_factory import server_status
from remoteio_factory.connection import Connection
from remoteio_factory.watch import parts_line

HERE = os.path.dirname(os.path.abspath(__file__))
CIRCUIT = os.path.join(HERE, 'virtual_pi.circuit')
#: Outputs (LEDs blinking and fading) and inputs (a button lighting an LED, a
#: potentiometer dimming one through the ADC, a distance sensor).
EXAMPLES = ['led_blink.py', 'pwmled_pulse.py', 'button_led.py', 'pot_dimmer.py',
            'distance_meter.py']
BAR = ' ▁▂▃▄▅▆▇█'


def start_server():
    server = subprocess.Popen(
        [sys.executable, '-m', 'remoteio_server', '--host', '127.0.0.1', '--port', '0',
         '--backend', 'mock', '--mock-circuit', CIRCUIT, '--http', '0',
         '--log-level', 'warning'],
        stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline()
    match = re.search(r'ready on (\S+):(\d+)', line)
    if not match:
        server.kill()
        sys.exit(f'the server did not start: {line!r}')
    print(line.split(' dashboard=')[0].strip())
    dashboard = re.search(r'dashboard=(\S+)', line)
    if dashboard:
        print(f'the dashboard, live in a browser on this machine: {dashboard.group(1)}')
    return server, int(match.group(2))


class Hand:
    """
    The person at the breadboard: presses the button for 0.8 s every 2 s (the
    first press at once), turns the potentiometer up and down every 4 s, and
    moves an object between 15 and 85 cm in front of the distance sensor every
    5 s, with the protocol's ``part`` requests (what ``remoteio part`` sends).
    """

    def __init__(self, port):
        self.connection = Connection('127.0.0.1', port)
        self.values = {}
        self.started = time.monotonic()

    def start(self):
        self.started = time.monotonic()

    def move(self):
        t = time.monotonic() - self.started
        wanted = {
            'button4': int(0.1 <= t % 2.0 < 0.9),
            'pot0': round(1 - abs((t / 4.0) % 2.0 - 1), 2),
            'hcsr04_23': round(0.5 - 0.35 * math.cos(2 * math.pi * t / 5), 3),
        }
        for name, value in wanted.items():
            if self.values.get(name) != value:
                self.connection.request('part', name=name, value=value)
                self.values[name] = value

    def close(self):
        self.connection.close()


class Output:
    """Collects the lines an example prints (on a thread of its own)."""

    def __init__(self, name, process):
        self.name = name
        self.lines = []
        self.shown = 0
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip())

    def last(self):
        return self.lines[-1] if self.lines else ''

    def new(self):
        lines, self.shown = self.lines[self.shown:], len(self.lines)
        return lines


#: The pins the examples claim once they run (the button's, the ADC's select, the sensor's).
EXAMPLE_PINS = {4, 27, 8, 12, 23, 24, 13}


def wait_until_running(port, clients, timeout=30):
    """Wait until the examples have claimed their pins: the show starts then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and all(c.poll() is None for c in clients):
        status = server_status('127.0.0.1', port, history=0)
        if EXAMPLE_PINS <= {p['gpio'] for p in status['pins'] if p['status'] == 'claimed'}:
            return
        time.sleep(0.05)


def picture(status):
    cells = []
    for pin in status['pins']:
        if pin['status'] != 'claimed':
            continue
        state = pin['state']
        if pin['frequency']:
            cells.append(f'{pin["name"]:>6} {BAR[round(state * 8)]} {state:4.2f}')
        elif pin['function'] == 'input':
            cells.append(f'{pin["name"]:>6} {"▲" if state else "▽"} in {int(bool(state))}')
        else:
            cells.append(f'{pin["name"]:>6} {"█" if state else "·"} {"on " if state else "off"} ')
    line = ' │'.join(cells) or '(no pins claimed)'
    parts = parts_line(status)
    return f'{line}\n       {parts}' if parts else line


def live_picture_possible():
    """The live header needs a terminal and the rich library (the watch extra)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return sys.stdout.isatty()


def show_header(port, clients, outputs, hand, deadline):
    """What `remoteio watch` shows: the server's 40-pin header, live; and the examples' output."""
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from remoteio_factory.watch import picture, title_of
    connection = Connection('127.0.0.1', port)

    def view():
        status = connection.request('status', history=0)
        said = Text('\n'.join(f'{o.name:>18}: {o.last()}' for o in outputs), style='green')
        return Group(picture(status, title_of(status, '127.0.0.1', port)), said)
    try:
        with Live(view(), refresh_per_second=10) as live:
            while time.monotonic() < deadline and any(c.poll() is None for c in clients):
                time.sleep(0.1)
                hand.move()
                live.update(view())
    finally:
        connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=6.0, help='how long to show the pins')
    parser.add_argument('--plain', action='store_true',
                        help='print lines instead of the live picture of the header')
    args = parser.parse_args()
    server, port = start_server()
    # (DistanceSensor suggests the pigpio factory for accurate readings; the remoteio
    # server times the echo's edges itself, so the advice does not apply here)
    env = dict(os.environ, GPIOZERO_PIN_FACTORY='remoteio', REMOTEIO_HOST='127.0.0.1',
               REMOTEIO_PORT=str(port),
               PYTHONWARNINGS='ignore::gpiozero.exc.PWMSoftwareFallback')
    clients, outputs = [], []
    hand = Hand(port)
    try:
        print(f'the virtual breadboard: {os.path.relpath(CIRCUIT)}')
        for name in EXAMPLES:
            print(f'running examples/{name} with GPIOZERO_PIN_FACTORY=remoteio')
            client = subprocess.Popen([sys.executable, os.path.join(HERE, name),
                                       str(args.seconds)], env=env, stdout=subprocess.PIPE,
                                      text=True)
            clients.append(client)
            outputs.append(Output(name, client))
        wait_until_running(port, clients)
        hand.start()
        deadline = time.monotonic() + args.seconds
        live = live_picture_possible() and not args.plain
        if live:
            show_header(port, clients, outputs, hand, deadline)
        else:
            print('the server\'s pins, as `remoteio status` sees them, and what the examples say:')
            while time.monotonic() < deadline and any(c.poll() is None for c in clients):
                hand.move()
                status = server_status('127.0.0.1', port, history=0)
                print(f'{args.seconds - (deadline - time.monotonic()):5.1f}s {picture(status)}',
                      flush=True)
                for output in outputs:
                    for line in output.new():
                        print(f'       {output.name}: {line}', flush=True)
                time.sleep(0.2)
        for client in clients:
            client.wait(30)
        for output in outputs if not live else ():
            for line in output.new():
                print(f'       {output.name}: {line}', flush=True)
        print('examples finished; every pin released:')
        status = server_status('127.0.0.1', port, history=0)
        for pin in status['pins']:
            print(f'  {pin["name"]}: {pin["status"]}, {pin["function"]}')
    finally:
        hand.close()
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
