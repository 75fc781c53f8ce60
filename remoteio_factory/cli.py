"""
The ``remoteio`` command: tools for a running remoteio server.

``remoteio status`` shows what the server is doing: its version, backend,
mode and board, the connected clients, and every pin it has driven, with the
last transitions. ``--json`` prints the same as the documented, stable JSON
(``docs/protocol.md``, *status*) for scripts and monitoring.

``remoteio drive GPIO17 high|low`` sets the level of an input on a server
running the mock backend (a simulated button press, for tests and demos); ``remoteio adc CHANNEL VALUE``
sets a channel of a simulated SPI ADC (``--mock-spi``); ``remoteio part NAME
VALUE`` sets a simulated part of the virtual Pi (``--mock-part``: a button's
press, a distance in metres, a light level).

``remoteio watch`` draws a live picture of the server's 40-pin header
(:mod:`remoteio_factory.watch`; needs the optional rich library).
"""

import argparse
import json
import sys

from remoteio_factory import protocol, settings
from remoteio_factory.exc import RemoteIOConfigError, RemoteIOConnectionError, RemoteIOError
from remoteio_factory.status import server_status


def _format_value(pin):
    state = pin.get('state')
    if state is None:
        return '-'
    if pin.get('frequency'):
        return f'duty {float(state):.3f} @ {pin["frequency"]:g} Hz'
    return 'high' if state else 'low'


def _format_event(event, now):
    kind, value = next((k, v) for k, v in event.items() if k != 't')
    if kind == 'state' and isinstance(value, bool):
        value = int(value)
    return f'{event["t"] - now:+.3f}s {kind}={value}'


def print_status(status, out=sys.stdout, history=5):
    board = status['board']
    out.write(
        f'remoteio-server {status["version"]} (protocol {status["protocol"]}), '
        f'backend {status["backend"]}, mode {status["mode"]}, up {status["uptime"]:.0f} s\n'
        f'board: Raspberry Pi {board["model"]} rev {board["pcb_revision"]} '
        f'(revision {board["revision"]}, {board["memory"]} MB, {board["soc"]})\n')
    clients = status['clients']
    out.write(f'\nclients: {len(clients)}\n')
    for client in clients:
        pins = ', '.join(f'GPIO{p}' for p in client['pins']) or 'no pins'
        out.write(f'  #{client["id"]:<4} {client["peer"]:<22} {client["client"] or "-"}: {pins}\n')
    pins = status['pins']
    out.write(f'\npins: {sum(1 for p in pins if p["owner"] is not None)} claimed\n')
    if pins:
        out.write(f'  {"pin":<7} {"owner":<6} {"status":<9} {"function":<9} {"value":<26} last transitions\n')
    now = status['monotonic']
    for pin in pins:
        owner = f'#{pin["owner"]}' if pin['owner'] is not None else '-'
        events = ', '.join(_format_event(e, now) for e in pin.get('history', [])[-history:])
        out.write(f'  {pin["name"]:<7} {owner:<6} {pin["status"]:<9} {pin.get("function") or "-":<9} '
                  f'{_format_value(pin):<26} {events}\n')
    circuit = status.get('circuit')
    if circuit:
        print_circuit(circuit, out)


def print_circuit(circuit, out=sys.stdout):
    """The virtual Pi's nets and parts (a mock server with --mock-wire or --mock-part)."""
    out.write(f'\nvirtual circuit: {len(circuit["nets"])} nets, {len(circuit["parts"])} parts\n')
    for net in circuit['nets']:
        pins = '+'.join(f'GPIO{g}' for g in net['pins'])
        level = '-' if net['level'] is None else net['level']
        extra = ''.join(f', {p}' for p in net['parts'])
        if net['driven']:
            extra += ', driven by remoteio drive'
        out.write(f'  {pins:<22} level {level}  ({net["signal"]}{extra})\n')
        if net['short']:
            out.write(f'    SHORT CIRCUIT: {net["short"]}\n')
    for part in circuit['parts']:
        fixed = ('name', 'kind', 'pins')
        values = ', '.join(f'{k}={v}' for k, v in part.items() if k not in fixed and
                           not isinstance(v, dict))
        where = ', '.join(f'{role} GPIO{g}' for role, g in part['pins'].items())
        if 'adc' in part:
            where = f'ADC on CE{part["adc"]["ce"]}, channel {part["adc"]["channel"]}'
        out.write(f'  {part["name"]:<12} {part["kind"]:<7} {where}: {values}\n')


