"""
The pin table: which pin belongs to whom, each pin's shared record, and the
server's end of each pin worker.

Flow: server session → **pin table** → pin worker (over :mod:`.messages`).

A :class:`ClaimedPin` is one claimed GPIO: its owner (a session), its worker
process, the requests forwarded to that worker and not yet answered, and the
``seq`` of the last one sent. A reader thread per pin takes the worker's
answers and routes each one to where it belongs (a client, or a thread of the
server waiting for it).

Reads and ordering. Each worker publishes its pin's record in shared memory
(:mod:`.records`), including the ``seq`` of the last request it has taken.
:meth:`ClaimedPin.read_record` answers a read from it when the record is live
and the worker has taken everything sent to it (no message to the worker at
all); :func:`wait_caught_up` is the read-your-writes barrier across a
connection's pins: it looks at every pin's record, sends one ``sync`` to each
pin that is still behind, all at once, and waits for their answers together,
so its cost does not grow with the number of pins written.

While the server's loop carries out the requests it has read, what they send
to workers is held back until it has written its replies
(:meth:`Registry.hold_sends`).

The :class:`Registry` (the table itself) hands pins out (one owner at a
time), takes them back when their worker has switched them off and ended, and
keeps the last history of every pin for ``status``.
"""

import json
import logging
import threading
import time
from enum import Enum

from remoteio_factory.protocol import ProtocolError, error_reply

from remoteio_server.messages import (
    Change, Electrical, End, Err, Event, Ok, Op, Request, decode_reply, encode,
    pin_error)
from remoteio_server.observers import Hub
from remoteio_server.records import RecordTable

log = logging.getLogger('remoteio_server.pintable')

#: How long the server waits for a worker to answer an internal request.
INTERNAL_TIMEOUT = 10.0
#: How long a claim may take, waiting for another client's soft close or for the
#: backend (pigpio connects when a pin is claimed): less than a client's default
#: timeout (10 s), so the client hears why rather than timing out.
CLAIM_TIMEOUT = 8.0
#: How long a status request waits for its turn to send to a pin's worker, when
#: another send to that worker is blocked (a worker that stopped reading).
SNAPSHOT_SEND_WAIT = 0.2


#: How long a read waits for the connection's other pins to catch up.
BARRIER_TIMEOUT = 10.0
#: Requests a worker may have been sent and not yet taken for the server's loop
#: to send it another: far less than its pipe holds (pin requests are under 1 KiB
#: each and the pipe's buffer some 200 KiB), so such a send never blocks.
POST_WINDOW = 64
#: Requests that do not change the pin: a read needs not wait for them to be taken.
_NO_CHANGE = frozenset({Op.SNAPSHOT, Op.SYNC, Op.READ})
#: The server's own requests, which no reply to a client waits behind: a read
#: (from the record) may overtake their answers; not those of any other request.
_INTERNAL = frozenset({Op.SNAPSHOT, Op.SYNC})
#: Requests that change a pin but leave an output an output (a task fails on an input).
_KEEP_FUNCTION = frozenset({Op.WRITE, Op.TASK})


class PinStatus(str, Enum):
    """Where a claimed pin is in its life."""
    CLAIMING = 'claiming'       # a worker is being bound to it
    CLAIMED = 'claimed'         # its owner drives it
    RELEASING = 'releasing'     # soft close: finishing its work, then switched off
    ABANDONED = 'abandoned'     # its claim failed: the claiming thread cleans up
    GONE = 'gone'               # its worker has ended


def worker_died(gpio, message='ended unexpectedly'):
    """The error for requests a pin's worker will never answer."""
    return pin_error('worker_died', f'the worker of GPIO{gpio} {message}')


class InternalReply:
    """Where a worker's answer goes when a server thread is waiting for it."""

    def __init__(self):
        self._event = threading.Event()
        self.result = None
        self.error = None

    def finish(self, result, error):
        self.result, self.error = result, error
        self._event.set()

    def wait(self, timeout=INTERNAL_TIMEOUT):
        if not self._event.wait(timeout):
            raise TimeoutError('the pin worker did not answer in time')
        if self.error is not None:
            raise ProtocolError(self.error['code'], self.error['message'])
        return self.result


