"""
One client connection on the server.

Flow: client → wire → server loop → **server session** → pin worker.

A session takes the complete lines the server's network loop has read from
its connection (:mod:`remoteio_server.daemon` does all socket I/O), validates
every field of every request (:mod:`remoteio_factory.protocol`), and either
answers it itself (hello, ping, status, claim) or forwards it to the worker of
a pin it owns. Requests for one pin reach that pin's worker in the order they
were sent. A read waits until everything the connection sent to *other* pins
has been carried out, so a client always reads its own writes. When the
connection ends, for any reason, every pin it owns is soft-closed: what was
sent is carried out, then the pin is switched off (PWM stopped, returned to an
input, as gpiozero closes a pin) and released.

Threads. Until a connection is *admitted* (a successful hello; on a server
with a token, a successful auth) the loop's thread handles its lines itself:
only hello and auth do anything then, both answer at once, so a connection
that has proved nothing costs no thread and no timer. An admitted session gets
one handler thread, which takes its requests in order (a claim may wait for a
worker, a read for the connection's pins). Replies and pushes, from that
thread and from the pins' reader threads, go to the connection's bounded
outbound queue (:meth:`Session.send`), which the loop writes: nobody ever
waits for a client's socket.
"""

import logging
import socket
import threading
import time
from collections import deque

from remoteio_factory import protocol
from remoteio_factory.protocol import MODES, ProtocolError, error_reply, encode
from remoteio_factory.tasks import KINDS as TASK_KINDS
from remoteio_factory.tasks import Task
from remoteio_server import spi
from remoteio_server.messages import Op
from remoteio_server.pintable import BARRIER_TIMEOUT, PinStatus, wait_caught_up, worker_died

log = logging.getLogger('remoteio_server.session')

#: A client that does not take its replies for this long is disconnected. With a
#: lease (the default) the lease is that limit instead.
SEND_TIMEOUT = 10.0
#: The shortest blink or pulse cycle (seconds): shorter would only keep a core busy.
MIN_CYCLE = 0.001
#: The kernel's send buffer for an observing connection (bytes).
OBSERVER_SNDBUF = 64 * 1024
#: A connection's first complete line must arrive within this long of its accept.
FIRST_LINE_TIMEOUT = 5.0
#: A connection must be admitted (hello; with a token, auth) within this long of its accept.
ADMIT_TIMEOUT = 10.0
#: Kept for code that imported it: the deadline for auth is ADMIT_TIMEOUT.
AUTH_TIMEOUT = ADMIT_TIMEOUT
#: Bytes of received requests waiting for the handler before the server stops
#: reading the connection (TCP then holds the client back).
INBOX_LIMIT = 1 << 20

#: A line this short may be carried out by the loop itself, when it waits for
#: nothing (Session.received).
_QUICK_LINE = 240
#: Requests the loop may carry out itself: answered at once (heartbeat, a read
#: from a pin's record) or handed to a pin's worker without waiting.
_QUICK_OPS = frozenset({'heartbeat', 'read', 'write', 'setup', 'frequency', 'pull', 'edges',
                        'subscribe', 'task'})
#: ... provided fewer than this many replies wait to be sent (else the handler
#: thread takes them, which waits for the client to read: back-pressure).
_QUICK_OUTBOX = 64 * 1024

_CONTROL = {i: f'\\x{i:02x}' for i in range(32)}
_CONTROL.update({9: '\\t', 10: '\\n', 13: '\\r', 127: '\\x7f'})


def printable(text, limit=200):
    """
    *text* (from the network) made safe for a log line: control and other
    unprintable characters escaped, so it cannot end the line or forge another,
    and at most *limit* characters kept.
    """
    text = str(text)
    if len(text) > limit:
        text = text[:limit] + '…'
    if text.isprintable():
        return text
    return ''.join(c if c.isprintable() else _CONTROL.get(ord(c)) or
                   (f'\\u{ord(c):04x}' if ord(c) < 0x10000 else f'\\U{ord(c):08x}')
                   for c in text)