def cmd_status(args):
    status = server_status(args.host, args.port, history=args.history)
    if args.json:
        json.dump(status, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write('\n')
    else:
        print_status(status, history=min(args.history, 5))


LEVELS = {'high': 1, 'low': 0, '1': 1, '0': 0, 'on': 1, 'off': 0}


def _gpio(text):
    try:
        return protocol.parse_gpio(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'a GPIO, e.g. GPIO17 or 17, not {text!r}') from None


def cmd_drive(args):
    from remoteio_factory.connection import Connection
    from remoteio_factory.factory import tls_context
    connection = Connection(args.host, args.port, tls=tls_context())
    try:
        connection.request('drive', pin=args.pin, state=LEVELS.get(args.level))
    finally:
        connection.close()
    print(f'GPIO{args.pin} let go' if LEVELS.get(args.level) is None else
          f'GPIO{args.pin} driven {args.level}')


MOCK_SPI_SELECTS = {'0': 8, '1': 7}


def _device(text):
    """``mcp3008:0`` (or ``0``/``1``, ``CE0``): the select GPIO of a mock SPI device."""
    ce = str(text).strip().lower().rpartition(':')[2].replace('ce', '')
    if ce not in MOCK_SPI_SELECTS:
        raise argparse.ArgumentTypeError(
            f'a mock SPI device is named as on the server\'s --mock-spi, e.g. mcp3008:0 '
            f'(CE0) or mcp3208:1 (CE1), not {text!r}')
    return MOCK_SPI_SELECTS[ce]


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'VALUE is a fraction of Vref, 0 to 1, not {text!r}')
    return value


def cmd_adc(args):
    from remoteio_factory.connection import Connection
    from remoteio_factory.factory import tls_context
    connection = Connection(args.host, args.port, tls=tls_context())
    try:
        connection.request('set_channel', device=args.device, channel=args.channel,
                           value=args.value)
    finally:
        connection.close()
    print(f'channel {args.channel} of the ADC on GPIO{args.device} set to {args.value:g} of Vref')


def _part_value(text):
    lowered = text.strip().lower()
    if lowered in LEVELS:               # on/off, high/low for a button, a PIR, a line
        return LEVELS[lowered]
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'VALUE is a number (or on/off), not {text!r}') from None


def cmd_part(args):
    from remoteio_factory.connection import Connection
    from remoteio_factory.factory import tls_context
    connection = Connection(args.host, args.port, tls=tls_context())
    try:
        connection.request('part', name=args.name, value=args.value)
    finally:
        connection.close()
    print(f'{args.name} set to {args.value:g}')


def cmd_watch(args):
    from remoteio_factory.factory import tls_context
    from remoteio_factory.watch import watch
    watch(args.host, args.port, interval=args.interval, once=args.once, tls=tls_context())


def cmd_mqtt(args):
    import logging
    import signal
    try:
        from remoteio_factory.mqtt.bridge import Bridge
        from remoteio_factory.mqtt.config import ConfigError, load
    except ImportError as exc:
        print(f'remoteio mqtt: {exc}; install the bridge\'s libraries with: '
              f'pip install \'remoteio-factory[mqtt]\'', file=sys.stderr)
        sys.exit(2)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f'remoteio mqtt: {exc}', file=sys.stderr)
        sys.exit(2)
    if args.check:
        print(f'{args.config}: {len(config.pins)} pins on {len(config.servers)} servers, '
              f'broker {config.broker.host}:{config.broker.port}')
        return
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format='%(asctime)s %(name)s %(levelname)s: %(message)s')
    bridge = Bridge(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: bridge.stop())
    bridge.run()


def _port(text):
    try:
        return settings.port_number(text, '--port')
    except RemoteIOConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _server_options(command):
    # None: the environment's (REMOTEIO_HOST, REMOTEIO_PORT) when the command runs, so a
    # bad value is reported by its name (see main)
    command.add_argument('--host', default=None,
                         help='server host (default: $REMOTEIO_HOST or localhost)')
    command.add_argument('--port', type=_port, default=None,
                         help=f'server port (default: $REMOTEIO_PORT or {protocol.DEFAULT_PORT})')


