"""
SPI on the server: one round trip per transfer.

Flow: client (``RemoteIOSPI``) → wire (``spi_open``, ``spi_transfer``,
``spi_config``, ``spi_close``) → server session → **SPI bus** → bus worker →
the backend factory's SPI interface.

A bus is owned by one worker process (taken from the spawner like a pin
worker) that holds the clock, MOSI, MISO and select GPIOs as one unit. The
pin table records every one of those GPIOs as claimed by the session (so
another client gets ``pin_in_use``, ``status`` shows them, and the end of the
connection soft-closes the bus like a pin). In the worker, the backend's
factory builds the interface: ``factory.spi(clock_pin=..., mosi_pin=...,
miso_pin=..., select_pin=...)``; on a real Pi gpiozero picks hardware SPI for
the hardware bus pins, else software SPI, bit-banged inside that one process.

Mock backend only (``--mock-spi mcp3008:0``): a simulated MCP3008/MCP3208
sits on a select line of bus 0. It answers each transfer as the chip would
(start bit, single/differential bit, channel bits, null bit, the result MSB
first then LSB first), from the bits gpiozero's MCP3xxx classes send. Its
channel voltages (0..1 of Vref) are set with ``set_channel`` (``remoteio
adc``), whether or not the bus is open.
"""

import os
import time

from remoteio_factory import protocol
from remoteio_factory.protocol import ProtocolError
from remoteio_server.messages import (
    Err, Ok, Op, decode_request, describe_error, encode, pin_error)
from remoteio_server.pintable import CLAIM_TIMEOUT, NO_WORKER, ClaimedPin, PinStatus

#: The select lines of bus 0 a simulated device may sit on (CE0, CE1).
MOCK_SELECTS = {0: 8, 1: 7}
#: Bus 0 of every Pi: clock, MOSI, MISO.
BUS0 = {'clock': 11, 'mosi': 10, 'miso': 9}
#: Simulated devices: name -> (bits, channels).
MOCK_KINDS = {'mcp3008': (10, 8), 'mcp3208': (12, 8)}
#: Most words one transfer may carry.
MAX_WORDS = 4096
ROLES = ('clock', 'mosi', 'miso', 'select')
SETTINGS = ('clock_mode', 'lsb_first', 'select_high', 'bits_per_word', 'rate')

#: select gpio -> device kind, set by the server's command line (``--mock-spi``).
MOCK_DEVICES = {}


def parse_mock_spi(text):
    """``'mcp3008:0'`` -> ``('mcp3008', 8)`` (the kind and its select GPIO); ValueError else."""
    kind, _, ce = str(text).strip().lower().partition(':')
    if kind not in MOCK_KINDS:
        raise ValueError(f'a mock SPI device is one of {", ".join(MOCK_KINDS)}, not {kind!r}')
    try:
        select = MOCK_SELECTS[int(ce or 0)]
    except (ValueError, KeyError):
        raise ValueError(f'the device sits on CE0 or CE1 of bus 0: write {kind}:0 or '
                         f'{kind}:1, not {text!r}') from None
    return kind, select


def configure_mock(devices):
    """Set the simulated devices (a list of ``(kind, select)``) for this server process."""
    MOCK_DEVICES.clear()
    for kind, select in devices:
        if select in MOCK_DEVICES:
            raise ValueError(f'two mock SPI devices on GPIO{select}')
        MOCK_DEVICES[select] = kind


# The server's side -------------------------------------------------------------

class SPIBus(ClaimedPin):
    """A claimed SPI bus: one worker, several GPIOs (``gpios``), keyed by its select GPIO."""

    is_bus = True

    def __init__(self, registry, pins, owner, worker):
        super().__init__(registry, pins['select'], owner, worker)
        self.roles = {gpio: role for role, gpio in pins.items() if gpio is not None}
        self.gpios = tuple(self.roles)

    def record(self):
        """A bus's worker publishes no record: everything goes to the worker."""
        return None

    def entries(self, info):
        """One status entry per GPIO of the bus."""
        out = {}
        for gpio, role in self.roles.items():
            entry = dict(info)
            entry['spi'] = dict(info.get('spi') or {}, role=role)
            out[gpio] = entry
        return out


