"""
The server: the network loop, the connected sessions, and an orderly shutdown.

Flow: client → wire → **server** → session → pin worker → gpiozero pin.

:class:`Server` resolves the backend (in a throw-away process), starts the
spawner of pin workers and listens. Then one thread, the one that calls
:meth:`Server.serve_forever` (the main thread under ``remoteio-server``),
does every connection's I/O with a selector: it accepts, does TLS
handshakes, reads lines and hands them to the connection's
:class:`~remoteio_server.session.Session`, and writes what the sessions and
the pins queued for each client (:class:`Channel`). Nothing else ever touches
a client's socket, and that thread never waits for anything but the
selector, so a client that stops reading or sends slowly delays only itself.

* A connection that has not been admitted yet (hello; with a token, auth)
  costs no thread: its few lines are handled on the loop. It must send its
  first complete line within :data:`~remoteio_server.session.FIRST_LINE_TIMEOUT`
  and be admitted within :data:`~remoteio_server.session.ADMIT_TIMEOUT`;
  at most ``max_pending`` such connections exist at once (apart from
  ``max_clients``, which counts admitted ones).
* Out of file descriptors, the loop stops accepting for a while (backing off)
  and serves the connected clients on; it says so once per burst.
* SIGTERM and SIGINT reach the loop through a wake-up socket
  (:func:`signal.set_wakeup_fd`), whichever thread the kernel gave them to.
  The first starts the shutdown: stop accepting, tell every client, soft-close
  every pin (at most ``shutdown_timeout``), then cut short what is left; the
  loop keeps running meanwhile, so the clients get their ``closing`` and later
  signals are only logged. The server exits within :data:`SHUTDOWN_BOUND`.
"""

import errno
import ipaddress
import functools
import logging
import resource
import selectors
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
from collections import deque
from itertools import islice

from remoteio_factory import protocol
from remoteio_factory.protocol import MODES
from remoteio_factory._version import __version__
from remoteio_server import backends, circuit, spi
from remoteio_server.access import AccessPolicy, peer_address
from remoteio_server.board import Board
from remoteio_server.pintable import Registry
from remoteio_server.records import RecordTable
from remoteio_server.session import (
    ADMIT_TIMEOUT, FIRST_LINE_TIMEOUT, SEND_TIMEOUT, Session, printable)
from remoteio_server.spawner import Spawner

__all__ = ['Server', 'run_server', 'MODES', 'DEFAULT_LEASE']

log = logging.getLogger('remoteio_server')

#: Seconds a connection may stay silent before it counts as gone (clients
#: send a heartbeat every third of it).
DEFAULT_LEASE = 3.0
#: Connections not yet admitted (hello; with a token, auth) at once; more are refused.
DEFAULT_MAX_PENDING = 16
#: Refused connections being told why at the same time; more are just closed.
MAX_REFUSALS = 16
#: How long a refused connection has to take its explanation (TLS handshake included).
REFUSAL_TIMEOUT = 5.0
#: Bytes of replies and pushes queued for one client and not yet taken by its
#: socket; a client whose queue would pass this is dropped (one message is
#: always queued, however large).
OUTBOX_LIMIT = 4 << 20
#: A session's thread takes no further request while more than OUTBOX_HIGH bytes of
#: its replies wait, until they are down to OUTBOX_LOW: a client that does not read
#: costs the server no more work (only its pins' pushes can fill OUTBOX_LIMIT).
OUTBOX_HIGH = 1 << 20
OUTBOX_LOW = 256 << 10
#: Status requests gathered from the pins' workers at the same time, server-wide.
STATUS_AT_ONCE = 2
#: Bytes read from one connection, and written to it, per turn of the loop.
READ_CHUNK = 65536
WRITE_BUDGET = 256 << 10
#: Bytes handed to OpenSSL per write (one TLS write, repeated as it was if it must be).
TLS_CHUNK = 64 << 10
#: A connection being closed gets this long to take its last messages.
CLOSE_FLUSH = 1.0
#: Connections accepted per turn of the loop (then the others' input is read).
ACCEPT_BATCH = 8
#: Accept, back off after running out of file descriptors (or memory): the first
#: pause, and the longest.
ACCEPT_BACKOFF = (0.05, 1.0)
#: At shutdown, after the soft close's time (shutdown_timeout) has run out: how long
#: the workers that were cut short have to end.
KILL_GRACE = 3.0
#: At shutdown: how long the spawner (the zygote and spare workers) has to end.
SPAWNER_CLOSE = 2.0
#: Seconds between two log lines of the same kind of trouble caused by peers.
LOG_INTERVAL = 10.0
#: The least time between two returns of the C heap's free pages (malloc_trim) while
#: clients are still connected.
TRIM_INTERVAL = 5.0
#: The interpreter's thread switch interval while the server runs (Python's default
#: is 5 ms): the loop, which answers every client, waits at most this long for the
#: GIL behind a thread that is busy (building a large status reply, say).
SWITCH_INTERVAL = 0.001
#: The server exits within this long of the first SIGTERM/SIGINT (with the
#: default shutdown_timeout of 10 s).
SHUTDOWN_BOUND = 10.0 + KILL_GRACE + CLOSE_FLUSH + SPAWNER_CLOSE

# errno values of accept() that mean "out of a resource": back off, do not die
_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# ... and those that only concern the one connection that was being accepted
_ACCEPT_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EAGAIN,
                     getattr(errno, 'ENONET', errno.ECONNABORTED), errno.EHOSTUNREACH,
                     errno.ENETUNREACH, errno.ENETDOWN, errno.EOPNOTSUPP, errno.ETIMEDOUT}


# Linux: getsockopt(TCP_INFO) starts with the connection's state; TCP_CLOSE once reset
_TCP_INFO = getattr(socket, 'TCP_INFO', None)
_TCP_CLOSE = 7


class ListenError(OSError):
    """The server cannot listen on the address it was given."""