class ClaimedPin:
    """One claimed GPIO and the server's end of its worker; see the module docstring."""

    def __init__(self, registry, gpio, owner, worker):
        self.registry = registry
        self.gpio = gpio
        self.gpios = (gpio,)           # every GPIO this claim holds (an SPI bus: several)
        self.owner = owner
        self.worker = worker
        self.status = PinStatus.CLAIMING
        self.final = None          # the worker's last snapshot, once released
        self.freed_event = threading.Event()
        self._seq = 0
        self._pending = {}              # seq -> route waiting for its answer
        # Of those, the requests that change the pin (not a status's snapshot, a sync
        # or a read): a read must not overtake their answers.
        self._unanswered = set()
        self._changed = 0               # seq of the last request sent that changes the pin
        self._reconfigured = 0          # ... that may change what it is (not a write or task)
        self._failures_told = 0         # seq of the last failure passed on to its sender
        self._tasks = {}                # seq -> route of a timed task not yet ended
        self.unsynced = False           # quiet requests sent since the last sync
        # On a net of the virtual Pi (mock backend, :mod:`.circuit`): its level may come
        # through the reader threads (of its own and other pins), so its record alone
        # never tells that a read would see it; and what it does to the net goes out
        # through its reader, so "caught up" needs a sync through it.
        self.on_circuit = gpio in registry.circuit_gpios
        self._patch = set()             # seqs of setup/pull on such a pin (see _answered)
        self._release_seq = None
        self._release_route = None      # answered when the pin is free again
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._held = []                 # requests the loop holds back (Registry.hold_sends)

    def attach(self, worker):
        """Bind the pin to its (ready) worker and start reading from it."""
        self.worker = worker
        threading.Thread(
            target=self._read_worker, name=f'remoteio-pin-{self.gpio}', daemon=True).start()

    def entries(self, info):
        """Status entries, gpio -> dict, for the snapshot *info* of this claim."""
        return {self.gpio: info}

    @property
    def busy(self):
        """True while requests sent to the worker wait for their answer."""
        return bool(self._unanswered)

    @property
    def sent(self):
        """The seq of the last request sent (or being sent) to the worker."""
        return self._seq

    @property
    def sent_changed(self):
        """The seq of the last request sent that may change the pin."""
        return self._changed

    def read_record(self, record=None):
        """
        The pin's state as a ``read`` would return it, from its shared record;
        None when the worker must answer (the record is not live, or the worker
        has not yet taken every request sent to it, or one still waits for its
        answer, which a read must not overtake).
        """
        if self._unanswered or self.status is not PinStatus.CLAIMED:
            return None
        if record is None:
            record = self.record()
        if record is None or not record.live or record.taken < self._changed:
            return None
        if record.failed > self._failures_told:
            return None        # a failure on its way to the client: the read goes behind it
        state = record.as_read()
        if self.on_circuit and state['function'] == 'input':
            # An input on a net reads what the net carries (a PWM wave: at this moment).
            # The circuit has heard of every change of this pin's worker that was
            # answered (its report goes before the answer), and of every signal sent to
            # it (none is unanswered): what it says is what the worker would say.
            level = self.registry.circuit.level_of(self.gpio)
            if level is not None:
                state['state'] = bool(level)
        return state

    def record(self):
        """This worker's shared record (:class:`records.Record`), or None."""
        record = self.registry.records.read(self.gpio)
        return record if record is not None and record.pid == self.worker.pid else None

    def is_output(self):
        """
        True if the pin is an output (its record says so): what it reads is what
        its own worker drives, so no other pin's write can change it.
        """
        record = self.record()
        # (and no request still on its way might make it something else: writes
        # and tasks on their way leave it an output, and a read goes behind them)
        return (record is not None and record.function == 'output'
                and record.taken >= self._reconfigured)

    def can_post(self):
        """True if a request sent to the worker now cannot block (see POST_WINDOW)."""
        if self.status is not PinStatus.CLAIMED:
            return False
        record = self.registry.records.read(self.gpio)
        return (record is not None and record.pid == self.worker.pid
                and self._seq - record.taken < POST_WINDOW)

    def caught_up(self):
        """True if everything sent to the worker has been taken and answered (no message needed)."""
        if self._unanswered:
            return False
        if not self.unsynced:
            return True
        if self.on_circuit:
            return False
        record = self.registry.records.read(self.gpio)
        if record is not None and record.pid == self.worker.pid and record.taken >= self._changed:
            self.unsynced = False
            return True
        return False

    def forward(self, op, args, route):
        """
        Send *op* to the worker; *route*.finish(result, error) runs when it is
        answered. A quiet write or task is not answered unless it fails (that
        saves the server a wake-up per write); :meth:`caught_up` and
        :meth:`sync` tell when it has been taken. A task's end goes to
        *route*.task_ended.
        """
        request_id = getattr(route, 'id', None)
        quiet = op in (Op.WRITE, Op.TASK) and getattr(route, 'quiet', False)
        # The send lock first, then the seq: requests reach the pipe in the order of
        # their seqs (several threads send to one worker: the owner's, a status's, a
        # drive's, a wire's), so a record that has taken seq n has taken all before it.
        # Sent outside self._lock: a send may block until the worker reads, and the
        # worker may first have to hand its answers to our reader, which needs self._lock.
        if op == Op.SNAPSHOT:
            if not self._send_lock.acquire(timeout=SNAPSHOT_SEND_WAIT):
                # Another send is stuck on a worker that stopped reading (it will be
                # ended when that send times out): a status must not wait for it.
                route.finish(None, pin_error('timeout', f'the worker of GPIO{self.gpio} is '
                                                        f'not reading', 'RemoteIOError'))
                return
        else:
            self._send_lock.acquire()
        with self._lock:
            if self.status is PinStatus.GONE:
                self._send_lock.release()
                if op == Op.TASK and hasattr(route, 'task_ended'):   # (acknowledged already)
                    route.task_ended('failed', worker_died(self.gpio, 'has ended'))
                else:
                    route.finish(None, worker_died(self.gpio, 'has ended'))
                return
            self._seq += 1
            seq = self._seq
            if op not in _NO_CHANGE:
                self._changed = seq
                if op not in _KEEP_FUNCTION:
                    self._reconfigured = seq
            if quiet:
                self.unsynced = True
                if op == Op.TASK:
                    args = dict(args, reply=False)
            else:
                self._pending[seq] = route
                if op not in _INTERNAL:
                    self._unanswered.add(seq)
                if op == Op.WRITE:
                    args = dict(args, reply=True)
            if op == Op.TASK:
                self._tasks[seq] = route
            elif self.on_circuit and op in (Op.SETUP, Op.PULL):
                self._patch.add(seq)
            elif op == Op.RELEASE:
                self._release_seq = seq
        try:
            data = encode(Request(seq, op, args, request_id))
            if self.registry.holding():
                # The loop's turn: sent when it has written its replies (flush_held).
                if not self._held:
                    self.registry.held.append(self)
                self._held.append(data)
                return
            try:
                if self._held:                # held by the loop, still to go: first
                    self._send_held()
                self.worker.conn.send_bytes(data)
            except OSError as exc:
                self._unreachable(exc)
        finally:
            self._send_lock.release()

    def _unreachable(self, exc):
        # Gone, or stopped reading (the send timed out, maybe half-way through a
        # message): either way it is of no more use. Its reader sees the end and
        # fails what is pending.
        # (A worker that has just ended after a release is no news.)
        log.log(logging.ERROR if self.status is PinStatus.CLAIMED else logging.DEBUG,
                'GPIO%d: cannot reach its worker (%s); ending it', self.gpio, exc)
        self.worker.terminate()

    def flush_held(self):
        """Send the requests the loop held back (see :meth:`Registry.hold_sends`)."""
        with self._send_lock:
            if not self._held:
                return
            try:
                self._send_held()
            except OSError as exc:
                self._unreachable(exc)

    def _send_held(self):
        held, self._held = self._held, []
        send = self.worker.conn.send_bytes
        for data in held:
            send(data)

    def start_sync(self):
        """Ask the worker to say when it has taken everything sent before; the reply to wait on."""
        self.unsynced = False
        reply = InternalReply()
        self.forward(Op.SYNC, {}, reply)
        return reply

    def sync(self, timeout=INTERNAL_TIMEOUT):
        """Wait until the worker has taken every request sent before."""
        if self.unsynced:
            self.start_sync().wait(timeout)

    def call(self, op, args, timeout=INTERNAL_TIMEOUT):
        """Send *op* and wait for its result (for the server's own use)."""
        reply = InternalReply()
        self.forward(op, args, reply)
        return reply.wait(timeout)

    def release(self, route=None):
        """Soft close: what was sent is carried out, then the pin is switched off and freed."""
        with self._lock:
            if self.status in (PinStatus.RELEASING, PinStatus.GONE):
                if route is not None:
                    route.finish({}, None)
                return
            self.status = PinStatus.RELEASING
        self.forward(Op.RELEASE, {}, route or InternalReply())

    def _answered(self, seq, result, error, request_id=None):
        """``ok``/``err``: the request *seq* has its answer."""
        with self._lock:
            route = self._pending.get(seq)
            if error is not None:
                self._tasks.pop(seq, None)    # a task refused at acceptance never ends
            patch = seq in self._patch
            self._patch.discard(seq)
        if patch and result is not None and result.get('function') == 'input':
            # The worker answered with its level before the net's answer to this very
            # change (its own pull, say) came back from the circuit: the net's level.
            level = self.registry.circuit.level_of(self.gpio)
            if level is not None:
                result = dict(result, state=bool(level))
        if route is not None:
            # Reply first, then stop counting the request as pending: a read
            # waiting for this pin must not overtake the reply.
            route.finish(result, error)
            with self._lock:
                del self._pending[seq]
                self._unanswered.discard(seq)
                if error is not None:
                    self._failures_told = max(self._failures_told, seq)
            self._progressed()
        elif error is not None:
            # A quiet write (or an accepted one) failed when it ran.
            if self.owner is not None:
                self.owner.send(error_reply(request_id, error['code'], error['message'],
                                            error.get('type'), pin=self.gpio))
            self._failures_told = max(self._failures_told, seq)

    def _task_ended(self, seq, result, error):
        with self._lock:
            route = self._tasks.pop(seq, None)
        if route is not None and hasattr(route, 'task_ended'):
            route.task_ended(result, error)

    def _progressed(self):
        owner = self.owner
        if owner is not None:
            owner.pin_progressed()

    def _read_worker(self):
        conn = self.worker.conn
        while True:
            try:
                message = decode_reply(conn.recv_bytes())
            except (EOFError, OSError):
                break
            except Exception:         # not a message of ours: the worker is of no more use
                log.exception('GPIO%d: a bad message from its worker; ending it', self.gpio)
                self.worker.terminate()
                break
            kind = type(message)
            if kind is Ok:
                if message.seq == self._release_seq:
                    # The soft close is done; the release is answered once the worker
                    # has ended and the pin is free for anyone (below).
                    self.final = message.result
                    with self._lock:
                        self._release_route = self._pending.pop(message.seq, None)
                        self._unanswered.discard(message.seq)
                    self._progressed()
                    continue
                self._answered(message.seq, message.result, None)
            elif kind is Err:
                self._answered(message.seq, None, message.error, message.request_id)
            elif kind is End:
                self._task_ended(message.seq, message.result, message.error)
            elif kind is Event:
                owner = self.owner
                if owner is not None:
                    owner.send({'push': 'event', 'pin': self.gpio, 't': message.t,
                                'state': message.level, 'n': message.n})
            elif kind is Electrical:
                self.registry.electrical(self.gpio, message)
            elif kind is Change:
                self.registry.hub.pin_changes(self.gpio, message.entries)
        # The worker has ended (released, died, or its claim failed: then the
        # claiming thread cleans up, and there is nothing to free or report).
        with self._lock:
            abandoned = self.status in (PinStatus.ABANDONED, PinStatus.CLAIMING)
            # Died, unless it answered its release first (a worker killed half-way
            # through a soft close died too, whatever its status said).
            died = not abandoned and self.final is None
            self.status = PinStatus.GONE
            leftover, self._pending = list(self._pending.values()), {}
            self._unanswered.clear()
            tasks, self._tasks = list(self._tasks.values()), {}
        error = worker_died(self.gpio)
        for route in leftover:
            route.finish(None, error)
        for route in tasks:
            if hasattr(route, 'task_ended'):
                route.task_ended('failed', error)
        if died:
            log.error('worker %d of GPIO%d ended unexpectedly', self.worker.pid, self.gpio)
        # Our end is closed under the send lock: a send under way must not find its
        # file descriptor number closed and reused (by a new client's socket, say)
        # half-way through, and write a worker message to someone else.
        with self._send_lock:
            self.worker.close_socket()
        self.worker.kill()  # reaps the process
        if not abandoned:
            self.registry.freed(self, died)
        if self.final is not None:
            # (the table keeps the history, compactly: this object may live on a while)
            self.final = {k: self.final[k] for k in ('function', 'state', 'frequency', 'pull')}
        route, self._release_route = self._release_route, None
        if route is not None:
            route.finish(dict(self.final), None)