def _mock_values(registry):
    values = getattr(registry, 'mock_adc', None)
    if values is None:
        values = registry.mock_adc = {select: [0.0] * MOCK_KINDS[kind][1]
                                      for select, kind in MOCK_DEVICES.items()}
    return values


def claim_bus(registry, pins, session, mock=False, timeout=None):
    """Claim every GPIO of *pins* (role -> gpio) for *session*, with one worker; return the bus."""
    timeout = CLAIM_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + timeout
    gpios = [g for g in pins.values() if g is not None]
    with registry._lock:
        while True:
            if registry.closing:
                raise ProtocolError('shutting_down', 'the server is shutting down')
            held = [(g, registry._claimed[g]) for g in gpios if g in registry._claimed]
            if not held:
                break
            for gpio, current in held:
                if current.status in (PinStatus.CLAIMING, PinStatus.CLAIMED):
                    if current.owner is session:
                        raise ProtocolError('pin_in_use', f'GPIO{gpio} is in use by this '
                                                          f'connection already')
                    raise ProtocolError('pin_in_use', f'GPIO{gpio} is in use by client '
                                                      f'{current.owner.describe()}')
            if not registry._changed.wait(deadline - time.monotonic()):
                raise ProtocolError('pin_in_use', f'GPIO{held[0][0]} is still finishing the '
                                                  f'work of another client (soft close) after '
                                                  f'{timeout:g} s; try again later')
        bus = SPIBus(registry, pins, session, NO_WORKER)
        for gpio in gpios:
            registry._claimed[gpio] = bus
            registry.records.clear(gpio)     # (no record of an earlier pin worker outlives it)

    def forget():
        with registry._lock:
            for gpio in gpios:
                if registry._claimed.get(gpio) is bus:
                    del registry._claimed[gpio]
            registry._changed.notify_all()

    try:
        worker = registry.spawner.take()
        if registry.closing:
            worker.kill(grace=0)
            raise ProtocolError('shutting_down', 'the server is shutting down')
    except Exception as exc:
        forget()
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError('backend_error', f'cannot start a worker for the SPI bus: {exc}') from None
    bus.attach(worker)
    select = pins['select']
    device = MOCK_DEVICES.get(select) if mock else None
    args = {'pins': pins, 'mode': session.mode, 'device': device,
            'channels': _mock_values(registry).get(select) if device else None}
    try:
        state = bus.call(Op.SPI_CLAIM, args, max(0.5, deadline - time.monotonic()))
        with bus._lock:
            if bus.status is PinStatus.GONE:
                raise ProtocolError('worker_died', 'the worker of the SPI bus ended')
            bus.status = PinStatus.CLAIMED
    except (ProtocolError, TimeoutError):
        with bus._lock:
            if bus.status is not PinStatus.GONE:
                bus.status = PinStatus.ABANDONED
        worker.terminate()
        forget()
        raise
    if registry.closing:
        bus.release()
        raise ProtocolError('shutting_down', 'the server is shutting down')
    return bus, state


def _get_pins(session, message):
    pins = {}
    gpios = session.server.registry.gpios
    for role in ROLES:
        value = message.get(role)
        if value is None and role in ('mosi', 'miso'):
            pins[role] = None
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ProtocolError('invalid_pin', f'field {role!r} must be a GPIO number')
        if value not in gpios:
            raise ProtocolError('invalid_pin', f'GPIO{value} is not a GPIO pin of this board')
        session.may_drive(value, 'claim')
        pins[role] = value
    used = [g for g in pins.values() if g is not None]
    if len(set(used)) != len(used):
        raise ProtocolError('bad_request', 'the SPI pins must be different GPIOs')
    return pins