class Channel:
    """
    The network side of one accepted connection. Everything here runs on the
    server's loop thread, except :meth:`post`, :meth:`finish` and
    :meth:`resume`, which any thread may call: they only queue and wake the
    loop (no lock is ever held across a send).
    """

    def __init__(self, server, sock, peer, now, tls):
        self.server = server
        self.sock = sock
        self.peer = peer
        self.accepted = now
        self.session = None            # None: a refusal being explained
        self.tls = tls
        self.handshake = tls           # the TLS handshake is still to be done
        self._handshake_wants = selectors.EVENT_READ
        self.reader = protocol.LineReader(server.max_message)
        self.last_received = now
        self.paused = False            # the handler is behind: not reading for now
        self.eof = False               # nothing more to read
        self.ended = False             # the session was told to end
        self.finishing = False         # send what is queued, half-close, then close
        self.finish_by = None
        self.half_closed = False
        self.closed = False
        self.events = 0                # what the selector watches for
        self._tls_chunk = None         # a TLS write to repeat exactly as it was
        self._tls_wants_write = False  # a TLS read needs the socket writable
        # The outbox, shared with the threads that post
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._draining = 0             # session threads waiting for the queue to drain
        self._out = deque()
        self._offset = 0               # bytes of _out[0] already sent
        self.queued = 0                # bytes in the outbox
        self.stalled_since = None      # since when queued bytes have waited without progress
        self.overflowed = False
        self._finish_asked = False
        self._resume_asked = False

    # From any thread ---------------------------------------------------------

    def post(self, data):
        """Queue *data* for the client. A client whose queue would pass the bound is dropped."""
        with self._lock:
            if self.closed or self.overflowed:
                return
            if self.queued and self.queued + len(data) > self.server.outbox_limit:
                self.overflowed = True
                self._out.clear()
                self._offset = self.queued = 0
                self._drained.notify_all()
                poke = True
            else:
                poke = not self.queued
                if poke:
                    self.stalled_since = time.monotonic()
                self._out.append(data)
                self.queued += len(data)
        if poke:
            self.server.poke(self)

    def wait_drained(self):
        """
        Back-pressure, for the session's thread before each request: while more
        than OUTBOX_HIGH bytes of replies wait, wait until they are down to
        OUTBOX_LOW, or the connection is gone (a client that takes none of them
        is dropped after the send timeout, which ends the wait).
        """
        if self.queued < OUTBOX_HIGH:
            return
        with self._drained:
            self._draining += 1
            try:
                while not (self.queued < OUTBOX_LOW or self.closed or self.overflowed):
                    self._drained.wait(1.0)
            finally:
                self._draining -= 1

    def peer_gone(self, probe=False):
        """
        True once nobody can read what would be sent: the connection is closed,
        dropped, or the peer closed it altogether (TCP says the connection is
        closed: the peer answered our data with a reset). A peer that only
        half-closed (it still reads) is not gone. TCP is asked once the peer's
        end of the stream was read, or with *probe* (a syscall: before costly work).
        """
        with self._lock:               # close() takes it before closing the socket
            if self.closed or self.overflowed:
                return True
            if not (self.eof or probe) or _TCP_INFO is None:
                return False
            try:
                state = self.sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 8)[0]
            except (OSError, ValueError, IndexError):
                return False
        return state == _TCP_CLOSE

    def finish(self):
        """The session is over: send what is queued, then close (the loop does it)."""
        self._finish_asked = True
        self.server.poke(self)

    def resume(self):
        """The handler has caught up: read again."""
        self._resume_asked = True
        self.server.poke(self)

    # On the loop thread --------------------------------------------------------

    def refuse(self, reason, now):
        """Tell a refused peer why (over TLS if the server speaks it), then close."""
        self.post(protocol.encode({'push': 'closing', 'reason': reason}))
        self.finishing = True
        self.finish_by = now + REFUSAL_TIMEOUT

    def ready(self, mask):
        """The selector says the socket is ready for *mask*."""
        if self.handshake:
            self._do_handshake()
        else:
            if mask & selectors.EVENT_READ or (self._tls_wants_write and
                                               mask & selectors.EVENT_WRITE):
                self.read()
            if mask & selectors.EVENT_WRITE and not self.closed and self.queued:
                self.write()
        self.service()

    def service(self):
        """Act on what other threads asked for, flush, and watch for the right events."""
        if self.closed:
            return
        if self.overflowed:
            self.drop(f'more than {self.server.outbox_limit // 1024} KiB of replies waiting: '
                      f'it did not read them')
            return
        if self._resume_asked:
            self._resume_asked = False
            self.paused = False
        if self._finish_asked and not self.finishing:
            if self.handshake:            # no TLS yet to say anything in: just close
                self.close()
                return
            self.finishing = True
            self.finish_by = time.monotonic() + CLOSE_FLUSH
        if self.queued and not self.handshake:
            self.write()
            if self.closed:
                return
        if self.finishing and not self.queued and not self.handshake and not self.half_closed:
            self._half_close()
            if self.closed:
                return
        self._watch()

    def _watch(self):
        if self.handshake:
            events = self._handshake_wants
        else:
            events = 0
            if not self.eof and not self.paused:
                events |= selectors.EVENT_READ
            if self.queued or self._tls_wants_write:
                events |= selectors.EVENT_WRITE
        if events != self.events:
            self.server.watch(self, self.events, events)
            self.events = events

    def _do_handshake(self):
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._handshake_wants = selectors.EVENT_READ
            return
        except ssl.SSLWantWriteError:
            self._handshake_wants = selectors.EVENT_WRITE
            return
        except (OSError, ValueError) as exc:
            self.server.warn_limited('tls', 'client %s: TLS handshake failed: %s',
                                     self.peer, printable(exc))
            self._lost(f'TLS handshake failed: {exc}')
            return
        self.handshake = False
        self.server.tls_pending.add(self)    # a first request may be inside OpenSSL already

    def read(self):
        self._tls_wants_write = False
        try:
            data = self.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return
        except ssl.SSLWantWriteError:
            self._tls_wants_write = True
            return
        except (OSError, ValueError) as exc:
            self._lost(f'connection broken: {exc}')
            return
        if not data:
            self._got_eof()
            return
        self.last_received = time.monotonic()
        if self.tls and self.sock.pending():
            self.server.tls_pending.add(self)
        session = self.session
        if session is None or self.finishing or self.ended:
            return                           # closing: what comes now is not read
        keep = session.received(self.reader.feed(data), self.reader.error)
        if self.reader.error is not None:
            self.eof = True                  # nothing after an oversized line is read
        elif not keep:
            self.paused = True

    def write(self):
        budget = WRITE_BUDGET
        while self.queued and budget > 0:
            chunk = self._tls_chunk
            if chunk is None:
                with self._lock:
                    if not self._out or self.overflowed:
                        return
                    chunk = self._peek(min(budget, TLS_CHUNK) if self.tls else budget)
                if self.tls:
                    chunk = bytes(chunk)
            try:
                sent = self.sock.send(chunk)
            except (BlockingIOError, InterruptedError):
                return
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._tls_chunk = chunk
                return
            except (OSError, ValueError) as exc:
                self._lost(f'connection broken: {exc}')
                return
            self._tls_chunk = None
            with self._lock:
                self._consume(sent)
                self.stalled_since = time.monotonic() if self.queued else None
                if self._draining and self.queued < OUTBOX_LOW:
                    self._drained.notify_all()
            budget -= sent
            if sent < len(chunk):
                return                       # the socket's buffer is full

    def _peek(self, size):
        first = self._out[0]
        if self._offset:
            first = memoryview(first)[self._offset:]
        if len(first) >= size or len(self._out) == 1:
            return first[:size]
        parts, total = [first], len(first)
        for chunk in islice(self._out, 1, None):
            if total >= size:
                break
            parts.append(chunk)
            total += len(chunk)
        return b''.join(parts)[:size]

    def _consume(self, count):
        if self.overflowed or self.closed:
            return                       # the queue was emptied meanwhile
        self.queued -= count
        while count:
            left = len(self._out[0]) - self._offset
            if count >= left:
                self._out.popleft()
                self._offset = 0
                count -= left
            else:
                self._offset += count
                count = 0

    def _half_close(self):
        """All sent: end our direction; the peer's EOF (or the deadline) closes the socket."""
        try:
            # the TCP half-close only, under TLS too (an SSL shutdown would need the peer)
            socket.socket.shutdown(self.sock, socket.SHUT_WR)
        except OSError:
            pass
        self.half_closed = True
        if self.eof:
            self.close()

    def _got_eof(self):
        self.eof = True
        if self.finishing or self.session is None:
            if self.half_closed or not self.queued:
                self.close()
            return
        self._end('connection closed by the client')

    def _end(self, reason, push=None, now=False):
        if not self.ended:
            self.ended = True
            self.session.end(reason, push, now)

    def _lost(self, reason):
        """The socket is of no more use: close it, and end the session (requests
        received and not yet carried out are dropped: nobody would get the replies)."""
        self.close()
        if self.session is not None:
            self._end(reason, now=True)

    def drop(self, reason):
        """A client that does not take its replies: close now, its pins are soft-closed."""
        name = self.session.describe() if self.session is not None else self.peer
        self.server.warn_limited('drop', 'client %s dropped: %s', name, reason)
        if self.session is not None:
            self.session.end_reason = f'dropped: {reason}'
        self._lost(reason)

    def close(self):
        if self.closed:
            return
        with self._lock:
            self.closed = True
            self._out.clear()
            self._offset = self.queued = 0
            self._drained.notify_all()
        self.server.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass

    def check(self, now):
        """Enforce the deadlines; return the next one (monotonic), or None."""
        if self.closed:
            return None
        if self.finishing:
            if now >= self.finish_by:
                self.close()
                return None
            return self.finish_by
        soonest = None
        if self.queued and self.stalled_since is not None:
            due = self.stalled_since + self.server.send_timeout
            if now >= due:
                self.drop(f'it took none of its replies for {self.server.send_timeout:g} s')
                return None
            soonest = due
        session = self.session
        if self.ended:
            return soonest
        if not session.admitted:
            if not session.got_line:
                due = self.accepted + FIRST_LINE_TIMEOUT
                if now >= due:
                    return self._expire(f'no complete request within {FIRST_LINE_TIMEOUT:g} s '
                                        f'of connecting')
                soonest = _earliest(soonest, due)
            due = self.accepted + ADMIT_TIMEOUT
            if now >= due:
                what = 'hello' if not session.greeted else 'authentication'
                return self._expire(f'no {what} within {ADMIT_TIMEOUT:g} s of connecting')
            soonest = _earliest(soonest, due)
        lease = self.server.lease
        if lease and session.idle and not self.eof:
            due = max(self.last_received, session.idle_since) + lease
            if now >= due:
                reason = f'lease expired: nothing received for {lease:g} s'
                self._end(reason, {'push': 'closing', 'reason': reason})
                return None
            soonest = _earliest(soonest, due)
        elif lease and not self.eof:
            soonest = _earliest(soonest, now + lease)   # look again then
        return soonest

    def _expire(self, reason):
        self.server.warn_limited('deadline', 'client %s: %s', self.session.describe(), reason)
        self._end(reason, {'push': 'closing', 'reason': reason})
        return None


