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
from remoteio_factory.transport import server_context
from remoteio_server import backends, circuit, spi
from remoteio_server.access import AccessPolicy, parse_hosts, parse_pins, read_tokens
from remoteio_server.daemon import (
    DEFAULT_LEASE, DEFAULT_MAX_PENDING, MODES, ListenError, run_server)
from remoteio_server.session import printable


class SafeFormatter(logging.Formatter):
    """
    A log line is one line: control characters in a message (which may carry
    text from the network) are escaped, and the lines of a traceback are
    indented, so nothing a client sends can pass for a log line of its own.
    """

    def format(self, record):
        record.message = printable(record.getMessage(), limit=100_000)
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        text = self.formatMessage(record)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        extra = [record.exc_text] if record.exc_text else []
        if record.stack_info:
            extra.append(self.formatStack(record.stack_info))
        for block in extra:
            text += ''.join('\n    ' + printable(line, limit=100_000)
                            for line in block.splitlines())
        return text


def _env(name, default):
    return os.environ.get(f'REMOTEIO_SERVER_{name}', default)


def _wire(text):
    try:
        gpios = tuple(protocol.parse_gpio(g) for g in text.split(':'))
        if len(gpios) < 2 or len(set(gpios)) != len(gpios):
            raise ValueError(text)
        return gpios
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'a wire joins two or more different GPIOs, e.g. 17:27 or 5:6:13, '
            f'not {text!r}') from None


