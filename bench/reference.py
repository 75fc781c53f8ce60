"""
The reference server: the floor for a Python server speaking our protocol.

``python -m bench.reference [--port 0] [--lifetime SECONDS]`` listens on
127.0.0.1, prints ``reference ready on 127.0.0.1:PORT`` and serves protocol
v1 (``docs/protocol.md``) from **one process**: gpiozero ``MockFactory``
pins (``MockPWMPin``, board a02082) in-process, no worker processes. Each
connection has a thread of its own that reads with a blocking ``recv``,
handles every line of it under one lock (the pins are shared) and sends the
replies of the batch with one ``sendall``: no hand-off between threads on
the way. (A selector loop was measured too: a thread per connection answered
one client's write→read about 10 % faster with both on one CPU, within 5 %
of it across CPUs, and served 8 clients' reads as fast, within the noise.)
It is what the
benchmark compares our server with: the same client library
(``RemoteIOFactory``, gpiozero devices, the seed API) against the least a
Python server has to do for the same requests, so that what remains is the
cost of our design (a worker process per pin), not Python's.

It speaks enough of the protocol for the benchmark and for gpiozero's
devices: ``hello``, ``heartbeat``, ``ping``, ``claim``, ``release``,
``setup``, ``write``, ``frequency``, ``pull``, ``read``, ``edges``,
``subscribe``, ``drive`` (events pushed for subscribed inputs), ``task``,
``status`` (a minimal one: each pin's state, ``writes`` counter and SPI
transfers), ``bye``, and SPI (``spi_open``, ``spi_transfer``,
``spi_config``, ``spi_close``, ``set_channel``) with a simulated MCP3008 on
CE0. Fields are validated with the client package's own protocol module, as
our server validates them. No token, no TLS, no lease.

Tasks are served crudely: acknowledged at once, the level set, and the end
(``task_end``, ``completed``) pushed by a timer thread after ``time_ms``;
blink and pulse only hold the pin on; a later request for the pin ends a
running task (``superseded``, or ``replaced`` for an endless one in ``wait``
mode; ``stopped`` by its release). Only the acknowledgement's round trip is
measured against it.

It ends itself after *lifetime* seconds if nobody stops it first (SIGTERM).
"""

import argparse
import heapq
import itertools
import json
import signal
import socket
import sys
import threading
import time

from gpiozero.pins.mock import MockFactory, MockPWMPin

from remoteio_factory import protocol
from remoteio_factory.protocol import ProtocolError, encode, error_reply
from remoteio_factory.transport import set_send_timeout

HOST = '127.0.0.1'
REVISION = 'a02082'
VERSION = '0.0-reference'
#: A send that makes no progress for this long drops the client (it stopped reading).
SEND_TIMEOUT = 10.0
#: Most connections at once (the benchmark's load phase opens 8).
MAX_CONNECTIONS = 64
#: How often the accepting thread looks at the clock (for the lifetime).
ACCEPT_POLL = 0.5
#: Bounds on the loops: reads per connection, timer callbacks in all.
MAX_BATCHES = 10 ** 9
MAX_TIMER_RUNS = 10 ** 9
RECV_SIZE = 1 << 16
PWM_DEFAULT_HZ = 100.0
#: The simulated MCP3008's select GPIO (CE0) and resolution.
ADC_SELECT = 8
ADC_BITS = 10
SETTINGS = ('clock_mode', 'lsb_first', 'select_high', 'bits_per_word', 'rate')


class Failure(Exception):
    """A request failed with protocol error *code*."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Connection:
    """One client: its socket, unsent bytes, and what it owns."""

    __slots__ = ('sock', 'number', 'buffer', 'send_lock', 'outbox', 'pins', 'buses', 'hello',
                 'subscribed', 'closing', 'mode')

    def __init__(self, sock, number):
        self.sock = sock
        self.number = number
        self.buffer = b''
        self.send_lock = threading.Lock()
        self.outbox = []            # replies and pushes of the batch being handled
        self.pins = {}              # gpio -> MockPWMPin
        self.buses = {}             # select gpio -> Bus
        self.hello = False
        self.subscribed = set()
        self.closing = False
        self.mode = 'wait'


class Bus:
    """An open SPI bus: its GPIOs, settings and transfer count."""

    def __init__(self, pins, settings):
        self.pins = pins
        self.settings = settings
        self.transfers = 0


class Task:
    """A running timed task (crude: see the module docstring)."""

    __slots__ = ('conn', 'id', 'gpio', 'endless', 'active')

    def __init__(self, conn, id, gpio, endless):
        self.conn, self.id, self.gpio, self.endless, self.active = conn, id, gpio, endless, True


def state_object(pin):
    """The protocol's pin state object."""
    function = pin.function
    frequency = pin.frequency
    return {
        'function': function,
        'state': bool(pin.state) if frequency is None else float(pin.state),
        'frequency': frequency,
        'pull': pin.pull if function == 'input' else None,
    }