def _earliest(a, b):
    return b if a is None or b < a else a


class _Turns:
    """
    At most *permits* threads inside at once, let in in the order they asked
    (first come, first served: threading.Lock and Semaphore are not fair). A
    waiting thread may give up (its client is gone) without taking a turn.
    """

    def __init__(self, permits=1):
        self._changed = threading.Condition(threading.Lock())
        self._permits = permits
        self._inside = 0
        self._queue = deque()

    def acquire(self, give_up=None, poll=0.1):
        """Wait for a turn; False if *give_up*() became true first (then no turn is held)."""
        me = object()
        with self._changed:
            self._queue.append(me)
            while not (self._inside < self._permits and self._queue[0] is me):
                if give_up is not None and give_up():
                    self._queue.remove(me)
                    self._changed.notify_all()
                    return False
                self._changed.wait(poll if give_up is not None else None)
            self._queue.popleft()
            self._inside += 1
            self._changed.notify_all()      # the next one may fit too
            return True

    def release(self):
        with self._changed:
            self._inside -= 1
            self._changed.notify_all()

    def __enter__(self):
        self.acquire()

    def __exit__(self, *exc):
        self.release()


class Server:
    """A remoteio server; see the module docstring and :func:`run_server`."""

    def __init__(self, host='0.0.0.0', port=protocol.DEFAULT_PORT, backend='auto',
                 mode='wait', revision=None, max_message=protocol.MAX_MESSAGE,
                 max_clients=64, max_pins=64, spares=2, shutdown_timeout=10.0, mock_wires=(),
                 mock_parts=(), access=None, http_port=None, lease=DEFAULT_LEASE, tls=None, max_pending=DEFAULT_MAX_PENDING):
        if lease < 0:
            raise ValueError('lease must be 0 (off) or a number of seconds above 0')
        if mode not in MODES:
            raise ValueError(f'mode must be one of {", ".join(MODES)}, not {mode!r}')
        if backend != 'auto' and backend not in backends.BACKENDS:
            raise ValueError(f'backend must be auto or one of {", ".join(backends.BACKENDS)}')
        if revision is not None and backend != 'mock':
            raise ValueError('--revision applies to the mock backend only')
        if mock_wires and backend != 'mock':
            raise ValueError('--mock-wire applies to the mock backend only: on a real Pi, '
                             'connect the pins with a jumper wire')
        if mock_parts and backend != 'mock':
            raise ValueError('--mock-part applies to the mock backend only: on a real Pi, '
                             'connect the parts to the pins')
        if max_clients < 1 or max_pending < 1:
            raise ValueError('max_clients and max_pending must be at least 1')
        self.mock_wires = [tuple(wire) for wire in mock_wires]
        self.http_port = http_port       # the browser dashboard's port (None: no dashboard)
        self.dashboard = None
        self.mock_parts = [circuit.parse_part(p) if isinstance(p, str) else p
                           for p in mock_parts]
        self.access = access or AccessPolicy()
        self.lease = lease
        self.tls = tls                # an ssl.SSLContext (server side), or None
        if tls is not None:
            tls.options |= getattr(ssl, 'OP_NO_RENEGOTIATION', 0)
        self.host = host
        self.port = port
        self.requested_backend = backend
        self.mode = mode
        self.revision = revision
        self.max_message = max_message
        self.max_clients = max_clients
        self.max_pending = max_pending
        self.max_pins = max_pins
        self.spares = spares
        self.shutdown_timeout = shutdown_timeout
        self.outbox_limit = OUTBOX_LIMIT
        #: How long a client's queued replies may wait without the socket taking any.
        self.send_timeout = lease or SEND_TIMEOUT
        self.sessions = {}            # id -> Session, admitted or not
        self._admitted = 0
        self._pending = 0
        self._refusing = 0
        self._next_session = 1
        self._lock = threading.Lock()
        self._status_turns = _Turns(STATUS_AT_ONCE)   # statuses gathered at once
        self._encode_turns = _Turns()                 # ... and encoded, one at a time
        self._listener = None
        self._stopping = threading.Event()
        self.started = None
        self._workdir = None          # a directory made for lgpio's FIFOs
        self.spawner = None
        # The loop
        self._selector = None
        self._wake_r = self._wake_w = None
        self._signal_sock = None
        self._channels = set()
        self._poked = set()
        self._poke_lock = threading.Lock()
        self._woken = False
        self.tls_pending = set()      # TLS channels with decrypted bytes left in OpenSSL
        self._next_check = float('inf')
        self._accept_paused_until = None
        self._accept_backoff = 0.0
        self._accept_failures = 0
        self._accept_failing_since = None
        self._stop_asked = False
        self._stop_phase = None       # None, 'pins', 'closing', 'done'
        self._stop_started = None
        self._phase_deadline = None
        self._pins_released = threading.Event()
        self._serving = False
        self._loop_ident = None
        self._finished = False
        self._limited = {}            # warn_limited: key -> (last logged, suppressed since)
        self._limited_lock = threading.Lock()
        self._trimmed = float('-inf')  # when _give_back_memory last trimmed

    # Start-up ----------------------------------------------------------------

    def start(self):
        """Resolve the backend, start the spawner and listen. Returns the bound port."""
        env, self._workdir = backends.worker_environment()
        _few_malloc_arenas()
        self.records = RecordTable()      # before the zygote: every worker inherits it
        self.spawner = Spawner(None, self.revision, self.spares, env=env, records=self.records)
        try:
            backend, board, reasons = self.spawner.probe(self.requested_backend)
        except Exception:
            self._close_spawner()
            raise
        for reason in reasons:
            log.info('backend not usable: %s', reason)
        if self.requested_backend == 'auto' and backend == 'mock':
            log.warning('no GPIO backend works on this machine; using the mock backend '
                        '(simulated pins, nothing is driven)')
        self.backend = backend
        self.capabilities = dict(backends.CAPABILITIES[backend])
        self.board = Board(board)
        revision = self.board.revision
        gpios = self.board.gpios()
        try:
            self.circuit = self._build_circuit(gpios) if backend == 'mock' else None
        except ValueError:
            self._close_spawner()
            raise
        self.spawner.use(backend, revision if backend == 'mock' else None, board=revision)
        self.registry = Registry(self.spawner, gpios, self.circuit, self.records)
        try:
            self._listener = self._listen()
        except ListenError:
            self._close_spawner()
            raise
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._check_file_limit(len(gpios))
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        self._selector.register(self._listener, selectors.EVENT_READ, self._on_acceptable)
        if self._signal_sock is not None:
            self._selector.register(self._signal_sock, selectors.EVENT_READ, self._on_signal)
        if self.http_port is not None:
            from remoteio_server.dashboard import Dashboard
            try:
                self.dashboard = Dashboard(self, self.host, self.http_port, self.tls)
            except OSError as exc:
                self._close_listener()
                self._close_spawner()
                raise ListenError(exc.errno, f'the dashboard cannot listen on port '
                                             f'{self.http_port}: {exc.strerror}') from None
            self.dashboard.start()
        self.spawner.start()
        self.started = time.monotonic()
        return self.port

    def _listen(self):
        try:
            infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, _, _, _, address = infos[0]
            # '::' serves IPv4 too (IPV6_V6ONLY off) wherever the system allows it
            dual = (family == socket.AF_INET6 and socket.has_dualstack_ipv6()
                    and ipaddress.ip_address(address[0].split('%', 1)[0]).is_unspecified)
            return socket.create_server(address, family=family, backlog=128,
                                        dualstack_ipv6=dual)
        except OSError as exc:
            raise ListenError(exc.errno, exc.strerror or str(exc)) from None

    def _check_file_limit(self, gpios):
        """Raise the soft limit on open files if --max-clients needs more; warn if it cannot."""
        try:
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (OSError, ValueError):
            return
        # each connection one; each pin's worker a socket and a pidfd; the rest
        needed = self.max_clients + self.max_pending + MAX_REFUSALS + 2 * (gpios + self.spares) + 32
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        if hard == resource.RLIM_INFINITY or hard > soft:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (OSError, ValueError):
                pass
        if soft < needed:
            log.warning('the limit on open files (%d, ulimit -n; LimitNOFILE= under systemd) is '
                        'below what --max-clients %d needs (about %d): beyond it, new connections '
                        'wait until others end', soft, self.max_clients, needed)

    # The loop ------------------------------------------------------------------

    def serve_forever(self):
        """Serve until :meth:`stop` is called (or SIGTERM/SIGINT under :func:`run_server`)
        and the shutdown is complete."""
        self._serving = True
        self._loop_ident = threading.get_ident()
        previous_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(previous_interval, SWITCH_INTERVAL))
        try:
            while self._stop_phase != 'done':
                self._turn()
        finally:
            sys.setswitchinterval(previous_interval)
            self._serving = False
            self._loop_ident = None
            if self._stop_phase != 'done' and not self._pins_released.is_set():
                log.error('the server loop failed: releasing every pin')
                self._stopping.set()
                self._release_all()
            self._finish()

    def _turn(self):
        timeout = self._timeout()
        events = self._selector.select(timeout)
        registry = self.registry
        registry.hold_sends()   # the replies of this turn first, then the workers' requests
        try:
            self._serve_ready(events)
        finally:
            registry.flush_held()
        now = time.monotonic()
        if now >= self._next_check:
            self._check(now)
        if self._stop_asked and self._stop_phase is None:
            self._begin_stop()
        if self._stop_phase is not None:
            self._advance_stop(time.monotonic())

    def _serve_ready(self, events):
        for key, mask in events:
            try:
                key.data(mask)
            except Exception:
                self._failed(key.data)
        if self.tls_pending:
            pending, self.tls_pending = self.tls_pending, set()
            for channel in pending:
                if not channel.closed:
                    try:
                        channel.read()
                        channel.service()
                    except Exception:
                        self._failed(channel.ready)
        self._run_poked()

    def _timeout(self):
        if self.tls_pending or self._woken or self._poked or (
                self._stop_asked and self._stop_phase is None):
            return 0
        due = self._next_check
        if self._accept_paused_until is not None:
            due = min(due, self._accept_paused_until)
        if self._phase_deadline is not None:
            due = min(due, self._phase_deadline)
        if due == float('inf'):
            return None
        return max(0.0, due - time.monotonic())

    def _failed(self, callback):
        """A bug in the loop's handling of one connection: log it, drop that connection."""
        channel = getattr(callback, '__self__', None)
        if isinstance(channel, Channel):
            log.exception('client %s: internal error; closing the connection', channel.peer)
            try:
                channel._lost('internal error')
            except Exception:
                log.exception('closing %s failed', channel.peer)
        else:
            log.exception('internal error in the server loop')

    def watch(self, channel, old, new):
        """The selector follows *channel* for *new* events (0: not at all)."""
        if old and new:
            self._selector.modify(channel.sock, new, channel.ready)
        elif new:
            self._selector.register(channel.sock, new, channel.ready)
        elif old:
            self._selector.unregister(channel.sock)

    def forget(self, channel):
        """*channel* closed its socket."""
        if channel.events:
            try:
                self._selector.unregister(channel.sock)
            except (KeyError, ValueError):
                pass
            channel.events = 0
        self._channels.discard(channel)
        self.tls_pending.discard(channel)
        if channel.session is None:
            self._refusing -= 1

    def on_loop(self):
        """True on the loop's own thread."""
        return threading.get_ident() == self._loop_ident

    def poke(self, channel):
        """From any thread: *channel* has something for the loop (output, a request)."""
        if self.on_loop():
            self._poked.add(channel)      # the loop looks at it before it sleeps again
            return
        with self._poke_lock:
            self._poked.add(channel)
            if self._woken:
                return
            self._woken = True
        self._wake()

    def _wake(self):
        try:
            self._wake_w.send(b'x')
        except (BlockingIOError, AttributeError, OSError):
            pass                      # full (the loop will wake), or not started

    def _on_wake(self, mask):
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _run_poked(self):
        with self._poke_lock:
            poked, self._poked = self._poked, set()
            self._woken = False
        for channel in poked:
            try:
                channel.service()
            except Exception:
                self._failed(channel.ready)
            if channel.queued and not channel.closed:
                self._schedule(channel.stalled_since + self.send_timeout
                               if channel.stalled_since else time.monotonic())
            if channel.finishing and not channel.closed:
                self._schedule(channel.finish_by)

    def _schedule(self, when):
        if when is not None and when < self._next_check:
            self._next_check = when

    def _check(self, now):
        soonest = float('inf')
        for channel in list(self._channels):
            try:
                due = channel.check(now)
                if not channel.closed:
                    channel.service()
            except Exception:
                self._failed(channel.ready)
                continue
            if due is not None and due < soonest:
                soonest = due
        self._next_check = soonest
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            if self._listener is not None and not self._stopping.is_set():
                self._selector.register(self._listener, selectors.EVENT_READ,
                                        self._on_acceptable)

    # Accepting -----------------------------------------------------------------

    def _on_acceptable(self, mask):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _EXHAUSTED:
                    self._accept_exhausted(exc)
                    return
                if exc.errno in _ACCEPT_TRANSIENT:
                    continue
                log.warning('accepting a connection failed: %s', exc)
                self._pause_accept(ACCEPT_BACKOFF[0])
                return
            if self._accept_failures:
                log.info('accepting connections again (%d attempts failed in %.1f s)',
                         self._accept_failures, time.monotonic() - self._accept_failing_since)
                self._accept_failures = 0
                self._accept_backoff = 0.0
            self._connected(sock, address)

    def _accept_exhausted(self, exc):
        """Out of file descriptors (or memory): serve the connected clients, try again later."""
        if not self._accept_failures:
            self._accept_failing_since = time.monotonic()
            log.warning('cannot accept new connections: %s. The %d connected clients are served '
                        'on; new ones wait until some end (raise the limit on open files: '
                        'ulimit -n, LimitNOFILE= under systemd; or lower --max-clients)',
                        exc.strerror or exc, len(self.sessions))
        self._accept_failures += 1
        self._accept_backoff = min(ACCEPT_BACKOFF[1],
                                   max(ACCEPT_BACKOFF[0], self._accept_backoff * 2))
        self._pause_accept(self._accept_backoff)

    def _pause_accept(self, seconds):
        try:
            self._selector.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._accept_paused_until = time.monotonic() + seconds
        self._schedule(self._accept_paused_until)

    def _connected(self, sock, address):
        now = time.monotonic()
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:
            sock.close()
            return
        peer = _peer_text(address)
        refusal = self.access.admit(address[0]) if isinstance(address, tuple) else None
        if refusal is None and self._stopping.is_set():
            refusal = 'the server is shutting down'
        if refusal is None and self._pending >= self.max_pending:
            self._sweep_pending()
        with self._lock:
            if refusal is None and self._admitted >= self.max_clients:
                refusal = f'the server has its maximum of {self.max_clients} clients'
            if refusal is None and self._pending >= self.max_pending:
                what = 'hello' if self.access.protected else 'hello and authentication'
                refusal = (f'{self.max_pending} connections are waiting to finish their {what} '
                           f'(--max-pending); try again in a few seconds')
            if refusal is not None and self._refusing >= MAX_REFUSALS:
                sock.close()          # a flood: no explanation
                self.warn_limited('refused', 'refused %s: %s', peer, refusal)
                return
            session_id = None
            if refusal is None:
                session_id = self._next_session
                self._next_session += 1
                self._pending += 1
            else:
                self._refusing += 1
        if self.tls is not None:
            try:
                sock = self.tls.wrap_socket(sock, server_side=True,
                                            do_handshake_on_connect=False)
            except (OSError, ValueError):
                sock.close()
                with self._lock:
                    if session_id is None:
                        self._refusing -= 1
                    else:
                        self._pending -= 1
                return
        channel = Channel(self, sock, peer, now, self.tls is not None)
        self._channels.add(channel)
        if session_id is None:
            self.warn_limited('refused', 'refused %s: %s', peer, refusal)
            channel.refuse(refusal, now)
        else:
            session = Session(self, channel, peer, session_id)
            channel.session = session
            with self._lock:
                self.sessions[session.id] = session
            log.debug('client %s connected', session.describe())
            self._schedule(now + min(FIRST_LINE_TIMEOUT, self.lease or FIRST_LINE_TIMEOUT))
            if self.tls is None:
                # Its hello is usually there already: take it now, before accepting the
                # next, so that a burst of connections is not counted as pending at once.
                channel.read()
        self._schedule(channel.finish_by)
        channel.service()

    def _sweep_pending(self):
        """
        Before refusing a connection because too many are pending: read what
        the pending ones have sent meanwhile (a hello that admits them, the end
        of those already gone), so that only those really waiting count.
        """
        for channel in list(self._channels):
            session = channel.session
            if (session is not None and not session.admitted and not channel.closed
                    and not channel.eof and not channel.handshake):
                try:
                    channel.read()
                    channel.service()
                except Exception:
                    self._failed(channel.ready)

    # Admission (called by sessions) ----------------------------------------------

    def admit(self, session):
        """A place among the admitted clients for *session*, or the reason there is none."""
        with self._lock:
            if self._stopping.is_set():
                return 'the server is shutting down'
            if self._admitted >= self.max_clients:
                return f'the server has its maximum of {self.max_clients} clients'
            self._admitted += 1
            self._pending -= 1
        self.registry.hub.event(None, client=session.id, event='connected', peer=session.peer,
                                name=session.client)
        return None

    def unadmit(self, session):
        with self._lock:
            self._admitted -= 1
            self._pending += 1

    def note_refusal(self, peer, reason):
        self.warn_limited('refused', 'refused %s: %s', peer, reason)

    def session_ended(self, session, reason):
        with self._lock:
            self.sessions.pop(session.id, None)
            if session.admitted:
                self._admitted -= 1
            else:
                self._pending -= 1
        if session.admitted:
            self.registry.hub.event(None, client=session.id, event='gone',
                                    reason=printable(reason))
        # a client that drove pins is worth a line; a status query is not
        level = logging.INFO if session.claimed_any else logging.DEBUG
        log.log(level, 'client %s disconnected: %s', session.describe(), printable(reason))
        if not self.sessions or session.claimed_any:
            self._give_back_memory()

    def warn_limited(self, key, message, *args):
        """Log a warning about a peer, at most one of each *key* per LOG_INTERVAL."""
        now = time.monotonic()
        with self._limited_lock:
            last, suppressed = self._limited.get(key, (None, 0))
            if last is not None and now - last < LOG_INTERVAL:
                self._limited[key] = (last, suppressed + 1)
                return
            self._limited[key] = (now, 0)
        if suppressed:
            message += f' ({suppressed} more like it in the last {now - last:.0f} s not logged)'
        log.warning(message, *args)

    # Information ---------------------------------------------------------------

    def board_dict(self):
        return dict(self.board.summary)

    def hello_info(self, session):
        return {
            'protocol': protocol.PROTOCOL_VERSION,
            'server': 'remoteio-server',
            'version': __version__,
            'backend': self.backend,
            'revision': self.board.revision,
            'mode': session.mode,
            'capabilities': self.capabilities,
            'session': session.id,
            'monotonic': time.monotonic(),
            'max_message': self.max_message,
            'lease': self.lease,
            'tls': self.tls is not None,
        }

    def _build_circuit(self, gpios):
        """The virtual Pi's wires and parts (:mod:`.circuit`); None without any."""
        if not self.mock_wires and not self.mock_parts:
            return None
        for part in self.mock_parts:
            if part.kind == 'pot' and spi.MOCK_SELECTS[part.adc] not in spi.MOCK_DEVICES:
                raise ValueError(f'--mock-part {part.name}: there is no simulated ADC on CE'
                                 f'{part.adc}: add --mock-spi mcp3008:{part.adc}')
        return circuit.Circuit(gpios, self.mock_wires, self.mock_parts,
                               self.board.fixed_pulls())

    def status(self, history=20):
        with self._lock:
            sessions = list(self.sessions.values())
        pins = self.registry.snapshot(history)
        extra = {}
        if self.circuit is not None:
            extra['circuit'] = self.circuit.status()
        return dict({
            'protocol': protocol.PROTOCOL_VERSION,
            'server': 'remoteio-server',
            'version': __version__,
            'backend': self.backend,
            'mode': self.mode,
            'board': self.board_dict(),
            'monotonic': time.monotonic(),
            'time': time.time(),
            'uptime': time.monotonic() - self.started,
            'security': {
                'protected': self.access.protected,
                'token': not self.access.protected,
                'allow_hosts': None if self.access.allow_hosts is None
                else [str(n) for n in self.access.allow_hosts],
                'allow_pins': None if self.access.allow_pins is None
                else sorted(self.access.allow_pins),
                'lease': self.lease,
                'tls': self.tls is not None,
            },
            'clients': [
                {'id': s.id, 'peer': s.peer, 'client': s.client, 'mode': s.mode,
                 'connected': s.connected, 'pins': sorted(s.pins),
                 'token': s.token.name if s.token is not None else None,
                 'observing': self.registry.hub.observing(s)}
                for s in sessions
            ],
            'pins': pins,
        }, **extra)

    def status_reply(self, id, history, session=None):
        """
        The status reply to request *id*, encoded, or None if *session* is
        gone meanwhile (nobody would read it). Statuses are gathered from the
        pins' workers STATUS_AT_ONCE at a time and encoded (pin by pin) one at a
        time, server-wide, in turns, first come first served: a flood of large
        status requests, even from connections opened one after another, costs
        the workers and other clients no more than a few do, and a connection
        gone while it waited for its turn costs nothing.
        """
        if session is not None and session.is_gone(probe=True):
            return None
        if not self._status_turns.acquire(None if session is None else lambda: session.gone):
            return None
        try:
            if session is not None and session.is_gone(probe=True):
                return None
            status = self.status(history)
            pins = status.pop('pins')
            with self._encode_turns:
                head = protocol.encode(dict({'id': id, 'ok': True}, **status))
                parts = [head[:-2], b',"pins":[']
                for index, pin in enumerate(pins):
                    if index:
                        parts.append(b',')
                    parts.append(protocol.encode(pin)[:-1])
                parts.append(b']}\n')
        finally:
            self._status_turns.release()
        return b''.join(parts)

    # Stopping ------------------------------------------------------------------

    @property
    def stopping(self):
        return self._stopping.is_set()

    def stop(self):
        """
        Stop: refuse new connections and requests, soft-close every
        connection's pins (cut short after ``shutdown_timeout``), close every
        connection. From another thread (or a signal) it only asks the loop to
        do it and returns; :meth:`serve_forever` returns when it is done.
        Without a running loop it does it all before returning.
        """
        self._stop_asked = True
        if self._serving:
            with self._poke_lock:
                self._woken = True
            self._wake()
        elif not self._finished:
            if self._selector is not None:
                self.serve_forever()
            else:
                self._finish()

    def _begin_stop(self):
        self._stopping.set()
        if self.dashboard is not None:
            threading.Thread(target=self.dashboard.stop, daemon=True).start()
        self._stop_phase = 'pins'
        self._stop_started = time.monotonic()
        self._phase_deadline = self._stop_started + self.shutdown_timeout + KILL_GRACE + 0.5
        self._close_listener()
        with self._lock:
            sessions = list(self.sessions.values())
        closing = {'push': 'closing', 'reason': 'the server is shutting down'}
        for session in sessions:
            if not session.admitted:          # no pins, no thread: closed now
                channel = session.channel
                if not channel.closed and not channel.ended:
                    channel._end('the server shut down', closing)
        threading.Thread(target=self._release_all, name='remoteio-stop', daemon=True).start()

    def _release_all(self):
        """The stopping thread: every pin switched off and released (bounded)."""
        try:
            # Outputs go off now, not when their tasks would have ended (a 60 s impulse
            # would outlast systemd's stop timeout, and a killed worker switches nothing off).
            self.registry.halt_all()
            with self._lock:
                sessions = [s for s in self.sessions.values() if s.admitted]
            for session in sessions:
                session.send({'push': 'closing', 'reason': 'the server is shutting down'})
                for pin in list(session.pins.values()):
                    pin.release()
            if not self.registry.wait_all_freed(self.shutdown_timeout):
                log.error('some pins were not released within %g s: ending their workers',
                          self.shutdown_timeout)
                self.registry.kill_all()
                self.registry.wait_all_freed(KILL_GRACE)
        except Exception:
            log.exception('releasing the pins at shutdown failed')
        finally:
            self._pins_released.set()
            with self._poke_lock:
                self._woken = True
            self._wake()

    def _advance_stop(self, now):
        if self._stop_phase == 'pins':
            if not self._pins_released.is_set():
                if now < self._phase_deadline:
                    return
                log.error('the pins were not all released in time: ending their workers')
                self.registry.kill_all()
            self._stop_phase = 'closing'
            self._phase_deadline = now + CLOSE_FLUSH
            for channel in list(self._channels):
                if channel.session is not None and not channel.closed:
                    channel._end('the server shut down', now=True)
            return
        if self._stop_phase == 'closing':
            # each client has had its last messages, or the time for them is over (a
            # channel waits for its peer to close only to let it read them in peace)
            if now < self._phase_deadline and any(
                    channel.queued or not channel.half_closed for channel in self._channels):
                return
            for channel in list(self._channels):
                channel.close()
            self._stop_phase = 'done'
            self._phase_deadline = None

    def _close_listener(self):
        if self._listener is not None:
            if self._accept_paused_until is None:
                try:
                    self._selector.unregister(self._listener)
                except (KeyError, ValueError):
                    pass
            self._accept_paused_until = None
            try:
                self._listener.close()
            except OSError:
                pass

    def _finish(self):
        """After the loop: close what is left (the spawner at most SPAWNER_CLOSE)."""
        if self._finished:
            return
        self._finished = True
        self._stopping.set()
        for channel in list(self._channels):
            channel.close()
        if self._listener is not None:
            self._close_listener()
        if self.spawner is not None:
            closer = threading.Thread(target=self._close_spawner, name='remoteio-spawner-close',
                                      daemon=True)
            closer.start()
            closer.join(SPAWNER_CLOSE)
        if self._selector is not None:
            self._selector.close()
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()

    def _close_spawner(self):
        spawner, self.spawner = self.spawner, None
        if spawner is not None:
            spawner.close()
            if getattr(self, 'records', None) is not None:
                self.records.close_file()   # (the mapping stays: pins' threads may still read)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # Signals -------------------------------------------------------------------

    def watch_signals(self, sock):
        """Take signal numbers from *sock* (the wake-up fd of :func:`signal.set_wakeup_fd`)."""
        self._signal_sock = sock
        if self._selector is not None:
            self._selector.register(sock, selectors.EVENT_READ, self._on_signal)

    def _on_signal(self, mask):
        try:
            data = self._signal_sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            self.signalled(signum)

    def _give_back_memory(self):
        """
        The last client, or one that drove pins, has gone: hand the C heap's free
        pages back to the system (glibc's ``malloc_trim``), so that what a busy
        hour took is not kept for a quiet week (a Pi Zero 2 W has 512 MB). At most
        once every :data:`TRIM_INTERVAL` unless no client is left. Elsewhere, nothing.
        """
        now = time.monotonic()
        if self.sessions and now - self._trimmed < TRIM_INTERVAL:
            return
        self._trimmed = now
        libc = _libc()
        if libc is not None:
            try:
                libc.malloc_trim(0)
            except Exception:
                pass

    def signalled(self, signum):
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f'signal {signum}'
        if not self._stop_asked:
            log.info('stopping (%s): releasing every pin', name)
            self._stop_asked = True
        else:
            elapsed = time.monotonic() - (self._stop_started or time.monotonic())
            log.warning('already stopping (%s): releasing every pin; the server exits within '
                        '%.0f s', name, max(0.0, SHUTDOWN_BOUND - elapsed))