def parser():
    p = argparse.ArgumentParser(
        prog='remoteio', description='Tools for a remoteio server (remoteio-factory).',
        epilog='Environment: REMOTEIO_HOST, REMOTEIO_PORT (the server), REMOTEIO_TOKEN (its '
               'token, if it has one), REMOTEIO_TLS_CA or REMOTEIO_TLS=1 (if it uses TLS). '
               '"remoteio COMMAND --help" for each command.')
    sub = p.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    status = sub.add_parser(
        'status', help='show what the server is doing',
        description='Show the server\'s version, backend, mode and board, its clients, and '
                    'every pin it has driven with the last transitions.')
    _server_options(status)
    status.add_argument('--json', action='store_true', help='print the documented JSON form')
    status.add_argument('--history', type=int, default=20, metavar='N',
                        help='transitions per pin to fetch, 0 to 1000 (default: %(default)s)')
    status.set_defaults(run=cmd_status)
    drive = sub.add_parser(
        'drive', help='set the level of an input pin (mock backend only)',
        description='Set the level of an input pin on a server running the mock backend, as '
                    'if something were wired to it: e.g. press a Button on GPIO4 with '
                    '"remoteio drive GPIO4 low" (a button to ground, pull-up). The pin need '
                    'not be claimed yet. A real backend refuses: there, wire the pin.')
    drive.add_argument('pin', type=_gpio, metavar='PIN', help='the GPIO, e.g. GPIO17 or 17')
    drive.add_argument('level', choices=sorted(LEVELS) + ['none'], metavar='LEVEL',
                       help='high or low (also 1/0, on/off), or none: stop driving it')
    _server_options(drive)
    drive.set_defaults(run=cmd_drive)
    adc = sub.add_parser(
        'adc', help='set a channel of a simulated SPI ADC (mock backend only)',
        description='Set the voltage at a channel of a simulated MCP3008/MCP3208 (the '
                    'server\'s --mock-spi), as a fraction of its reference voltage: e.g. '
                    '"remoteio adc 0 0.5" and MCP3008(channel=0).value reads 0.5. The bus need '
                    'not be open yet. A real backend refuses: there, the ADC measures its inputs.')
    adc.add_argument('channel', type=int, metavar='CHANNEL', help='0 to 7')
    adc.add_argument('value', type=_fraction, metavar='VALUE', help='0 to 1 (of Vref)')
    adc.add_argument('--device', type=_device, default=8, metavar='DEVICE',
                     help='which mock device, as on the server: mcp3008:0 (CE0, the default) '
                          'or mcp3208:1 (CE1)')
    _server_options(adc)
    adc.set_defaults(run=cmd_adc)
    part = sub.add_parser(
        'part', help='set a simulated part of the virtual Pi (mock backend only)',
        description='Set the value of a simulated part attached with the server\'s --mock-part: '
                    'a button, switch, PIR or line sensor 1/0 (on/off), an HC-SR04\'s distance '
                    'in metres, a light sensor\'s light level 0 to 1, a potentiometer\'s '
                    'position 0 to 1. E.g. "remoteio part button4 on", "remoteio part '
                    'hcsr04_23 0.42". "remoteio status" lists the parts.')
    part.add_argument('name', metavar='NAME', help='the part, e.g. button4')
    part.add_argument('value', type=_part_value, metavar='VALUE', help='its new value')
    _server_options(part)
    part.set_defaults(run=cmd_part)
    watch = sub.add_parser(
        'watch', help='a live picture of the server\'s 40-pin header',
        description='Show the server\'s 40-pin header as it changes: every pin where it sits on '
                    'the board, with its owner, function and level (or PWM duty as a bar). '
                    'Ctrl+C quits. Needs the rich library: pip install \'remoteio-factory[watch]\'.')
    _server_options(watch)
    watch.add_argument('--interval', type=float, default=0.2, metavar='SECONDS',
                       help='time between updates (default: %(default)s)')
    watch.add_argument('--once', action='store_true', help='draw the picture once and exit')
    watch.set_defaults(run=cmd_watch)
    mqtt = sub.add_parser(
        'mqtt', help='a bridge between remoteio servers and an MQTT broker (Home Assistant)',
        description='Connect to an MQTT broker and to the remoteio servers the configuration '
                    'names, and expose the pins it lists: switches, lights (PWM), timed '
                    'impulses, inputs and observed pins, with Home Assistant\'s MQTT '
                    'discovery. Runs until SIGTERM or Ctrl+C. See docs/mqtt.md. Needs '
                    'paho-mqtt: pip install \'remoteio-factory[mqtt]\'.')
    mqtt.add_argument('config', metavar='CONFIG', help='the configuration file (TOML)')
    mqtt.add_argument('--check', action='store_true',
                      help='check the configuration and exit')
    mqtt.add_argument('--log-level', choices=('debug', 'info', 'warning', 'error'),
                      default='info', help='default: %(default)s')
    mqtt.set_defaults(run=cmd_mqtt)
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        if hasattr(args, 'port'):
            args.host = args.host or settings.env_host()
            args.port = args.port or settings.env_port()
        args.run(args)
    except RemoteIOConnectionError as exc:
        print(f'remoteio: {exc}', file=sys.stderr)
        sys.exit(2)
    except RemoteIOError as exc:
        print(f'remoteio: {exc}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