def _get_settings(message):
    settings = {}
    for name in SETTINGS:
        value = message.get(name)
        if value is None:
            continue
        if name in ('lsb_first', 'select_high'):
            if not isinstance(value, bool):
                raise ProtocolError('bad_request', f'field {name!r} must be true or false')
        elif name == 'clock_mode':
            if type(value) is not int or not 0 <= value <= 3:
                raise ProtocolError('bad_request', "field 'clock_mode' must be 0, 1, 2 or 3")
        elif name == 'bits_per_word':
            if type(value) is not int or not 1 <= value <= 32:
                raise ProtocolError('bad_request', "field 'bits_per_word' must be 1 to 32")
        elif not protocol.is_number(value) or not 0 < value <= 1e9:
            raise ProtocolError('bad_request', "field 'rate' must be a number of Hz above 0")
        settings[name] = value
    return settings


def _owned_bus(session, message):
    select = message.get('bus')
    if not isinstance(select, int) or isinstance(select, bool):
        raise ProtocolError('bad_request', "field 'bus' must be the bus's select GPIO")
    bus = session.pins.get(select)
    if bus is None or not getattr(bus, 'is_bus', False) or bus.gpio != select:
        raise ProtocolError('not_claimed', f'no SPI bus with select GPIO{select} is open '
                                           f'on this connection')
    if bus.status is PinStatus.RELEASING:
        raise ProtocolError('pin_closed', f'the SPI bus of GPIO{select} is closing')
    if bus.status is not PinStatus.CLAIMED:
        raise ProtocolError('not_claimed', f'the SPI bus of GPIO{select} is not open')
    return bus


def on_open(session, id, message):
    pins = _get_pins(session, message)
    settings = _get_settings(message)
    if len(session.pins) + 4 > session.server.max_pins:
        raise ProtocolError('limit', f'a connection may claim at most '
                                     f'{session.server.max_pins} pins')
    bus, state = claim_bus(session.server.registry, pins, session,
                           mock=session.server.backend == 'mock')
    for gpio in bus.gpios:
        session.pins[gpio] = bus
    session.claimed_any = True
    if settings:
        try:
            state = bus.call(Op.CONFIGURE, settings)
        except ProtocolError:
            session.pins.get(bus.gpio) is bus and bus.release()
            raise
    session.reply(id, bus=bus.gpio, pins=pins, **state)


def on_transfer(session, id, message):
    from remoteio_server.session import ClientReply
    bus = _owned_bus(session, message)
    data = message.get('data')
    count = message.get('count')
    if data is None and count is not None:        # a read: count words of zeros out
        if type(count) is not int or not 0 <= count <= MAX_WORDS:
            raise ProtocolError('bad_request', f"field 'count' must be 0 to {MAX_WORDS}")
        data = [0] * count
    if not isinstance(data, list) or len(data) > MAX_WORDS or not all(
            type(w) is int and 0 <= w <= 0xFFFFFFFF for w in data):
        raise ProtocolError('bad_request', f"field 'data' must be a list of at most {MAX_WORDS} "
                                           f'unsigned integer words')
    session.wait_caught_up(except_pin=bus)
    bus.forward(Op.TRANSFER, {'data': data}, ClientReply(session, id, False, None))


def on_config(session, id, message):
    from remoteio_server.session import ClientReply
    bus = _owned_bus(session, message)
    bus.forward(Op.CONFIGURE, _get_settings(message), ClientReply(session, id, False, None))


def on_close(session, id, message):
    from remoteio_server.session import ClientReply
    bus = _owned_bus(session, message)
    bus.release(ClientReply(session, id, protocol.get_bool(message, 'quiet'), None))


def on_set_channel(session, id, message):
    from remoteio_server.session import ClientReply
    if session.server.backend != 'mock':
        raise ProtocolError('mock_only', 'set_channel works on the mock backend only: on a '
                                         'real Pi, an ADC measures the voltage at its inputs')
    session.may_change('set an ADC channel')
    registry = session.server.registry
    select = message.get('device', MOCK_SELECTS[0])
    if select not in MOCK_DEVICES:
        known = ', '.join(f'GPIO{s} ({k})' for s, k in sorted(MOCK_DEVICES.items())) or 'none'
        raise ProtocolError('bad_request', f'no mock SPI device on select GPIO{select!r:.10}; '
                                           f'this server has: {known} (--mock-spi)')
    session.may_drive(select, 'set a channel of the ADC on')   # (its select GPIO: its bus)
    channel = message.get('channel')
    bits, channels = MOCK_KINDS[MOCK_DEVICES[select]]
    if type(channel) is not int or not 0 <= channel < channels:
        raise ProtocolError('bad_request', f"field 'channel' must be 0 to {channels - 1}")
    value = protocol.get_state(message, 'value')
    set_mock_channel(registry, select, channel, value, ClientReply(session, id, False, None))