#: glibc's mallopt parameter: how many malloc arenas the process may have.
_M_ARENA_MAX = -8


def _few_malloc_arenas():
    """
    glibc gives threads that allocate arenas of their own, up to eight per CPU,
    and each keeps what it once held: the server's threads (a reader per pin, a
    handler per client) would take a dozen, for no gain, since Python's lock
    serialises them anyway. Two will do. Elsewhere, nothing.
    """
    libc = _libc()
    if libc is not None:
        try:
            libc.mallopt(_M_ARENA_MAX, 2)
        except Exception:
            pass


@functools.lru_cache(maxsize=None)
def _libc():
    if not sys.platform.startswith('linux'):
        return None
    try:
        import ctypes
        return ctypes.CDLL('libc.so.6')
    except (OSError, AttributeError, ImportError):
        return None


def _peer_text(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        address = peer_address(host)
        if address is not None and address.version == 4:
            host = str(address)           # an IPv4-mapped IPv6 address, as IPv4
        return f'[{host}]:{peer[1]}' if ':' in host else f'{host}:{peer[1]}'
    return printable(peer)


class _SignalWatch:
    """SIGTERM and SIGINT as bytes on a socket the server's loop watches."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.sock, self._write = socket.socketpair()
        self.sock.setblocking(False)
        self._write.setblocking(False)
        self._previous = {}
        self._old_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        for signum in self.SIGNALS:
            # A Python-level handler is needed for the C handler (which writes the
            # wake-up fd, on whatever thread got the signal) to run; it does nothing.
            self._previous[signum] = signal.signal(signum, _ignore_here)

    def close(self, restore):
        for signum, previous in self._previous.items():
            if not restore:
                previous = signal.SIG_IGN
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        signal.set_wakeup_fd(self._old_fd)
        self.sock.close()
        self._write.close()


def _ignore_here(signum, frame):
    """The loop acts on the signal (from the wake-up fd): nothing to do here."""


def run_server(port=protocol.DEFAULT_PORT, mode='wait', host='0.0.0.0', backend='auto',
               revision=None, ready=None, restore_signals=True, **options):
    """
    Run a remoteio server until SIGTERM or SIGINT (Ctrl+C), as the seed's
    ``run_server`` did::

        from remoteio_server import run_server

        if __name__ == '__main__':
            run_server(port=8509, mode='wait')

    *ready*, if given, is called with the :class:`Server` once it listens.
    Signals are handled when it runs in the main thread; later ones during the
    shutdown are logged and change nothing. When it returns, the previous
    handlers of SIGTERM and SIGINT are back (*restore_signals*), or, with
    ``restore_signals=False`` (the command does that), both are ignored, so
    that a late signal cannot turn a clean exit into a kill.
    """
    server = Server(host=host, port=port, backend=backend, mode=mode,
                    revision=revision, **options)
    watch = None
    if threading.current_thread() is threading.main_thread():
        watch = _SignalWatch()          # before start(): a signal meanwhile is kept
        server.watch_signals(watch.sock)
    try:
        server.start()
        log.info('remoteio-server %s listening on %s:%d (backend %s, board %s, mode %s)',
                 __version__, server.host, server.port, server.backend,
                 server.board.revision, server.mode)
        if server.access.protected:
            log.info('protected mode: no token, so only clients on this machine are served '
                     '(see --token-file)')
        if ready is not None:
            ready(server)
        server.serve_forever()
        log.info('stopped')
    finally:
        server.stop()
        if watch is not None:
            watch.close(restore_signals)
    return server