def _part(text):
    try:
        return circuit.parse_part(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_circuit(path):
    """
    A circuit file: one item per line, ``wire 17:27``, ``part button:4:bounce=5``
    or ``spi mcp3008:0`` (the values of --mock-wire, --mock-part, --mock-spi);
    ``#`` starts a comment. Returns (wires, parts, spi devices); ValueError
    naming the line else.
    """
    wires, parts, devices = [], [], []
    with open(path, encoding='utf-8') as file:
        for number, line in enumerate(file, 1):
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            what, _, value = line.partition(' ')
            try:
                if what == 'wire':
                    wires.append(_wire(value.strip()))
                elif what == 'part':
                    parts.append(_part(value.strip()))
                elif what == 'spi':
                    devices.append(spi.parse_mock_spi(value.strip()))
                else:
                    raise ValueError(f'a line is "wire ...", "part ..." or "spi ...", '
                                     f'not {line!r}')
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise ValueError(f'{path}, line {number}: {exc}') from None
    return wires, parts, devices


def _mock_spi(text):
    try:
        return spi.parse_mock_spi(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser():
    p = argparse.ArgumentParser(
        prog='remoteio-server',
        description='Drive this Raspberry Pi\'s GPIO pins for remote gpiozero clients '
                    '(GPIOZERO_PIN_FACTORY=remoteio on the client). Each claimed pin gets '
                    'its own worker process. Without a Pi, --backend mock simulates the pins.',
        epilog='Every option with a value can also be set with an environment variable '
               'REMOTEIO_SERVER_<OPTION>, e.g. REMOTEIO_SERVER_PORT=8509 or '
               'REMOTEIO_SERVER_TOKEN_FILE=/etc/remoteio/token; the token itself also as '
               'REMOTEIO_TOKEN. Reference: docs/configuration.md. To install the server as a '
               'systemd service on a Raspberry Pi (user, token, unit): sudo remoteio-server setup '
               '(remoteio-server setup --help).')
    p.add_argument('--host', default=_env('HOST', '0.0.0.0'),
                   help='address to listen on; 127.0.0.1 for this machine only, :: for IPv6 '
                        'and IPv4 (default: %(default)s)')
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
    p.add_argument('--mock-spi', action='append', default=[], metavar='DEVICE:CE', type=_mock_spi,
                   help='mock backend only: a simulated SPI ADC, mcp3008 or mcp3208, on CE0 or '
                        'CE1 of bus 0 (e.g. mcp3008:0); its channels are set with '
                        '"remoteio adc"; repeatable')
    p.add_argument('--mock-wire', action='append', default=[], metavar='GPIO:GPIO', type=_wire,
                   help='mock backend only: a virtual jumper wire joining two or more pins '
                        '(e.g. 17:27 or 5:6:13): outputs drive it, else the strongest pull '
                        'decides. May be repeated. Also REMOTEIO_SERVER_MOCK_WIRE, '
                        'comma-separated')
    p.add_argument('--mock-part', action='append', default=[], metavar='KIND:GPIO...',
                   type=_part,
                   help='mock backend only: a simulated part on the pins: button:4, '
                        'switch:4, pir:4, line:4, ldr:18, hcsr04:TRIG:ECHO, pot:channel=0 (on '
                        'a --mock-spi ADC); options :name=N, :bounce=MS (button), :to=3v3, '
                        ':charge_ms=MS (ldr). Set with "remoteio part NAME VALUE". May be '
                        'repeated. Also REMOTEIO_SERVER_MOCK_PART, comma-separated')
    p.add_argument('--mock-circuit', default=_env('MOCK_CIRCUIT', None), metavar='FILE',
                   help='mock backend only: wires, parts and SPI devices from a file, one per '
                        'line: "wire 17:27", "part button:4", "spi mcp3008:0"')
    p.add_argument('--http', type=int, default=_env('HTTP', None), metavar='PORT',
                   help='serve the browser dashboard on this port (0: a free one; default: '
                        'off): the header live, a timeline of each pin, the clients; on the '
                        'mock backend, controls for inputs and parts. Same access rules as '
                        'the server (this machine only without a token)')
    p.add_argument('--token-file', default=_env('TOKEN_FILE', None), metavar='FILE',
                   help='a file holding the shared secret clients must prove they know '
                        '(HMAC challenge-response; the secret never crosses the wire). The '
                        'environment variable REMOTEIO_TOKEN works too. Without a token the '
                        'server is in protected mode: it serves clients on this machine only')
    p.add_argument('--tokens', default=_env('TOKENS', None), metavar='FILE',
                   help='several named tokens, one per line: NAME SECRET [PINS] [rw|ro]; '
                        'PINS is "all" or a list like 17,18,22-27, ro makes the token read-only '
                        '(observe and status, never claim or drive). With --token-file too, '
                        'that one is a full-access token named "token". See docs/security.md')
    p.add_argument('--token', default=None,
                   help='the shared secret itself (visible to every user in the process list: '
                        'prefer --token-file or REMOTEIO_TOKEN)')
    p.add_argument('--allow-hosts', default=_env('ALLOW_HOSTS', None), metavar='LIST',
                   help='addresses or networks that may connect, e.g. 192.168.1.0/24,10.0.0.5 '
                        '(default: any, subject to protected mode)')
    p.add_argument('--allow-pins', default=_env('ALLOW_PINS', None), metavar='LIST',
                   help='GPIOs clients may claim, e.g. 17,18,22-27 (default: all)')
    p.add_argument('--tls-cert', default=_env('TLS_CERT', None), metavar='FILE',
                   help='serve TLS with this certificate (chain) in PEM; clients then need '
                        'REMOTEIO_TLS_CA (or REMOTEIO_TLS=1 for a publicly trusted certificate)')
    p.add_argument('--tls-key', default=_env('TLS_KEY', None), metavar='FILE',
                   help='the private key of --tls-cert, if it is not in the same file')
    p.add_argument('--lease', type=float, default=float(_env('LEASE', DEFAULT_LEASE)),
                   metavar='SECONDS',
                   help='a connection silent for this long is treated as gone and its pins are '
                        'soft-closed (clients send heartbeats); 0 turns it off '
                        '(default: %(default)s)')
    p.add_argument('--max-clients', type=int, default=int(_env('MAX_CLIENTS', 64)),
                   help='connections served at once (default: %(default)s)')
    p.add_argument('--max-pending', type=int,
                   default=int(_env('MAX_PENDING', DEFAULT_MAX_PENDING)),
                   help='connections not yet admitted (hello, and auth with a token) at once; '
                        'they do not count in --max-clients and must be admitted within 10 s '
                        '(default: %(default)s)')
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


def access_policy(args):
    """The token, host and pin rules from the arguments and environment."""
    # the command line first, then the file (option or variable), then REMOTEIO_TOKEN
    token = args.token or os.environ.get('REMOTEIO_TOKEN') or None
    if args.token_file and not args.token:
        try:
            with open(args.token_file, encoding='utf-8') as f:
                token = f.read().strip()
        except OSError as exc:
            parser().error(f'cannot read --token-file {args.token_file}: {exc.strerror}')
        if not token:
            parser().error(f'--token-file {args.token_file} is empty')
    try:
        hosts = parse_hosts(args.allow_hosts) if args.allow_hosts else None
    except ValueError as exc:
        parser().error(f'--allow-hosts: {exc}')
    try:
        pins = parse_pins(args.allow_pins) if args.allow_pins else None
    except ValueError as exc:
        parser().error(f'--allow-pins: {exc}')
    if token is not None and len(token) < 16:
        parser().error('the token must be at least 16 characters long (e.g. from '
                       '"python3 -c \'import secrets; print(secrets.token_urlsafe())\'")')
    tokens = []
    if args.tokens:
        try:
            tokens = read_tokens(args.tokens)
        except OSError as exc:
            parser().error(f'cannot read --tokens {args.tokens}: {exc.strerror}')
        except ValueError as exc:
            parser().error(f'--tokens: {exc}')
        if token is not None and any(t.secret == token.encode() for t in tokens):
            parser().error('--tokens: a token there has the same secret as --token-file')
    return AccessPolicy(token=token, allow_hosts=hosts, allow_pins=pins, tokens=tokens)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['setup']:
        # `remoteio-server setup ...`: install the service on this Pi (remoteio_server.setup)
        from remoteio_server import setup
        setup.main(argv[1:])
        return
    args = parser().parse_args(argv)
    if not args.mock_wire and _env('MOCK_WIRE', ''):
        args.mock_wire = [_wire(w) for w in _env('MOCK_WIRE', '').split(',') if w.strip()]
    if not args.mock_part and _env('MOCK_PART', ''):
        try:
            args.mock_part = [circuit.parse_part(p) for p in _env('MOCK_PART', '').split(',')
                              if p.strip()]
        except ValueError as exc:
            parser().error(f'REMOTEIO_SERVER_MOCK_PART: {exc}')
    if args.mock_circuit:
        try:
            wires, parts, devices = read_circuit(args.mock_circuit)
        except (OSError, ValueError) as exc:
            parser().error(f'--mock-circuit: {exc}')
        args.mock_wire += wires
        args.mock_part += parts
        args.mock_spi += devices
    if not args.mock_spi and _env('MOCK_SPI', ''):
        try:
            args.mock_spi = [spi.parse_mock_spi(d) for d in _env('MOCK_SPI', '').split(',')
                             if d.strip()]
        except ValueError as exc:
            parser().error(f'REMOTEIO_SERVER_MOCK_SPI: {exc}')
    if args.mock_spi and args.backend != 'mock':
        parser().error('--mock-spi applies to --backend mock only: on a real Pi, SPI talks to '
                       'the devices on the bus')
    try:
        spi.configure_mock(args.mock_spi)
    except ValueError as exc:
        parser().error(f'--mock-spi: {exc}')
    if args.mock_wire and args.backend != 'mock':
        parser().error('--mock-wire applies to --backend mock only: on a real Pi, connect '
                       'the pins with a jumper wire')
    if args.mock_part and args.backend != 'mock':
        parser().error('--mock-part applies to --backend mock only: on a real Pi, connect '
                       'the parts to the pins')
    if args.print_unit:
        sys.stdout.write(systemd_unit())
        return
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter('%(asctime)s %(name)s %(levelname)s: %(message)s'))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    if args.revision is not None and args.backend != 'mock':
        parser().error('--revision applies to --backend mock only')
    if args.revision is not None:
        try:
            int(args.revision, 16)
        except ValueError:
            parser().error(f'--revision must be a hexadecimal board revision, not {args.revision!r}')

    if args.lease < 0:
        parser().error('--lease must be 0 (off) or a number of seconds above 0')
    for option in ('max_clients', 'max_pending', 'max_pins', 'max_message'):
        if getattr(args, option) < 1:
            parser().error(f'--{option.replace("_", "-")} must be at least 1')
    access = access_policy(args)
    tls = None
    if args.tls_cert:
        try:
            tls = server_context(args.tls_cert, args.tls_key)
        except (OSError, ValueError) as exc:
            parser().error(f'--tls-cert/--tls-key: {exc}')
    elif args.tls_key:
        parser().error('--tls-key goes with --tls-cert')

    def ready(server):
        # One line on stdout that tools (and the tests) wait for.
        dashboard = ''
        if server.dashboard is not None:
            scheme = 'https' if server.tls is not None else 'http'
            host = server.host if server.host not in ('0.0.0.0', '::') else 'localhost'
            host = f'[{host}]' if ':' in host else host
            dashboard = f' dashboard={scheme}://{host}:{server.dashboard.port}/'
        print(f'remoteio-server ready on {server.host}:{server.port} '
              f'backend={server.backend} board={server.board.revision} '
              f'model={server.board.model} mode={server.mode}{dashboard}', flush=True)

    try:
        run_server(port=args.port, mode=args.mode, host=args.host, backend=args.backend,
                   revision=args.revision, ready=ready, max_message=args.max_message,
                   max_clients=args.max_clients, max_pending=args.max_pending,
                   max_pins=args.max_pins, spares=args.spares, mock_wires=args.mock_wire,
                   mock_parts=args.mock_part, access=access,
                   http_port=None if args.http is None else int(args.http), lease=args.lease, tls=tls, restore_signals=False)
    except ListenError as exc:
        print(f'remoteio-server: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}',
              file=sys.stderr)
        sys.exit(1)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f'remoteio-server: {exc}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