def wait_caught_up(pins, progress, timeout=BARRIER_TIMEOUT):
    """
    The read-your-writes barrier: return once every pin of *pins* (a
    connection's pins) has taken every request sent to it and answered those
    that wait for an answer. Pins that have caught up (their records say so)
    cost nothing; each of the others gets one ``sync``, all sent before any is
    waited for, so the wait is that of the slowest pin, not the sum.
    *progress* is the owner's condition, notified as answers arrive.
    """
    # Pins being released are left out: their soft close carries out what was sent.
    # Except a wired one (virtual Pi): its release changes its net, which a read must see.
    releasing = [p for p in pins if p.status is PinStatus.RELEASING and p.on_circuit]
    pins = [p for p in pins if p.status is PinStatus.CLAIMED and not p.caught_up()]
    deadline = time.monotonic() + timeout
    for pin in releasing:
        if not pin.freed_event.wait(max(0.0, deadline - time.monotonic())):
            raise ProtocolError('timeout', f'GPIO{pin.gpio} did not finish its release within '
                                           f'{timeout:g} s')
    if not pins:
        return
    syncs = [(pin, pin.start_sync()) for pin in pins if pin.unsynced]
    for pin, reply in syncs:
        try:
            reply.wait(max(0.001, deadline - time.monotonic()))
        except ProtocolError:
            if pin.status is PinStatus.CLAIMED:
                raise                 # else: released meanwhile, nothing to wait for
    with progress:
        if not progress.wait_for(lambda: not any(p.busy for p in pins),
                                 max(0.0, deadline - time.monotonic())):
            raise ProtocolError('timeout', f'the other pins did not catch up within '
                                           f'{timeout:g} s')