def mcp3008_reply(words, bits_per_word, value_of):
    """
    The words an MCP3008 sends back while *words* go out, bit by bit: after
    the start bit, SGL/DIFF and D2..D0 come in; one sample clock and a null
    bit go out, then the result MSB first (``value_of(single, channel)``
    gives the fraction of Vref).
    """
    tx = [(word >> shift) & 1 for word in words for shift in range(bits_per_word - 1, -1, -1)]
    rx = [0] * len(tx)
    if 1 in tx:
        start = tx.index(1)
        if start + 4 < len(tx):
            single = tx[start + 1]
            channel = tx[start + 2] * 4 + tx[start + 3] * 2 + tx[start + 4]
            code = min((1 << ADC_BITS) - 1, int((1 << ADC_BITS) * value_of(single, channel)))
            first = start + 7                      # sample clock and null bit read 0
            for k in range(ADC_BITS):
                if first + k < len(rx):
                    rx[first + k] = (code >> (ADC_BITS - 1 - k)) & 1
    out = []
    for i in range(0, len(rx), bits_per_word):
        word = 0
        for bit in rx[i:i + bits_per_word]:
            word = (word << 1) | bit
        out.append(word)
    return out


class ReferenceServer:
    """The connections' threads, the timer and the protocol's operations; see the module docstring."""

    def __init__(self, port=0):
        self.factory = MockFactory(revision=REVISION, pin_class=MockPWMPin)
        self.gpios = frozenset(
            int(info.name[4:]) for header in self.factory.board_info.headers.values()
            for info in header.pins.values() if 'gpio' in info.interfaces)
        self.owners = {}            # gpio -> Connection
        self.writes = {}            # gpio -> successful writes
        self.tasks = {}             # gpio -> Task
        self.timers = []            # heap of (deadline, n, callback)
        self.timer_numbers = itertools.count()
        self.channels = {}          # ADC channel -> fraction of Vref
        self.numbers = itertools.count(1)
        self.connections = set()
        #: Held while a request is handled (the pins are shared); see :meth:`serve_connection`.
        self.lock = threading.Lock()
        self.timer_due = threading.Condition(self.lock)
        self.listener = socket.create_server((HOST, port))
        self.listener.settimeout(ACCEPT_POLL)
        self.ops = {
            'hello': self.op_hello, 'heartbeat': self.op_heartbeat, 'ping': self.op_heartbeat,
            'claim': self.op_claim, 'release': self.op_release, 'setup': self.op_setup,
            'write': self.op_write, 'frequency': self.op_frequency, 'pull': self.op_pull,
            'read': self.op_read, 'edges': self.op_edges, 'subscribe': self.op_subscribe,
            'drive': self.op_drive, 'task': self.op_task, 'status': self.op_status,
            'bye': self.op_bye, 'spi_open': self.op_spi_open,
            'spi_transfer': self.op_spi_transfer, 'spi_config': self.op_spi_config,
            'spi_close': self.op_spi_close, 'set_channel': self.op_set_channel,
        }

    @property
    def port(self):
        return self.listener.getsockname()[1]

    # Threads ---------------------------------------------------------------------
    # One thread per connection: blocking recv, the lines handled under the lock,
    # the replies of the batch sent in one sendall. A connection's send lock is taken
    # before the lock is let go, so what a thread sends keeps the order in which the
    # lock decided it (a task's acknowledgement before the timer's task_end push).

    def serve(self, lifetime):
        """Accept connections until *lifetime* seconds have passed (or SIGTERM)."""
        threading.Thread(target=self.run_timers, name='timers', daemon=True).start()
        end = time.monotonic() + lifetime
        while time.monotonic() < end:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            if len(self.connections) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            set_send_timeout(sock, SEND_TIMEOUT)      # a client that stops reading
            conn = Connection(sock, next(self.numbers))
            with self.lock:
                self.connections.add(conn)
            threading.Thread(target=self.serve_connection, args=(conn,), daemon=True,
                             name=f'connection-{conn.number}').start()

    def serve_connection(self, conn):
        """Read, handle, reply, until the client leaves (or says bye)."""
        sock = conn.sock
        try:
            for _ in range(MAX_BATCHES):
                data = sock.recv(RECV_SIZE)
                if not data:
                    break
                lines = (conn.buffer + data).split(b'\n') if conn.buffer else data.split(b'\n')
                conn.buffer = lines.pop()
                with self.lock:
                    out = self.handle_batch(conn, lines)
                    conn.send_lock.acquire()
                try:
                    if out:
                        sock.sendall(out)
                finally:
                    conn.send_lock.release()
                if conn.closing:
                    break
        except OSError:
            pass                    # reset, or a send that timed out: the client is gone
        finally:
            with self.lock:
                self.drop(conn)

    def handle_batch(self, conn, lines):
        """Handle the complete lines one recv brought; return the replies and pushes, encoded."""
        outbox = conn.outbox
        for line in lines:
            reply = self.handle(conn, line)
            if reply is not None:
                outbox.append(reply)
            if conn.closing:
                break
        if len(conn.buffer) >= protocol.MAX_MESSAGE:
            outbox.append(encode(error_reply(None, 'message_too_large', 'message too large')))
            conn.closing = True
        out = b''.join(outbox)
        outbox.clear()
        return out

    def push(self, conn, message):
        """Send a push to *conn* now (the lock held: a drive's event for another client)."""
        if conn.sock is None:
            return
        with conn.send_lock:
            try:
                conn.sock.sendall(encode(message))
            except OSError:
                conn.sock.shutdown(socket.SHUT_RDWR)      # its thread then drops it

    def drop(self, conn):
        """Close the connection and release what it owns (the lock held)."""
        if conn.sock is None:
            return
        self.connections.discard(conn)
        with conn.send_lock:
            conn.sock.close()
            conn.sock = None
        for gpio in list(conn.pins):
            self.free_pin(conn, gpio)
        for select in list(conn.buses):
            self.free_bus(conn, select)
        conn.outbox.clear()

    # Timers ----------------------------------------------------------------------

    def at(self, deadline, callback):
        """
        Call ``callback()`` (the lock held) at *deadline*; it returns
        ``(conn, message)`` to push, or None.
        """
        heapq.heappush(self.timers, (deadline, next(self.timer_numbers), callback))
        self.timer_due.notify()

    def run_timers(self):
        """The timer thread: each due callback under the lock, its push sent after it."""
        with self.lock:
            for _ in range(MAX_TIMER_RUNS):
                if not self.timers:
                    self.timer_due.wait()
                    continue
                wait = self.timers[0][0] - time.monotonic()
                if wait > 0:
                    self.timer_due.wait(wait)
                    continue
                push = heapq.heappop(self.timers)[2]()
                if push is None or push[0].sock is None:
                    continue
                conn, message = push
                conn.send_lock.acquire()
                self.lock.release()
                try:
                    conn.sock.sendall(encode(message))
                except (OSError, AttributeError):
                    pass               # gone meanwhile: its thread drops it
                finally:
                    conn.send_lock.release()
                    self.lock.acquire()

    # Requests --------------------------------------------------------------------

    def handle(self, conn, line):
        """One request line → the encoded reply, or None (quiet, or nothing to say)."""
        try:
            message = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            return encode(error_reply(None, 'malformed', 'message is not valid JSON'))
        if not isinstance(message, dict):
            return encode(error_reply(None, 'malformed', 'message is not a JSON object'))
        id = message.get('id')
        try:
            protocol.get_id(message)
            operation = self.ops.get(message.get('op'))
            if operation is None:
                raise Failure('unknown_op', f'unknown operation {str(message.get("op"))[:40]!r}')
            if not conn.hello and message['op'] != 'hello':
                raise Failure('hello_required', 'say hello first')
            reply = operation(conn, message)
        except ProtocolError as exc:
            return encode(error_reply(id, exc.code, str(exc), pin=self.pin_field(message)))
        except Failure as exc:
            return encode(error_reply(id, exc.code, str(exc), pin=self.pin_field(message)))
        except Exception as exc:                    # gpiozero's, from the mock pin
            code = protocol.CODE_FOR_EXCEPTION.get(type(exc).__name__, 'backend_error')
            return encode(error_reply(id, code, str(exc) or type(exc).__name__,
                                      type=type(exc).__name__, pin=self.pin_field(message)))
        if reply is None:
            return None
        reply['id'] = id
        reply['ok'] = True
        return encode(reply)

    @staticmethod
    def pin_field(message):
        pin = message.get('pin')
        return pin if isinstance(pin, int) and not isinstance(pin, bool) else None

    def owned(self, conn, message):
        """The pin *message* names, which *conn* must own; ends a running task on it."""
        gpio = protocol.get_gpio(message, self.gpios)
        pin = conn.pins.get(gpio)
        if pin is None:
            raise Failure('not_claimed', f'GPIO{gpio} is not claimed by this connection')
        if gpio in self.tasks:
            self.end_task(gpio)
        return gpio, pin

    @staticmethod
    def quiet(message):
        return protocol.get_bool(message, 'quiet')

    # Connection operations -------------------------------------------------------

    def op_hello(self, conn, message):
        versions = message.get('protocol')
        versions = versions if isinstance(versions, list) else [versions]
        if protocol.PROTOCOL_VERSION not in versions:
            raise Failure('unsupported_protocol', 'this server speaks protocol 1')
        mode = protocol.get_str(message, 'mode', protocol.MODES, required=False)
        conn.mode = mode or conn.mode
        conn.hello = True
        return {'protocol': protocol.PROTOCOL_VERSION, 'server': 'remoteio-reference',
                'version': VERSION, 'backend': 'mock', 'revision': REVISION,
                'mode': conn.mode, 'capabilities': {'pwm': True, 'edges': True},
                'session': conn.number, 'monotonic': time.monotonic(),
                'max_message': protocol.MAX_MESSAGE, 'lease': 0, 'tls': False, 'auth': None}

    def op_heartbeat(self, conn, message):
        return {'monotonic': time.monotonic()}

    def op_bye(self, conn, message):
        conn.closing = True
        return {}

    def op_status(self, conn, message):
        pins = []
        for gpio, owner in sorted(self.owners.items()):
            pin = self.factory.pin(f'GPIO{gpio}')
            entry = dict(state_object(pin), gpio=gpio, owner=owner.number,
                         writes=self.writes.get(gpio, 0), history=[])
            for bus in owner.buses.values():
                if gpio in bus.pins.values():
                    entry['function'] = 'spi'
                    entry['spi'] = {'transfers': bus.transfers}
            pins.append(entry)
        return {'protocol': protocol.PROTOCOL_VERSION, 'server': 'remoteio-reference',
                'backend': 'mock', 'monotonic': time.monotonic(), 'pins': pins}

    # Pins ------------------------------------------------------------------------

    def op_claim(self, conn, message):
        gpio = protocol.get_gpio(message, self.gpios)
        pin = conn.pins.get(gpio)
        if pin is None:
            if gpio in self.owners:
                raise Failure('pin_in_use', f'GPIO{gpio} is in use by another connection')
            pin = self.factory.pin(f'GPIO{gpio}')
            self.owners[gpio] = conn
            conn.pins[gpio] = pin
        reply = state_object(pin)
        reply['pin'] = gpio
        return reply

    def op_release(self, conn, message):
        gpio = protocol.get_gpio(message, self.gpios)
        pin = conn.pins.get(gpio)
        if pin is None:
            raise Failure('not_claimed', f'GPIO{gpio} is not claimed by this connection')
        quiet = self.quiet(message)
        self.free_pin(conn, gpio)
        return None if quiet else state_object(pin)

    def free_pin(self, conn, gpio):
        pin = conn.pins.pop(gpio)
        if gpio in self.tasks:
            self.end_task(gpio, 'stopped')
        conn.subscribed.discard(gpio)
        self.owners.pop(gpio, None)
        pin.close()                 # as gpiozero closes a pin: PWM off, an input

    def op_setup(self, conn, message):
        gpio, pin = self.owned(conn, message)
        function = protocol.get_str(message, 'function', protocol.FUNCTIONS, 'invalid_function')
        quiet = self.quiet(message)
        if function == 'output':
            if 'pull' in message:
                raise Failure('bad_request', "'pull' goes with an input")
            state = protocol.get_state(message, required=False)
            if state is None:
                pin.function = 'output'
            else:
                pin.output_with_state(state)
        else:
            if 'state' in message:
                raise Failure('bad_request', "'state' goes with an output")
            pull = protocol.get_str(message, 'pull', protocol.PULLS, 'invalid_pull',
                                    required=False)
            if pull is None:
                pin.function = 'input'
            else:
                pin.input_with_pull(pull)
        return None if quiet else state_object(pin)

    def op_write(self, conn, message):
        gpio, pin = self.owned(conn, message)
        state = protocol.get_state(message)
        pin.state = state
        self.writes[gpio] = self.writes.get(gpio, 0) + 1
        if len(pin.states) > 1024:       # the mock pin records every change: keep it bounded
            pin.clear_states()
        return None if message.get('quiet') is True else {}

    def op_frequency(self, conn, message):
        gpio, pin = self.owned(conn, message)
        frequency = protocol.get_frequency(message)
        quiet = self.quiet(message)
        pin.frequency = frequency
        return None if quiet else state_object(pin)

    def op_pull(self, conn, message):
        gpio, pin = self.owned(conn, message)
        pull = protocol.get_str(message, 'pull', protocol.PULLS, 'invalid_pull')
        quiet = self.quiet(message)
        pin.pull = pull
        return None if quiet else state_object(pin)

    def op_read(self, conn, message):
        gpio = protocol.get_gpio(message, self.gpios)
        pin = conn.pins.get(gpio)
        if pin is None:
            raise Failure('not_claimed', f'GPIO{gpio} is not claimed by this connection')
        return state_object(pin)

    def op_edges(self, conn, message):
        gpio, pin = self.owned(conn, message)
        pin.edges = protocol.get_str(message, 'edges', protocol.EDGES, 'invalid_edges')
        bounce = message.get('bounce')
        if bounce is not None and (not protocol.is_number(bounce)
                                   or not 0 <= bounce <= protocol.MAX_BOUNCE):
            raise Failure('invalid_bounce', 'bounce must be null or a number from 0 to 10')
        pin.bounce = bounce or None
        return None if self.quiet(message) else state_object(pin)

    def op_subscribe(self, conn, message):
        gpio, pin = self.owned(conn, message)
        if protocol.get_bool(message, 'events'):
            conn.subscribed.add(gpio)
        else:
            conn.subscribed.discard(gpio)
        return None if self.quiet(message) else {}

    def op_drive(self, conn, message):
        """Set a mock input's level; an edge goes to its owner if subscribed."""
        gpio = protocol.get_gpio(message, self.gpios)
        state = protocol.get_state(message)
        pin = self.factory.pin(f'GPIO{gpio}')
        if pin._function != 'input':
            raise Failure('set_input', f'GPIO{gpio} is not an input')
        before = bool(pin._state)
        if state:
            pin.drive_high()
        else:
            pin.drive_low()
        owner = self.owners.get(gpio)
        after = bool(pin._state)
        if owner is not None and gpio in owner.subscribed and before != after \
                and pin.edges in ('both', 'rising' if after else 'falling'):
            event = {'push': 'event', 'pin': gpio, 't': time.monotonic(), 'state': int(after)}
            if owner is conn:
                conn.outbox.append(encode(event))
            else:
                self.push(owner, event)
        return {}

    # Tasks -----------------------------------------------------------------------

    def op_task(self, conn, message):
        gpio, pin = self.owned(conn, message)
        kind = protocol.get_str(message, 'task', ('on', 'off', 'value', 'blink', 'pulse'))
        seconds = protocol.get_ms(message, 'time_ms', 0.0)
        active_high = protocol.get_bool(message, 'active_high', True)
        level = {'on': 1, 'off': 0, 'blink': 1, 'pulse': 1}.get(kind)
        if kind == 'value':
            level = protocol.get_state(message, 'value')
        quiet = self.quiet(message)
        id = message['id']
        if pin._function != 'output':
            self.task_end_now(conn, id, gpio, 'failed', 'set_input',
                              f'cannot run {kind} on pin GPIO{gpio}: it is not an output')
        else:
            if level not in (0, 1) and pin._frequency is None:
                pin.frequency = PWM_DEFAULT_HZ
            pin.state = level if active_high else 1 - level
            endless = not seconds and kind != 'off'
            task = Task(conn, id, gpio, endless)
            self.tasks[gpio] = task
            if not endless:
                self.at(time.monotonic() + seconds, lambda: self.task_done(task, active_high))
        return None if quiet else {}

    def task_end_now(self, conn, id, gpio, result, code, text):
        """The end of a task that could not run: pushed by the timer, after the acknowledgement."""
        self.at(0.0, lambda: (conn, {
            'push': 'task_end', 'id': id, 'pin': gpio, 'result': result,
            'error': {'code': code, 'type': protocol.ERROR_CODES.get(code, 'PinError'),
                      'message': text}}))

    def task_done(self, task, active_high):
        """A finite task's end (the timer's): the pin off, and the push to send."""
        if not task.active:
            return None
        task.active = False
        self.tasks.pop(task.gpio, None)
        pin = task.conn.pins.get(task.gpio)
        if pin is not None and pin._function == 'output':
            pin.state = 0 if active_high else 1
        return task.conn, {'push': 'task_end', 'id': task.id, 'pin': task.gpio,
                           'result': 'completed'}

    def end_task(self, gpio, result=None):
        """End the pin's task early: another request for the pin came (or its release)."""
        task = self.tasks.pop(gpio)
        task.active = False
        if result is None:
            result = 'replaced' if task.endless and task.conn.mode == 'wait' else 'superseded'
        task.conn.outbox.append(encode({'push': 'task_end', 'id': task.id, 'pin': gpio,
                                        'result': result}))

    # SPI: a simulated MCP3008 on CE0 -------------------------------------------------

    def op_spi_open(self, conn, message):
        pins = {}
        for role in ('clock', 'mosi', 'miso', 'select'):
            value = message.get(role)
            if value is None and role in ('mosi', 'miso'):
                pins[role] = None
                continue
            pins[role] = protocol.get_gpio({'pin': value}, self.gpios)
        used = [g for g in pins.values() if g is not None]
        if len(set(used)) != len(used):
            raise Failure('bad_request', 'the GPIOs of a bus must differ')
        for gpio in used:
            if gpio in self.owners:
                raise Failure('pin_in_use', f'GPIO{gpio} is in use')
        settings = {'clock_mode': 0, 'lsb_first': False, 'select_high': False,
                    'bits_per_word': 8, 'rate': 100000, 'hardware': False,
                    'device': 'mcp3008' if pins['select'] == ADC_SELECT else None}
        settings.update((k, message[k]) for k in SETTINGS if message.get(k) is not None)
        for gpio in used:
            self.owners[gpio] = conn
        conn.buses[pins['select']] = Bus(pins, settings)
        return dict(settings, bus=pins['select'], pins=pins)

    def bus(self, conn, message):
        bus = conn.buses.get(message.get('bus'))
        if bus is None:
            raise Failure('not_claimed', 'no such bus on this connection')
        return bus

    def op_spi_transfer(self, conn, message):
        bus = self.bus(conn, message)
        settings = bus.settings
        words = message.get('data')
        if words is None:
            words = [0] * protocol.get_count(message, 'count', 0, 4096)
        if not isinstance(words, list) or len(words) > 4096:
            raise Failure('bad_request', "'data' must be a list of at most 4096 words")
        bits = settings['bits_per_word']
        if any(not isinstance(w, int) or not 0 <= w < (1 << bits) for w in words):
            raise Failure('bad_request', f'each word must fit in {bits} bits')
        bus.transfers += 1
        if settings['device'] != 'mcp3008' or settings['select_high']:
            return {'data': [0] * len(words)}
        return {'data': mcp3008_reply(words, bits, self.adc_value)}

    def adc_value(self, single, channel):
        if single:
            return self.channels.get(channel, 0.0)
        pair = channel ^ 1
        return max(0.0, self.channels.get(channel, 0.0) - self.channels.get(pair, 0.0))

    def op_spi_config(self, conn, message):
        bus = self.bus(conn, message)
        bus.settings.update((k, message[k]) for k in SETTINGS if message.get(k) is not None)
        return dict(bus.settings)

    def op_spi_close(self, conn, message):
        self.bus(conn, message)
        self.free_bus(conn, message['bus'])
        return {'function': 'input', 'state': None, 'frequency': None, 'pull': None}

    def free_bus(self, conn, select):
        bus = conn.buses.pop(select)
        for gpio in bus.pins.values():
            if gpio is not None:
                self.owners.pop(gpio, None)

    def op_set_channel(self, conn, message):
        channel = message.get('channel')
        if message.get('device', ADC_SELECT) != ADC_SELECT or channel not in range(8):
            raise Failure('bad_request', 'no such device or channel')
        self.channels[channel] = protocol.get_state(message, 'value')
        return {}


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.reference',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--port', type=int, default=0, help='0: a free port (default)')
    p.add_argument('--lifetime', type=float, default=600.0,
                   help='seconds after which the server ends itself (default: %(default)s)')
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = ReferenceServer(args.port)
    print(f'reference ready on {HOST}:{server.port}', flush=True)
    server.serve(args.lifetime)


if __name__ == '__main__':
    main()