def set_mock_channel(registry, select, channel, value, route):
    """Set channel *channel* of the simulated ADC on *select* to *value* (0..1 of Vref)."""
    _mock_values(registry)[select][channel] = float(value)
    with registry._lock:
        bus = registry._claimed.get(select)
    if bus is not None and getattr(bus, 'is_bus', False) and bus.status in (PinStatus.CLAIMED, PinStatus.RELEASING):
        bus.forward(Op.SET_CHANNEL, {'channel': channel, 'value': float(value)}, route)
    else:
        route.finish({}, None)


def session_handlers(session):
    """The SPI operations, for :class:`remoteio_server.session.Session`'s table."""
    return {
        'spi_open': lambda id, message: on_open(session, id, message),
        'spi_transfer': lambda id, message: on_transfer(session, id, message),
        'spi_config': lambda id, message: on_config(session, id, message),
        'spi_close': lambda id, message: on_close(session, id, message),
        'set_channel': lambda id, message: on_set_channel(session, id, message),
    }


# The worker's side ---------------------------------------------------------------

class MockADC:
    """A simulated MCP3008/MCP3208, answering bit by bit as the chip does."""

    def __init__(self, kind, channels=None):
        self.kind = kind
        self.bits, count = MOCK_KINDS[kind]
        self.channels = list(channels) if channels else [0.0] * count

    def code(self, single, channel):
        if single:
            value = self.channels[channel]
        else:
            # differential: pairs (0,1), (2,3), ...; the channel's low bit swaps IN+ and IN-
            low = channel & 6
            plus, minus = (low, low + 1) if not channel & 1 else (low + 1, low)
            value = self.channels[plus] - self.channels[minus]
        # Digital output code = 2**bits * VIN / VREF, clamped to the range of the chip
        return max(0, min((1 << self.bits) - 1, int(value * (1 << self.bits))))

    def exchange(self, mosi):
        """MOSI bits in (one per clock, chip select held) -> MISO bits out."""
        miso = [0] * len(mosi)
        try:
            start = mosi.index(1)
        except ValueError:
            return miso                       # no start bit: the chip says nothing
        if start + 4 >= len(mosi):
            return miso                       # the command was cut short
        single = mosi[start + 1]
        channel = mosi[start + 2] << 2 | mosi[start + 3] << 1 | mosi[start + 4]
        code = self.code(single, channel)
        bits = self.bits
        # one clock to sample, then a null bit, the result MSB first, then (if the
        # clock goes on) LSB first from B1, then zeros
        out = [0] + [(code >> b) & 1 for b in range(bits - 1, -1, -1)] + \
              [(code >> b) & 1 for b in range(1, bits)]
        for k, bit in enumerate(out):
            position = start + 6 + k
            if position >= len(miso):
                break
            miso[position] = bit
        return miso


def words_to_bits(words, width, lsb_first):
    order = range(width) if lsb_first else range(width - 1, -1, -1)
    return [(word >> b) & 1 for word in words for b in order]


def bits_to_words(bits, width, lsb_first):
    words = []
    for i in range(0, len(bits), width):
        chunk = bits[i:i + width]
        if lsb_first:
            chunk = chunk[::-1]
        word = 0
        for bit in chunk:
            word = word << 1 | bit
        words.append(word)
    return words


