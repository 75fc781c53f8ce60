"""
The ``remoteio-server`` command: arguments and environment → :func:`run_server`.

Every option has an environment variable (``REMOTEIO_SERVER_<OPTION>``) so a
systemd unit or a container can configure the server without a command line.
"""

import argparse
import logging
import os
import sys

from remoteio_factory import protocol
from remoteio_factory._version import __version__
from remoteio_server import backends
from remoteio_server.daemon import MODES, run_server


def _env(name, default):
    return os.environ.get(f'REMOTEIO_SERVER_{name}', default)


def _gpio_number(text):
    text = text.strip().upper()
    for prefix in ('GPIO', 'BCM'):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return int(text)


def _wire(text):
    try:
        out, into = text.split(':')
        return _gpio_number(out), _gpio_number(into)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'a wire is OUT:IN with two GPIO numbers, e.g. 17:27, not {text!r}') from None


def parser():
    p = argparse.ArgumentParser(
        prog='remoteio-server',
        description='Drive this Raspberry Pi\'s GPIO pins for remote gpiozero clients '
                    '(GPIOZERO_PIN_FACTORY=remoteio on the client). Each claimed pin gets '
                    'its own worker process. Without a Pi, --backend mock simulates the pins.',
        epilog='Every option can also be set with an environment variable '
               'REMOTEIO_SERVER_<OPTION>, e.g. REMOTEIO_SERVER_PORT=8509.')
    p.add_argument('--host', default=_env('HOST', '0.0.0.0'),
                   help='address to listen on; 127.0.0.1 for this machine only, :: for IPv6 '
                        '(default: %(default)s)')
    p.add_argument('--port', type=int, default=int(_env('PORT', protocol.DEFAULT_PORT)),
                   help='TCP port; 0 picks a free one and prints it (default: %(default)s)')
    p.add_argument('--backend', choices=('auto',) + backends.BACKENDS,
                   default=_env('BACKEND', 'auto'),
                   help='gpiozero pin factory that drives the pins; auto tries '
                        'lgpio, rpigpio, pigpio, native and falls back to mock '
                        '(default: %(default)s)')
    p.add_argument('--mode', choices=MODES, default=_env('MODE', 'wait'),
                   help='wait: every task for a pin runs to its end; nowait: a new task '
                        'pre-empts the running one (default: %(default)s)')
    p.add_argument('--revision', default=_env('REVISION', None),
                   help='board revision in hex for the mock backend, e.g. a02082 (Pi 3B, '
                        'the default), c03111 (Pi 4B), d04170 (Pi 5)')
    p.add_argument('--mock-wire', action='append', default=[], metavar='OUT:IN', type=_wire,
                   help='mock backend only: a virtual jumper wire; input pin IN follows '
                        'output pin OUT (e.g. 17:27 or GPIO17:GPIO27). May be repeated. '
                        'Also REMOTEIO_SERVER_MOCK_WIRE, comma-separated')
    p.add_argument('--max-clients', type=int, default=int(_env('MAX_CLIENTS', 64)),
                   help='connections served at once (default: %(default)s)')
    p.add_argument('--max-pins', type=int, default=int(_env('MAX_PINS', 64)),
                   help='pins one connection may claim (default: %(default)s)')
    p.add_argument('--max-message', type=int, default=int(_env('MAX_MESSAGE', protocol.MAX_MESSAGE)),
                   help='largest message in bytes (default: %(default)s)')
    p.add_argument('--spares', type=int, default=int(_env('SPARES', 2)),
                   help='pin workers kept started and ready, so a claim is fast '
                        '(default: %(default)s)')
    p.add_argument('--log-level', default=_env('LOG_LEVEL', 'info'),
                   choices=('debug', 'info', 'warning', 'error'),
                   help='(default: %(default)s)')
    p.add_argument('--print-unit', action='store_true',
                   help='print a systemd unit that runs this remoteio-server, and exit')
    p.add_argument('--version', action='version', version=f'remoteio-server {__version__}')
    return p


def systemd_unit():
    """The shipped unit file, with ExecStart pointing at this installation."""
    from importlib import resources
    text = resources.files('remoteio_server').joinpath('remoteio-server.service').read_text()
    command = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), 'remoteio-server')
    if not os.path.exists(command):
        command = f'{os.path.abspath(sys.executable)} -m remoteio_server'
    return text.replace('ExecStart=/opt/remoteio/bin/remoteio-server', f'ExecStart={command}')


def main(argv=None):
    args = parser().parse_args(argv)
    if not args.mock_wire and _env('MOCK_WIRE', ''):
        args.mock_wire = [_wire(w) for w in _env('MOCK_WIRE', '').split(',') if w.strip()]
    if args.mock_wire and args.backend != 'mock':
        parser().error('--mock-wire applies to --backend mock only: on a real Pi, connect '
                       'the pins with a jumper wire')
    if args.print_unit:
        sys.stdout.write(systemd_unit())
        return
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format='%(asctime)s %(name)s %(levelname)s: %(message)s')
    if args.revision is not None and args.backend != 'mock':
        parser().error('--revision applies to --backend mock only')
    if args.revision is not None:
        try:
            int(args.revision, 16)
        except ValueError:
            parser().error(f'--revision must be a hexadecimal board revision, not {args.revision!r}')

    def ready(server):
        # One line on stdout that tools (and the tests) wait for.
        print(f'remoteio-server ready on {server.host}:{server.port} '
              f'backend={server.backend} board={server.board_info.revision} '
              f'model={server.board_info.model} mode={server.mode}', flush=True)

    try:
        run_server(port=args.port, mode=args.mode, host=args.host, backend=args.backend,
                   revision=args.revision, ready=ready, max_message=args.max_message,
                   max_clients=args.max_clients, max_pins=args.max_pins, spares=args.spares,
                   mock_wires=args.mock_wire)
    except OSError as exc:
        print(f'remoteio-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}',
              file=sys.stderr)
        sys.exit(1)
    except (RuntimeError, ValueError) as exc:
        print(f'remoteio-server: {exc}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