class NoReply:
    """Where the answer goes when nobody waits for it (a failure is logged)."""

    def finish(self, result, error):
        if error is not None:
            log.warning('%s', error.get('message'))


class _Settled:
    """
    Where the answer to a drive's signal goes: the drive is done once the circuit
    has it, so a worker that ends before it takes the signal (its pin being
    released) is no failure of the drive.
    """

    def __init__(self, route):
        self.route = route

    def finish(self, result, error):
        if error is not None and error.get('code') == 'worker_died':
            error = None
        self.route.finish({} if error is None else result, error)


class Ignored:
    """Where the answer goes when nobody cares (a halt at shutdown: the pin's end is its answer)."""

    def finish(self, result, error):
        pass


class Registry:
    """Owner of every claimed pin; see the module docstring."""

    def __init__(self, spawner, names, circuit=None, records=None):
        self.spawner = spawner
        self.names = names           # gpio -> 'GPIO17', for every GPIO of the board
        self.gpios = frozenset(names)
        self.records = records if records is not None else RecordTable()
        # the virtual Pi's wires and parts (mock backend only; :mod:`.circuit`)
        self.circuit = circuit
        self.circuit_gpios = circuit.gpios if circuit is not None else frozenset()
        self.mock_levels = {}        # unwired input gpio -> level last driven (mock backend only)
        # observers (:mod:`.observers`): while there are any, every worker reports its changes
        self.hub = Hub(on_switch=self._observe)
        self._claimed = {}
        self._released = {}          # gpio -> last snapshot of a freed pin
        self.closing = False         # the server is stopping: no new claims
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._holder = None          # the thread whose sends to workers are held back
        self.held = []               # pins with requests held back

    # Held sends --------------------------------------------------------------------

    def hold_sends(self):
        """
        From the server's loop, as it starts carrying out the requests it has
        read: hold back what they send to workers until :meth:`flush_held`,
        which the loop calls once it has written its replies. A worker woken by
        a request takes a CPU at once (its priority is raised), and the loop
        would answer a read only behind it; the read's answer depends on nothing
        the worker does (a request sent is counted when it is held). Another
        thread's send to the same worker sends the held requests first, so each
        worker still receives its requests in order.
        """
        self._holder = threading.get_ident()

    def holding(self):
        """True on the thread whose sends are held back (see :meth:`hold_sends`)."""
        return self._holder == threading.get_ident()

    def flush_held(self):
        """Send what was held back, and stop holding."""
        self._holder = None
        held, self.held = self.held, []
        for pin in held:
            pin.flush_held()

    def claim(self, gpio, session, timeout=CLAIM_TIMEOUT):
        """Give *gpio* to *session*; return the ClaimedPin and the pin's state."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self.closing:
                    raise ProtocolError('shutting_down', 'the server is shutting down')
                current = self._claimed.get(gpio)
                if current is None:
                    break
                if getattr(current, 'is_bus', False) and current.status in (PinStatus.CLAIMING, PinStatus.CLAIMED):
                    raise ProtocolError(
                        'pin_in_use', f'GPIO{gpio} is in use by an SPI bus of '
                                      f'{"this connection" if current.owner is session else "client " + current.owner.describe()}')
                if current.status is PinStatus.CLAIMING or (
                        current.owner is not session and current.status is PinStatus.CLAIMED):
                    raise ProtocolError(
                        'pin_in_use',
                        f'GPIO{gpio} is in use by client {current.owner.describe()}'
                        if current.owner is not session else f'GPIO{gpio} is being claimed')
                if current.status is PinStatus.CLAIMED:
                    return current, None
                # Being released (soft close, by us or a client that just closed it):
                # wait for the release rather than failing a claim that will soon work.
                if not self._changed.wait(deadline - time.monotonic()):
                    owner = current.owner.describe() if current.owner is not None else 'a client'
                    raise ProtocolError(
                        'pin_in_use', f'GPIO{gpio} is still finishing the work of {owner} '
                                      f'(soft close) after {timeout:g} s; try again later')
            pin = ClaimedPin(self, gpio, session, NO_WORKER)
            self._claimed[gpio] = pin
        try:
            worker = self.spawner.take()
            if self.closing:
                worker.kill(grace=0)      # never bound to a pin: nothing to switch off
                raise ProtocolError('shutting_down', 'the server is shutting down')
        except Exception as exc:
            with self._lock:
                del self._claimed[gpio]
                self._changed.notify_all()
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError(
                'backend_error', f'cannot start a worker for GPIO{gpio}: {exc}') from None
        self.records.clear(gpio)      # (an earlier worker's record is no use)
        pin.attach(worker)
        try:
            on_circuit = gpio in self.circuit_gpios
            signal = None
            if on_circuit:
                version, net_signal = self.circuit.signal_of(gpio)
                signal = {'version': version, 'signal': net_signal.to_dict()}
            observed = self.hub.active
            state = pin.call(Op.CLAIM, {'gpio': gpio, 'mode': session.mode,
                                       'observed': observed,
                                       'circuit': on_circuit, 'signal': signal,
                                       'level': self.mock_levels.get(gpio)},
                             max(0.5, deadline - time.monotonic()))
            with pin._lock:
                if pin.status is PinStatus.GONE:       # the worker ended as it answered
                    raise ProtocolError('worker_died', f'the worker of GPIO{gpio} ended')
                # For observers, before anything else can reach the pin (a drive, a signal,
                # its owner's requests: all wait for CLAIMED), so no change of it that the
                # worker reports can be overtaken by this older state.
                self.hub.event(gpio, owner=session.id, status='claimed', **{
                    k: state.get(k) for k in ('function', 'state', 'frequency', 'pull')})
                pin.status = PinStatus.CLAIMED
            if self.hub.active != observed:    # observers came or went while it was claimed
                pin.forward(Op.OBSERVE, {'on': self.hub.active}, Ignored())
            if on_circuit:
                # a change of the net while it was being claimed (send_signals skipped it)
                version, net_signal = self.circuit.signal_of(gpio)
                if version > signal['version']:
                    pin.forward(Op.SIGNAL, {'version': version, 'signal': net_signal.to_dict()},
                                Ignored())
        except (ProtocolError, TimeoutError):
            with pin._lock:
                if pin.status is not PinStatus.GONE:
                    pin.status = PinStatus.ABANDONED   # its reader reaps it and frees nothing
            worker.terminate()   # its reader sees the end and reaps it
            with self._lock:
                if self._claimed.get(gpio) is pin:
                    del self._claimed[gpio]
                self._changed.notify_all()
            raise
        if self.closing:                       # the server began to stop meanwhile
            pin.release()
            raise ProtocolError('shutting_down', 'the server is shutting down')
        return pin, state

    def drive(self, gpio, level, route):
        """Set a mock input's level now, or when its pin is next claimed."""
        with self._lock:
            pin = self._claimed.get(gpio)
        live = pin is not None and pin.status in (PinStatus.CLAIMED, PinStatus.RELEASING)
        if gpio in self.circuit_gpios:
            # an outside source on a net, whatever the pin is now (against an output that
            # disagrees, a short): the circuit works out what every pin on it sees
            self.send_signals(self.circuit.drive(gpio, level), {gpio: _Settled(route)})
            return
        if live and level is not None:
            record = pin.record()
            if record is not None and record.function != 'input' and \
                    record.taken >= pin.sent_changed:
                # Refused without the worker, which would refuse it too: a flood of
                # drives at an output costs its worker (and its timing) nothing.
                self.mock_levels[gpio] = level
                route.finish(None, pin_error(
                    'set_input', f'cannot drive {self.names[gpio]}: it is not an input',
                    'PinSetInput'))
                return
        if level is None:
            self.mock_levels.pop(gpio, None)
        else:
            self.mock_levels[gpio] = level
        if live:
            pin.forward(Op.DRIVE, {'state': level}, route)
        else:
            route.finish({}, None)

    def electrical(self, gpio, message):
        """A pin on a net changed what it does to it (its worker says, via its reader)."""
        self.send_signals(self.circuit.update(gpio, *message))

    def set_part(self, name, value, route):
        """``remoteio part``: set a simulated part's value (KeyError, ValueError)."""
        changes = self.circuit.set_part(name, value)
        part = self.circuit.parts[name]
        if part.kind == 'pot':
            from remoteio_server import spi
            spi.set_mock_channel(self, spi.MOCK_SELECTS[part.adc], part.channel,
                                 part.value, NoReply())
        self.send_signals(changes)
        route.finish({}, None)

    def send_signals(self, changes, routes=None):
        """Send each (gpio, version, signal) of *changes* to its pin's worker, if it has one."""
        routes = dict(routes or {})
        for gpio, version, signal in changes:
            with self._lock:
                pin = self._claimed.get(gpio)
            # (a signal that finds the worker gone is no news: the pin is being freed)
            route = routes.pop(gpio, None) or Ignored()
            # (a pin being claimed takes the signal with its claim, see claim)
            if pin is not None and pin.status in (PinStatus.CLAIMED, PinStatus.RELEASING) and \
                    not getattr(pin, 'is_bus', False):
                pin.forward(Op.SIGNAL, {'version': version, 'signal': signal.to_dict()}, route)
            else:
                route.finish({}, None)        # (it takes the net's signal at its claim)
        for route in routes.values():
            route.finish({}, None)

    def freed(self, pin, died):
        final = pin.final
        if final is None:
            final = {'function': None, 'state': None, 'frequency': None, 'pull': None,
                     'writes': None, 'history': []}
        if not died:
            log.info('GPIO%d released: %s, state %s', pin.gpio, final['function'], final['state'])
        if pin.gpio in self.circuit_gpios and not getattr(pin, 'is_bus', False):
            # Before the pin leaves the table: a new owner's first report must come after
            # this one (else this would undo it), and whoever waits for the release (a read,
            # §5) must find the net without this pin's drive.
            self.send_signals(self.circuit.unclaimed(pin.gpio))
        with self._lock:
            for gpio, entry in pin.entries(dict(final, died=died)).items():
                if self._claimed.get(gpio) is pin:
                    del self._claimed[gpio]
                self._released[gpio] = _FreedEntry(entry)
            self._changed.notify_all()
        pin.freed_event.set()
        for gpio in pin.gpios:
            self.hub.event(gpio, owner=None, status='free', died=died)
        if pin.owner is not None:
            for gpio in pin.gpios:
                if gpio != pin.gpio and pin.owner.pins.get(gpio) is pin:
                    del pin.owner.pins[gpio]
            pin.owner.pin_freed(pin, died)

    def _observe(self, on):
        """The first observer came (*on*), or the last one left: tell every worker."""
        with self._lock:
            pins = list({id(p): p for p in self._claimed.values()
                         if p.status in (PinStatus.CLAIMED, PinStatus.RELEASING)
                         and not getattr(p, 'is_bus', False)}.values())
        for pin in pins:
            pin.forward(Op.OBSERVE, {'on': on}, Ignored())

    def halt_all(self):
        """
        Shutdown: refuse new claims; every pin ends its running task and drops
        its queue at once, and is released (also a pin whose claim was still
        being answered when its session was told to release what it holds).
        """
        with self._lock:
            self.closing = True
            pins = list({id(p): p for p in self._claimed.values()
                         if p.status in (PinStatus.CLAIMED, PinStatus.RELEASING)}.values())
        for pin in pins:
            pin.forward(Op.HALT, {}, Ignored())
            pin.release()

    def kill_all(self):
        """The last resort at shutdown: kill every worker still running."""
        with self._lock:
            pins = list(self._claimed.values())
        for pin in pins:
            pin.worker.terminate()         # (a claim still waiting for a worker has none)

    def wait_all_freed(self, timeout):
        deadline = time.monotonic() + timeout
        with self._lock:
            return self._changed.wait_for(
                lambda: not self._claimed, max(0.0, deadline - time.monotonic()))

    def snapshot(self, history):
        """Every pin the server has driven since it started, as status dicts."""
        with self._lock:
            # (GONE too: a pin whose worker has ended is still in the table until it has
            # been reaped and freed, and must not be missing from the list meanwhile)
            claimed = list({id(p): p for p in self._claimed.values()
                            if p.status in (PinStatus.CLAIMED, PinStatus.RELEASING,
                                            PinStatus.GONE)}.values())
            released = dict(self._released)
        replies = []
        for pin in claimed:
            reply = InternalReply()
            pin.forward(Op.SNAPSHOT, {'history': history}, reply)
            replies.append((pin, reply))
        pins = {}
        for pin, reply in replies:
            owner = pin.owner.id if pin.owner is not None else None
            try:
                info = reply.wait(2.0)
            except (ProtocolError, TimeoutError) as exc:
                if pin.status is PinStatus.GONE:      # released meanwhile: report it as freed
                    if pin.freed_event.wait(2.0):
                        with self._lock:
                            released = dict(self._released)
                        continue
                    # its worker has ended but is still being reaped (a loaded machine):
                    # still the owner's, on its way out, rather than missing from the list
                    info = {'function': None, 'state': None, 'frequency': None, 'pull': None,
                            'history': [], 'error': str(exc)}
                    for gpio, entry in pin.entries(info).items():
                        pins[gpio] = dict(entry, gpio=gpio, owner=owner,
                                          status=PinStatus.RELEASING)
                    continue
                info = {'error': str(exc)}
            for gpio, entry in pin.entries(info).items():
                pins[gpio] = dict(entry, gpio=gpio, owner=owner, status=pin.status)
        for gpio, freed in released.items():
            if gpio not in pins:
                pins[gpio] = dict(freed.entry(history), gpio=gpio, owner=None, status='free')
        for info in pins.values():
            info['name'] = self.names[info['gpio']]
        return [pins[gpio] for gpio in sorted(pins)]


class _FreedEntry:
    """
    The last status entry of a freed pin, kept for ``status``: its history (up
    to 1000 entries) as compact JSON text, a line per entry, which costs a
    tenth of the dicts it came as (26 pins' full histories: some 5 MiB of
    the server's memory as dicts); :meth:`entry` decodes only the lines asked for.
    """

    __slots__ = ('fields', 'history')

    def __init__(self, entry):
        self.fields = {key: value for key, value in entry.items() if key != 'history'}
        self.history = '\n'.join(json.dumps(item, separators=(',', ':'))
                                 for item in entry.get('history') or ())

    def entry(self, history):
        """The entry, with the last *history* entries of its history."""
        lines = self.history.rsplit('\n', history)[-history:] if history and self.history else []
        return dict(self.fields, history=[json.loads(line) for line in lines])


class _NoWorker:
    """Stands in for the worker while one is being taken from the spawner."""
    pid = None
    conn = None

    def kill(self, grace=0):
        pass

    def terminate(self, grace=0):
        pass


NO_WORKER = _NoWorker()