class BusWorker:
    """The SPI bus in its worker process; see the module docstring."""

    def __init__(self, conn, factory, backend, args):
        self.conn = conn
        self.factory = factory
        self.backend = backend
        self.pins = args['pins']
        self.mode = args.get('mode', 'wait')
        self.transfers = 0
        self.released = False
        self.closing = False
        self.device = MockADC(args['device'], args.get('channels')) \
            if args.get('device') and backend == 'mock' else None
        # gpiozero's software SPI bus builds a Device without passing pin_factory on,
        # which would make gpiozero pick (and build) a default factory: this is the one.
        from gpiozero import Device
        Device.pin_factory = factory
        self.spi = factory.spi(clock_pin=self.pins['clock'], mosi_pin=self.pins['mosi'],
                               miso_pin=self.pins['miso'], select_pin=self.pins['select'])
        self.hardware = 'Hardware' in type(self.spi).__name__

    def settings(self):
        spi = self.spi
        result = {'clock_mode': spi.clock_mode, 'lsb_first': bool(spi.lsb_first),
                  'select_high': bool(spi.select_high), 'bits_per_word': spi.bits_per_word,
                  'hardware': self.hardware, 'device': self.device.kind if self.device else None}
        try:
            result['rate'] = spi.rate
        except Exception:
            result['rate'] = None
        return result

    def transfer(self, data):
        width = self.spi.bits_per_word
        limit = 1 << width
        for word in data:
            if word >= limit:
                from gpiozero.exc import SPIBadArgs
                raise SPIBadArgs(f'word {word} does not fit in {width} bits per word')
        self.transfers += 1
        if self.device is not None:
            if self.spi.select_high:          # the chip's CS is active low: never selected
                return [0] * len(data)
            lsb = bool(self.spi.lsb_first)
            return bits_to_words(self.device.exchange(words_to_bits(data, width, lsb)),
                                 width, lsb)
        return list(self.spi.transfer(data))

    def configure(self, args):
        for name in ('bits_per_word', 'clock_mode', 'lsb_first', 'select_high', 'rate'):
            if name in args:
                setattr(self.spi, name, args[name])
        return self.settings()

    def snapshot(self):
        return {'function': 'spi', 'state': None, 'frequency': None, 'pull': None,
                'writes': self.transfers, 'events': 0, 'edges': None, 'bounce': None,
                'worker_pid': os.getpid(), 'closing': self.closing, 'mode': self.mode,
                'task': None, 'queued': [], 'history': [],
                'spi': dict(self.settings(), transfers=self.transfers, **{
                    role: self.pins[role] for role in ROLES})}

    def release(self):
        self.closing = True
        final = self.snapshot()           # (the settings cannot be read once closed)
        final.update(function='input', closing=False)
        try:
            self.spi.close()
        finally:
            self.released = True
        return final

    def handle(self, raw):
        seq, op, args, request_id = decode_request(raw)
        try:
            if op == Op.TRANSFER:
                result = {'data': self.transfer(args['data'])}
            elif op == Op.CONFIGURE:
                result = self.configure(args)
            elif op == Op.SET_CHANNEL:
                if self.device is not None:
                    self.device.channels[args['channel']] = args['value']
                result = {}
            elif op == Op.SNAPSHOT:
                result = self.snapshot()
            elif op in (Op.SYNC, Op.HALT):
                result = {}
            elif op == Op.READ:
                result = {'function': 'spi', 'state': None, 'frequency': None, 'pull': None}
            elif op == Op.RELEASE:
                result = self.release()
            else:
                raise ProtocolError('bad_request', f'{op!r} does not apply to an SPI bus')
        except ProtocolError as exc:
            self.conn.send_bytes(encode(Err(seq, pin_error(exc.code, str(exc)), request_id)))
        except Exception as exc:
            self.conn.send_bytes(encode(Err(seq, describe_error(exc), request_id)))
        else:
            self.conn.send_bytes(encode(Ok(seq, result)))

    def run(self):
        while not self.released:
            self.handle(self.conn.recv_bytes())


def serve_bus(conn, factory, backend, seq, args):
    """The worker's life as an SPI bus (called by ``worker._main`` for ``spi_claim``)."""
    import signal
    from remoteio_server.worker import Terminated
    try:
        bus = BusWorker(conn, factory, backend, args)
    except Exception as exc:
        conn.send_bytes(encode(Err(seq, describe_error(exc))))
        return
    conn.send_bytes(encode(Ok(seq, bus.settings())))
    try:
        bus.run()
    except (EOFError, OSError, Terminated):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not bus.released:
            try:
                bus.release()
            except Exception:
                pass
