"""
Which pin belongs to whom, and the server's end of each pin worker.

Flow: server session → **registry / ClaimedPin** → pin worker.

A :class:`ClaimedPin` is one claimed GPIO: its owner (a session), its worker
process and the operations forwarded to that worker and not yet
acknowledged. A reader thread per pin takes the worker's acknowledgements
and replies and routes each one to where it belongs (a client, or a thread
of the server waiting for it). The :class:`Registry` hands pins out (one
owner at a time), takes them back when their worker has switched them off
and ended, and keeps the last history of every pin for ``status``.
"""

import json
import logging
import threading
import time

from remoteio_factory.protocol import ProtocolError, error_reply
from remoteio_server.worker import pack

log = logging.getLogger('remoteio_server.registry')

#: How long the server waits for a worker to answer an internal request.
INTERNAL_TIMEOUT = 10.0
#: How long a claim may take, waiting for another client's soft close or for the
#: backend (pigpio connects when a pin is claimed): less than a client's default
#: timeout (10 s), so the client hears why rather than timing out.
CLAIM_TIMEOUT = 8.0
#: How long a status request waits for its turn to send to a pin's worker, when
#: another send to that worker is blocked (a worker that stopped reading).
SNAPSHOT_SEND_WAIT = 0.2


def worker_died(gpio, message='ended unexpectedly'):
    """The error for requests a pin's worker will never answer."""
    return {'code': 'worker_died', 'type': 'RemoteIOPinError',
            'message': f'the worker of GPIO{gpio} {message}'}


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
        self.status = 'claiming'
        self.final = None          # the worker's last snapshot, once released
        self.freed_event = threading.Event()
        self._seq = 0
        self._pending = {}              # seq -> route waiting for its answer
        self._tasks = {}                # seq -> route of a timed task not yet ended
        self.unsynced = False           # quiet writes sent since the last sync
        self._release_seq = None
        self._release_route = None      # answered when the pin is free again
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()

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
        return bool(self._pending)

    def forward(self, op, args, route):
        """
        Send *op* to the worker; *route*.finish(result, error) runs when it is
        answered. A quiet write is not answered unless it fails (that saves
        the server a wake-up per write); :meth:`sync` makes sure it has been
        taken.
        """
        request_id = getattr(route, 'id', None)
        quiet_write = op == 'write' and getattr(route, 'quiet', False)
        with self._lock:
            if self.status == 'gone':
                route.finish(None, worker_died(self.gpio, 'has ended'))
                return
            self._seq += 1
            seq = self._seq
            if quiet_write:
                self.unsynced = True
            else:
                self._pending[seq] = route
                if op == 'write':
                    args = dict(args, reply=True)
            if op == 'task':
                self._tasks[seq] = route
            elif op == 'release':
                self._release_seq = seq
        # Sent outside self._lock: a send may block until the worker reads, and
        # the worker may first have to hand its answers to our reader, which
        # needs self._lock.
        if op == 'snapshot' and not self._send_lock.acquire(timeout=SNAPSHOT_SEND_WAIT):
            # Another send is stuck on a worker that stopped reading (it will be ended
            # when that send times out): a status must not wait for it.
            with self._lock:
                self._pending.pop(seq, None)
            route.finish(None, {'code': 'timeout', 'type': 'RemoteIOError',
                                'message': f'the worker of GPIO{self.gpio} is not reading'})
            return
        elif op != 'snapshot':
            self._send_lock.acquire()
        try:
            try:
                self.worker.conn.send_bytes(pack([seq, op, args, request_id]))
            except OSError as exc:
                # Gone, or stopped reading (the send timed out, maybe half-way through a
                # message): either way it is of no more use. Its reader sees the end and
                # fails what is pending.
                # (A worker that has just ended after a release is no news.)
                log.log(logging.ERROR if self.status == 'claimed' else logging.DEBUG,
                        'GPIO%d: cannot reach its worker (%s); ending it', self.gpio, exc)
                self.worker.terminate()
        finally:
            self._send_lock.release()

    def sync(self, timeout=INTERNAL_TIMEOUT):
        """Wait until the worker has taken every write sent before."""
        if self.unsynced:
            self.unsynced = False
            self.call('sync', {}, timeout)

    def call(self, op, args, timeout=INTERNAL_TIMEOUT):
        """Send *op* and wait for its result (for the server's own use)."""
        reply = InternalReply()
        self.forward(op, args, reply)
        return reply.wait(timeout)

    def release(self, route=None):
        """Soft close: what was sent is carried out, then the pin is switched off and freed."""
        with self._lock:
            if self.status in ('releasing', 'gone'):
                if route is not None:
                    route.finish({}, None)
                return
            self.status = 'releasing'
        self.forward('release', {}, route or InternalReply())

    def _answered(self, seq, result, error, request_id=None):
        """``ok``/``err``: the request *seq* has its answer."""
        with self._lock:
            route = self._pending.get(seq)
            if error is not None:
                self._tasks.pop(seq, None)    # a task refused at acceptance never ends
        if route is not None:
            # Reply first, then stop counting the request as pending: a read
            # waiting for this pin must not overtake the reply.
            route.finish(result, error)
            with self._lock:
                del self._pending[seq]
            self._progressed()
        elif error is not None and self.owner is not None:
            # A quiet write (or an accepted one) failed when it ran.
            self.owner.send(error_reply(request_id, error['code'], error['message'],
                                        error.get('type'), pin=self.gpio))

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
                message = json.loads(conn.recv_bytes())
            except (EOFError, OSError):
                break
            kind = message[0]
            if kind == 'ok':
                result = message[2]
                if message[1] == self._release_seq:
                    # The soft close is done; the release is answered once the worker
                    # has ended and the pin is free for anyone (below).
                    self.final = result
                    with self._lock:
                        self._release_route = self._pending.pop(message[1], None)
                    self._progressed()
                    continue
                self._answered(message[1], result, None)
            elif kind == 'err':
                self._answered(message[1], None, message[2], message[3])
            elif kind == 'end':
                self._task_ended(message[1], message[2], message[3])
            elif kind == 'event':
                owner = self.owner
                if owner is not None:
                    owner.send({'push': 'event', 'pin': self.gpio, 't': message[1],
                                'state': message[2], 'n': message[3]})
            elif kind == 'level':
                self.registry.relay(self.gpio, message[1])
        # The worker has ended (released, died, or its claim failed: then the
        # claiming thread cleans up, and there is nothing to free or report).
        with self._lock:
            abandoned = self.status in ('abandoned', 'claiming')
            # Died, unless it answered its release first (a worker killed half-way
            # through a soft close died too, whatever its status said).
            died = not abandoned and self.final is None
            self.status = 'gone'
            leftover, self._pending = list(self._pending.values()), {}
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
        route, self._release_route = self._release_route, None
        if route is not None:
            final = self.final
            route.finish({k: final[k] for k in ('function', 'state', 'frequency', 'pull')}, None)