class ClientReply:
    """Where a worker's answer goes when a client is waiting for it."""

    __slots__ = ('session', 'id', 'quiet', 'pin')

    def __init__(self, session, id, quiet, pin):
        self.session, self.id, self.quiet, self.pin = session, id, quiet, pin

    def finish(self, result, error):
        if error is not None:
            self.session.send(error_reply(
                self.id, error['code'], error['message'], error.get('type'), pin=self.pin))
        elif not self.quiet:
            reply = {'id': self.id, 'ok': True}
            if result:
                reply.update(result)
            self.session.send(reply)

    def task_ended(self, result, error):
        """A timed task this request started has ended: tell its sender."""
        message = {'push': 'task_end', 'id': self.id, 'pin': self.pin, 'result': result}
        if error is not None:
            message['error'] = error
        self.session.send(message)


class _End:
    """An item of the inbox that ends the session (after what came before it)."""

    __slots__ = ('reason', 'push', 'reply')

    def __init__(self, reason, push=None, reply=None):
        self.reason, self.push, self.reply = reason, push, reply


class Session:
    """One client connection; see the module docstring."""

    def __init__(self, server, channel, peer, id):
        self.server = server
        self.channel = channel             # the connection's network side (daemon.Channel)
        self.peer = peer
        self.id = id
        self.client = None
        self.connected = time.monotonic()
        self.pins = {}                     # gpio -> ClaimedPin
        self.claimed_any = False
        self.greeted = False
        self.authenticated = server.access.protected   # no token: loopback only, no auth
        self.admitted = False              # hello (and auth) done: it has a handler thread
        self.got_line = False              # a complete line has arrived
        self._nonce = None
        self.token = None                  # the access.Token it authenticated with
        self.mode = server.mode
        self.closed = False                # no more requests are taken
        self.end_reason = None             # why, if not the default of where it ended
        self._ended = False
        self._progress = threading.Condition()
        # The inbox: lines (and an _End) the loop has read, for the handler thread.
        self._inbox = deque()
        self._inbox_bytes = 0
        self._inbox_ready = threading.Condition(threading.Lock())
        self._thread = None
        self._dropping = False             # end now: skip the requests not yet taken
        self.busy = False                  # the handler is carrying out requests
        self.idle_since = self.connected   # ... and since when it has not been
        self.handlers = {
            'hello': self.on_hello,
            'auth': self.on_auth,
            'ping': self.on_ping,
            'heartbeat': self.on_heartbeat,
            'claim': self.on_claim,
            'release': self.on_release,
            'setup': self.on_setup,
            'write': self.on_write,
            'frequency': self.on_frequency,
            'pull': self.on_pull,
            'read': self.on_read,
            'task': self.on_task,
            'edges': self.on_edges,
            'subscribe': self.on_subscribe,
            'drive': self.on_drive,
            'part': self.on_part,
            'observe': self.on_observe,
            'status': self.on_status,
            'bye': self.on_bye,
        }
        self.handlers.update(spi.session_handlers(self))   # spi_open, spi_transfer, ...

    def describe(self):
        """``#3 (127.0.0.1:40000 name)``, safe to log (the name is the client's)."""
        name = f' {printable(self.client)}' if self.client else ''
        token = f' token {self.token.name}' if getattr(self, 'token', None) is not None else ''
        return f'#{self.id} ({self.peer}{name}{token})'

    # Sending ---------------------------------------------------------------

    def send(self, message):
        """Queue *message* for the client; never blocks (see daemon.Channel.post)."""
        self.channel.post(encode(message))

    # Input, from the server's loop -------------------------------------------

    def received(self, lines, error=None):
        """
        The loop has read complete *lines* (and, with *error*, a line too long
        to take). Before admission they are handled here and now; after it,
        they are queued for the handler thread. Returns False once the loop
        should stop reading for a while (the handler is that far behind).
        """
        for index, line in enumerate(lines):
            self.got_line = True
            if self._thread is not None:
                if (len(line) <= _QUICK_LINE and not self.closed and not self.busy
                        and not self._inbox and self._now(line)):
                    # The handler had nothing to do, and this request waits for nothing:
                    # carried out here, in order, without a thread hand-off.
                    continue
                self._queue(lines[index:], error)
                return self._inbox_bytes < INBOX_LIMIT
            if self.closed:
                return False
            self.handle_line(line)
            if self.closed:
                self.close('connection closed by the server')
                return False
        if self._thread is not None:
            if error is not None:
                self._queue([], error)
            return self._inbox_bytes < INBOX_LIMIT
        if error is not None and not self.closed:
            self._too_large(error)
            self.close(str(error))
            return False
        return True

    def end(self, reason, push=None, now=False):
        """
        The connection is over (closed by the client, broken, its lease
        expired, dropped, or the server stops): after the lines already
        received (or, *now*, at once, dropping them), send *push* if any,
        soft-close the pins and finish.
        """
        if self._thread is not None:
            if now:
                self._dropping = True
            self._queue([], _End(reason, push))
        elif not self._ended:
            if push is not None:
                self.send(push)
            self.close(reason)

    @property
    def gone(self):
        """True once the connection is dropped or broken: its replies would go nowhere."""
        return self.is_gone()

    def is_gone(self, probe=False):
        """:attr:`gone`; with *probe*, TCP is asked even before the client's end was read."""
        if not self._dropping and self.channel.peer_gone(probe):
            self._dropping = True          # nothing more is carried out for nobody
        return self._dropping

    @property
    def idle(self):
        """True while the handler has nothing to do (the lease runs only then)."""
        return not self.busy and not self._inbox

    def _queue(self, lines, end):
        with self._inbox_ready:
            for line in lines:
                self._inbox.append(line)
                self._inbox_bytes += len(line)
            if isinstance(end, ProtocolError):
                self._inbox.append(_End(str(end), reply=end))
            elif end is not None:
                self._inbox.append(end)
            self._inbox_ready.notify()

    def _too_large(self, exc):
        # The stream can no longer be trusted to be in step.
        self.send(error_reply(None, exc.code, str(exc)))
        self.send({'push': 'closing', 'reason': str(exc)})

    def _admit(self):
        """Hello (and auth) done: a place among the clients and a handler thread, or a refusal."""
        refusal = self.server.admit(self)
        if refusal is None:
            thread = threading.Thread(target=self._run, name=f'remoteio-session-{self.id}',
                                      daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:       # out of threads (or memory for a stack)
                self.server.unadmit(self)
                refusal = f'the server cannot take another client now ({exc})'
            else:
                self._thread = thread
                self.admitted = True
                return True
        self.server.note_refusal(self.peer, refusal)
        self.send({'push': 'closing', 'reason': refusal})
        self.end_reason = refusal
        self.closed = True
        return False

    # The handler thread ------------------------------------------------------

    def _run(self):
        """Carry out the admitted connection's requests, in order, until it ends."""
        reason = 'connection closed by the client'
        try:
            while not self.closed:
                with self._inbox_ready:
                    while not self._inbox:
                        self.busy = False
                        self.idle_since = time.monotonic()
                        self._inbox_ready.wait()
                    self.busy = True
                    items, self._inbox = self._inbox, deque()
                    paused = self._inbox_bytes >= INBOX_LIMIT
                    self._inbox_bytes = 0
                if paused:
                    self.channel.resume()
                for item in items:
                    if self._dropping and not isinstance(item, _End):
                        continue
                    if not isinstance(item, _End):
                        self.channel.wait_drained()   # a client that reads slowly waits
                        if self.gone:
                            continue
                    if isinstance(item, _End):
                        if item.reply is not None:
                            self._too_large(item.reply)
                        elif item.push is not None:
                            self.send(item.push)
                        reason = item.reason
                        self.closed = True
                        break
                    self.handle_line(item)
                    if self.closed:
                        reason = 'client said bye'
                        break
        except Exception:       # a bug: log it, and end the connection cleanly
            log.exception('client %s: the session failed', self.describe())
            reason = 'internal error'
        finally:
            self.close(reason)

    def _now(self, line):
        """
        On the loop's thread: carry out *line* now if it waits for nothing (see
        _QUICK_OPS) and return True; else False, and the handler thread takes it.
        A read qualifies when the connection's other pins have caught up and its
        pin's record answers it; a request for a worker when the worker's pipe
        has room for it (the send cannot block: ClaimedPin.can_post).
        """
        try:
            message = protocol.decode(line)
        except Exception:           # (RecursionError too): the handler reports it
            return False
        op = message.get('op')
        if type(op) is not str or op not in _QUICK_OPS or self.server.stopping or \
                self.channel.queued >= _QUICK_OUTBOX:
            return False
        try:
            pin = None if op == 'heartbeat' else self._pin_now(op, message)
        except Exception:             # a bug: the handler thread takes the request instead
            log.exception('client %s: checking a request on the loop failed', self.describe())
            return False
        if pin is False:
            return False
        if op == 'read':
            state = pin.read_record()
            if state is not None:
                self.reply(message['id'], **state)
            else:                     # its own worker answers, after what it was sent
                pin.forward(Op.READ, {}, ClientReply(self, message['id'], False, pin.gpio))
            return True
        self.handle_line(line, message)
        return True

    def _pin_now(self, op, message):
        """Part of :meth:`_now`: the pin *message* is for, if the loop can do it; else False."""
        gpio = message.get('pin')
        pin = self.pins.get(gpio) if type(gpio) is int else None
        if pin is None or not pin.can_post():
            return False
        if op == 'read':
            if not (pin.is_output() or self.caught_up(except_pin=pin)):
                return False          # the handler waits for the other pins
            try:
                message['id'] = protocol.get_id(message)
            except ProtocolError:
                return False
        return pin

    def handle_line(self, line, message=None):
        id = None
        try:
            if message is None:
                message = protocol.decode(line)
            id = protocol.get_id(message)
            op = message.get('op')
            if not isinstance(op, str):
                raise ProtocolError('bad_request', "field 'op' must be a string")
            handler = self.handlers.get(op)
            if handler is None:
                raise ProtocolError('unknown_op', f'unknown operation {op[:40]!r}')
            if not self.greeted and op != 'hello':
                raise ProtocolError('hello_required', 'the first request must be hello')
            if not self.authenticated and op not in ('hello', 'auth'):
                raise ProtocolError('auth_required', 'this server requires a token: '
                                                     'authenticate with auth first')
            if self.server.stopping:
                raise ProtocolError('shutting_down', 'the server is shutting down')
            handler(id, message)
        except Exception as exc:
            if isinstance(exc, ProtocolError):
                code = exc.code
            elif isinstance(exc, TimeoutError):
                code = 'timeout'
            else:   # a bug: report it, and go on serving the connection
                log.exception('client %s: request failed', self.describe())
                code = 'backend_error'
            pin = message.get('pin') if isinstance(message, dict) else None
            valid_pin = isinstance(pin, int) and not isinstance(pin, bool)
            self.send(error_reply(id, code, str(exc) or type(exc).__name__,
                                  pin=pin if valid_pin else None))

    # Helpers ---------------------------------------------------------------

    def owned(self, message):
        gpio = protocol.get_gpio(message, self.server.registry.gpios)
        pin = self.pins.get(gpio)
        if pin is not None and pin.status is PinStatus.RELEASING:
            raise ProtocolError('pin_closed', f'GPIO{gpio} is closed (finishing its work)')
        if pin is None or pin.status is not PinStatus.CLAIMED:
            raise ProtocolError('not_claimed', f'GPIO{gpio} is not claimed by this connection')
        return pin

    def allowed_gpio(self, message):
        """The request's GPIO, if the server lets this client claim or drive it."""
        gpio = protocol.get_gpio(message, self.server.registry.gpios)
        self.may_drive(gpio)
        return gpio

    def may_change(self, what):
        """ProtocolError unless this connection's token may change pins (not read-only)."""
        self.may_drive(None, what)

    def may_drive(self, gpio, what='claim or drive'):
        """ProtocolError unless the server, and this connection's token, let it have *gpio*."""
        why = self.server.access.refusal(self.token, gpio, what)
        if why:
            raise ProtocolError('not_allowed', why)

    def forward(self, id, message, op, args):
        pin = self.owned(message)
        quiet = protocol.get_bool(message, 'quiet')
        pin.forward(op, args, ClientReply(self, id, quiet, pin.gpio))

    def pin_progressed(self):
        with self._progress:
            self._progress.notify_all()

    def pin_freed(self, pin, died):
        if self.pins.get(pin.gpio) is pin:
            del self.pins[pin.gpio]
        if died and not self.closed:
            self.send({'push': 'pin_lost', 'pin': pin.gpio,
                       'error': worker_died(pin.gpio, 'died; the pin was freed')})
        self.pin_progressed()

    def wait_caught_up(self, except_pin=None):
        """Block until every pin but *except_pin* has taken what was sent to it."""
        wait_caught_up([p for p in set(self.pins.values()) if p is not except_pin],
                       self._progress, BARRIER_TIMEOUT)

    def caught_up(self, except_pin=None):
        """True if every pin but *except_pin* has taken what was sent to it (no waiting)."""
        # (a copy: a pin's reader thread may free a pin meanwhile; a wired pin being
        # released has not caught up until it is free, see pintable.wait_caught_up)
        return all(p is except_pin or (p.caught_up() if p.status is PinStatus.CLAIMED else
                                       not (p.status is PinStatus.RELEASING and p.on_circuit))
                   for p in tuple(self.pins.values()))

    def reply(self, id, **fields):
        self.send(dict(id=id, ok=True, **fields))

    # Handlers --------------------------------------------------------------
    # Each takes the request id and the decoded message; every field is
    # validated here before anything is forwarded.

    def on_hello(self, id, message):
        wanted = message.get('protocol')
        versions = wanted if isinstance(wanted, list) else [wanted]
        versions = [v for v in versions if type(v) is int]
        if protocol.PROTOCOL_VERSION not in versions:
            raise ProtocolError(
                'unsupported_protocol',
                f'this server speaks protocol {protocol.PROTOCOL_VERSION}, not {wanted!r}')
        mode = protocol.get_str(message, 'mode', MODES, required=False)
        client = message.get('client')
        if client is not None and not isinstance(client, str):
            raise ProtocolError('bad_request', "field 'client' must be a string")
        if client is not None:
            self.client = client[:100]
        if mode is not None:
            self.mode = mode          # for the pins claimed from now on
        self.greeted = True
        if self.authenticated and not self.admitted and not self._admit():
            return                    # refused (the server is full): told so, and closed
        info = self.server.hello_info(self)
        if not self.authenticated:
            self._nonce = self.server.access.challenge()
            info.update(auth=protocol.AUTH_SCHEME, nonce=self._nonce)
        else:
            info.update(auth=None)
        self.reply(id, **info)

    def on_auth(self, id, message):
        if self.authenticated:
            raise ProtocolError('bad_request', 'this connection needs no (further) auth')
        client_nonce = message.get('nonce')
        if not isinstance(client_nonce, str) or not 16 <= len(client_nonce) <= 256:
            raise ProtocolError('bad_request', "field 'nonce' must be a string of 16 to 256 characters")
        token = self.server.access.verify(self._nonce, message.get('mac'))
        if token is None:
            self.server.warn_limited('auth', 'client %s: authentication failed', self.describe())
            self.send(error_reply(id, 'auth_failed', 'wrong token'))
            self.send({'push': 'closing', 'reason': 'authentication failed: wrong token'})
            self.end_reason = 'authentication failed'
            self.closed = True
            return
        self.authenticated = True
        self.token = token
        if not self._admit():
            return                    # refused (the server is full): told so, and closed
        log.info('client %s authenticated with token %s', self.describe(), token.describe())
        self.reply(id, proof=self.server.access.proof(client_nonce, token), token=token.name,
                   read_only=token.read_only,
                   pins=None if token.pins is None else sorted(token.pins))

    def on_heartbeat(self, id, message):
        # The lease: any message keeps a connection alive; this one has no other effect.
        self.reply(id, monotonic=time.monotonic())

    def on_ping(self, id, message):
        self.wait_caught_up()
        self.reply(id, monotonic=time.monotonic())

    def on_claim(self, id, message):
        gpio = self.allowed_gpio(message)
        if gpio not in self.pins and len(self.pins) >= self.server.max_pins:
            raise ProtocolError('limit', f'a connection may claim at most {self.server.max_pins} pins')
        pin, state = self.server.registry.claim(gpio, self)
        if state is None:
            state = pin.call(Op.READ, {})
        self.pins[gpio] = pin
        self.claimed_any = True
        self.reply(id, pin=gpio, **state)

    def on_release(self, id, message):
        pin = self.owned(message)
        quiet = protocol.get_bool(message, 'quiet')
        pin.release(ClientReply(self, id, quiet, pin.gpio))

    def on_setup(self, id, message):
        function = protocol.get_str(message, 'function', protocol.FUNCTIONS, 'invalid_function')
        state = protocol.get_state(message, required=False)
        pull = protocol.get_str(message, 'pull', protocol.PULLS, 'invalid_pull', required=False)
        if state is not None and function != 'output':
            raise ProtocolError('bad_request', "'state' goes with function 'output' only")
        if pull is not None and function != 'input':
            raise ProtocolError('bad_request', "'pull' goes with function 'input' only")
        self.forward(id, message, Op.SETUP, {'function': function, 'state': state, 'pull': pull})

    def on_write(self, id, message):
        state = protocol.get_state(message)
        self.forward(id, message, Op.WRITE, {'state': state})

    def on_frequency(self, id, message):
        frequency = protocol.get_frequency(message)
        if frequency is not None and not self.server.capabilities['pwm']:
            raise ProtocolError('pwm_unsupported', f'the {self.server.backend} backend has no PWM')
        self.forward(id, message, Op.FREQUENCY, {'frequency': frequency})

    def on_pull(self, id, message):
        pull = protocol.get_str(message, 'pull', protocol.PULLS, 'invalid_pull')
        self.forward(id, message, Op.PULL, {'pull': pull})

    def on_read(self, id, message):
        pin = self.owned(message)
        if not pin.is_output():           # an output reads what its own worker drives
            self.wait_caught_up(except_pin=pin)
        state = pin.read_record()
        if state is not None:
            self.reply(id, **state)
        else:
            pin.forward(Op.READ, {}, ClientReply(self, id, False, pin.gpio))

    def on_task(self, id, message):
        kind = protocol.get_str(message, 'task', TASK_KINDS)
        args = {'kind': kind, 'duration': protocol.get_ms(message, 'time_ms')}
        if kind == 'value':
            args['level'] = protocol.get_state(message, 'value')
        if kind in ('blink', 'pulse'):
            for name, field in (('on_time', 'on_ms'), ('off_time', 'off_ms'),
                                ('fade_in', 'fade_in_ms'), ('fade_out', 'fade_out_ms')):
                args[name] = protocol.get_ms(message, field)
            args['n'] = protocol.get_count(message, 'n', 0, protocol.MAX_COUNT) or None
        args['active_high'] = protocol.get_bool(message, 'active_high', True)
        task = Task(**args)
        if task.cycle is not None and task.cycle < MIN_CYCLE:
            raise ProtocolError('bad_request', f'a {kind} cycle must last at least '
                                               f'{MIN_CYCLE * 1000:g} ms')
        if task.uses_pwm and not self.server.capabilities['pwm']:
            raise ProtocolError('pwm_unsupported', f'{kind} needs PWM; the {self.server.backend} '
                                                   f'backend has none')
        # Acknowledged once validated and on its way to the worker (whose pipe keeps
        # the order); a refusal there, or a failure when it runs, ends it (task_end).
        # (the acknowledgement goes first: a task_end always follows it)
        pin = self.owned(message)
        if not protocol.get_bool(message, 'quiet'):
            self.reply(id)
        pin.forward(Op.TASK, args, ClientReply(self, id, True, pin.gpio))

    def on_edges(self, id, message):
        edges = protocol.get_str(message, 'edges', protocol.EDGES, 'invalid_edges')
        bounce = message.get('bounce')
        if bounce is not None and (not protocol.is_number(bounce)
                                   or not 0 <= bounce <= protocol.MAX_BOUNCE):
            raise ProtocolError('invalid_bounce', f"field 'bounce' must be null or a number of "
                                                  f'seconds from 0 to {protocol.MAX_BOUNCE}')
        self.forward(id, message, Op.EDGES, {'edges': edges, 'bounce': bounce})

    def on_subscribe(self, id, message):
        events = protocol.get_bool(message, 'events', True)
        if events and not self.server.capabilities['edges']:
            raise ProtocolError('edge_detect_unsupported',
                                f'the {self.server.backend} backend has no edge detection')
        self.forward(id, message, Op.SUBSCRIBE, {'events': events})

    def on_drive(self, id, message):
        if self.server.backend != 'mock':
            raise ProtocolError('mock_only', 'drive works on the mock backend only: on a real '
                                             'Pi, the level of an input comes from its wiring')
        gpio = self.allowed_gpio(message)
        if 'state' not in message:
            raise ProtocolError('invalid_state', "field 'state' is required: 0, 1 or null "
                                                 "(let go)")
        state = message['state']
        if state is not None and (type(state) is not int or state not in (0, 1)):
            raise ProtocolError('invalid_state', "field 'state' must be 0, 1 or null (let go)")
        self.server.registry.drive(gpio, state, ClientReply(self, id, False, gpio))

    def on_part(self, id, message):
        if self.server.backend != 'mock':
            raise ProtocolError('mock_only', 'part works on the mock backend only: on a real '
                                             'Pi, the parts are on the pins')
        circuit = self.server.circuit
        parts = circuit.parts if circuit is not None else {}
        name = message.get('name')
        if not isinstance(name, str) or name not in parts:
            known = ', '.join(sorted(parts)) or 'none (--mock-part)'
            raise ProtocolError('bad_request', f'no simulated part named {printable(repr(name), 40)}; '
                                               f'this server has: {known}')
        part = parts[name]
        gpios = list(part.gpios.values())
        if part.kind == 'pot':
            gpios.append(spi.MOCK_SELECTS[part.adc])     # the ADC it sits on
        self.may_change('set parts')
        for gpio in gpios:
            try:
                self.may_drive(gpio, 'drive')
            except ProtocolError as exc:
                raise ProtocolError('not_allowed', f'{name} is on GPIO{gpio}: {exc}') from None
        value = message.get('value')
        try:
            part.parse(value)
        except (TypeError, ValueError) as exc:
            raise ProtocolError('bad_request', str(exc)) from None
        self.server.registry.set_part(name, value, ClientReply(self, id, False, None))

    def on_status(self, id, message):
        history = protocol.get_count(message, 'history', 20, 1000)
        self.wait_caught_up()      # the status shows what this connection has sent
        reply = self.server.status_reply(id, history, self)
        if reply is not None:
            self.channel.post(reply)

    def on_observe(self, id, message):
        hub = self.server.registry.hub
        if protocol.get_bool(message, 'stop'):
            hub.remove(self)
            self.reply(id)
            return
        history = protocol.get_count(message, 'history', 20, 1000)
        try:
            # what the kernel holds for an observer that does not read is bounded too
            # (beyond it, the hub coalesces: see observers)
            self.channel.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, OBSERVER_SNDBUF)
        except (OSError, AttributeError):
            pass
        observer = hub.add(self)          # first: nothing between the snapshot and the pushes
        try:
            reply = self.server.status_reply(id, history, self)
        except BaseException:
            hub.remove(self)
            raise
        if reply is None:
            hub.remove(self)
            return
        self.channel.post(reply)
        hub.started(observer)             # what happened since the snapshot follows it

    def on_bye(self, id, message):
        self.wait_caught_up()
        self.reply(id)
        self.closed = True

    # Closing ---------------------------------------------------------------

    def close(self, reason):
        """Soft-close every pin this connection owns, then let the loop close the connection."""
        if self._ended:
            return
        self._ended = True
        reason = self.end_reason or reason
        self.closed = True
        hub = self.server.registry.hub
        if hub.observing(self):          # (most connections never observe: no lock for them)
            hub.remove(self)
        for pin in list(self.pins.values()):
            pin.release()
        self.server.session_ended(self, reason)
        self.channel.finish()