class NoReply:
    """Where the answer goes when nobody waits for it (a failure is logged)."""

    def finish(self, result, error):
        if error is not None:
            log.warning('%s', error.get('message'))


class Ignored:
    """Where the answer goes when nobody cares (a halt at shutdown: the pin's end is its answer)."""

    def finish(self, result, error):
        pass


class Registry:
    """Owner of every claimed pin; see the module docstring."""

    def __init__(self, spawner, names, wires=()):
        self.spawner = spawner
        self.names = names           # gpio -> 'GPIO17', for every GPIO of the board
        self.gpios = frozenset(names)
        self.wires = {}              # output gpio -> [input gpios] (mock backend only)
        for out, into in wires:
            self.wires.setdefault(out, []).append(into)
        self.mock_levels = {}        # input gpio -> level last driven (mock backend only)
        self._claimed = {}
        self._released = {}          # gpio -> last snapshot of a freed pin
        self.closing = False         # the server is stopping: no new claims
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

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
                if getattr(current, 'is_bus', False) and current.status in ('claiming', 'claimed'):
                    raise ProtocolError(
                        'pin_in_use', f'GPIO{gpio} is in use by an SPI bus of '
                                      f'{"this connection" if current.owner is session else "client " + current.owner.describe()}')
                if current.status == 'claiming' or (
                        current.owner is not session and current.status == 'claimed'):
                    raise ProtocolError(
                        'pin_in_use',
                        f'GPIO{gpio} is in use by client {current.owner.describe()}'
                        if current.owner is not session else f'GPIO{gpio} is being claimed')
                if current.status == 'claimed':
                    return current, None
                # Being released (soft close, by us or a client that just closed it):
                # wait for the release rather than failing a claim that will soon work.
                if not self._changed.wait(deadline - time.monotonic()):
                    owner = current.owner.describe() if current.owner is not None else 'a client'
                    raise ProtocolError(
                        'pin_in_use', f'GPIO{gpio} is still finishing the work of {owner} '
                                      f'(soft close) after {timeout:g} s; try again later')
            pin = ClaimedPin(self, gpio, session, _NO_WORKER)
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
        pin.attach(worker)
        try:
            state = pin.call('claim', {'gpio': gpio, 'mode': session.mode,
                                       'report_levels': gpio in self.wires,
                                       'level': self.mock_levels.get(gpio)},
                             max(0.5, deadline - time.monotonic()))
            with pin._lock:
                if pin.status == 'gone':       # the worker ended as it answered
                    raise ProtocolError('worker_died', f'the worker of GPIO{gpio} ended')
                pin.status = 'claimed'
        except (ProtocolError, TimeoutError):
            with pin._lock:
                if pin.status != 'gone':
                    pin.status = 'abandoned'   # its reader reaps it and frees nothing
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
        self.mock_levels[gpio] = level
        with self._lock:
            pin = self._claimed.get(gpio)
        if pin is not None and pin.status in ('claimed', 'releasing'):
            pin.forward('drive', {'state': level}, route)
        else:
            route.finish({}, None)

    def relay(self, out, level):
        """A wired output changed: drive the inputs it is wired to (``--mock-wire``)."""
        for into in self.wires.get(out, ()):
            self.drive(into, level, NoReply())

    def freed(self, pin, died):
        final = pin.final
        if final is None:
            final = {'function': None, 'state': None, 'frequency': None, 'pull': None,
                     'writes': None, 'history': []}
        if not died:
            log.info('GPIO%d released: %s, state %s', pin.gpio, final['function'], final['state'])
        with self._lock:
            for gpio, entry in pin.entries(dict(final, died=died)).items():
                if self._claimed.get(gpio) is pin:
                    del self._claimed[gpio]
                self._released[gpio] = entry
            self._changed.notify_all()
        pin.freed_event.set()
        if pin.owner is not None:
            for gpio in pin.gpios:
                if gpio != pin.gpio and pin.owner.pins.get(gpio) is pin:
                    del pin.owner.pins[gpio]
            pin.owner.pin_freed(pin, died)

    def halt_all(self):
        """
        Shutdown: refuse new claims; every pin ends its running task and drops
        its queue at once, and is released (also a pin whose claim was still
        being answered when its session was told to release what it holds).
        """
        with self._lock:
            self.closing = True
            pins = list({id(p): p for p in self._claimed.values()
                         if p.status in ('claimed', 'releasing')}.values())
        for pin in pins:
            pin.forward('halt', {}, Ignored())
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
            claimed = list({id(p): p for p in self._claimed.values()
                            if p.status in ('claimed', 'releasing')}.values())
            released = dict(self._released)
        replies = []
        for pin in claimed:
            reply = InternalReply()
            pin.forward('snapshot', {'history': history}, reply)
            replies.append((pin, reply))
        pins = {}
        for pin, reply in replies:
            try:
                info = reply.wait(2.0)
            except (ProtocolError, TimeoutError) as exc:
                if pin.status == 'gone':      # released meanwhile: report it as freed
                    pin.freed_event.wait(2.0)
                    with self._lock:
                        released = dict(self._released)
                    continue
                info = {'error': str(exc)}
            for gpio, entry in pin.entries(info).items():
                pins[gpio] = dict(entry, gpio=gpio, owner=pin.owner.id, status=pin.status)
        for gpio, info in released.items():
            if gpio not in pins:
                info = dict(info, gpio=gpio, owner=None, status='free')
                info['history'] = info.get('history', [])[-history:] if history else []
                pins[gpio] = info
        for info in pins.values():
            info['name'] = self.names[info['gpio']]
        return [pins[gpio] for gpio in sorted(pins)]


class _NoWorker:
    """Stands in for the worker while one is being taken from the spawner."""
    pid = None
    conn = None

    def kill(self, grace=0):
        pass

    def terminate(self, grace=0):
        pass


_NO_WORKER = _NoWorker()
