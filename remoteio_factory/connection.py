"""
One TCP connection from a client to a remoteio server.

Flow: RemoteIOPin → **connection** → wire → server session.

:meth:`Connection.post` sends a request without waiting (pipelined writes:
gpiozero's blink and pulse threads must never wait for the network);
:meth:`Connection.request` sends one and waits for its reply, with a timeout.
Both go out in the order they were made, on one socket, so a reply to a read
reflects every write sent before it. A reader thread takes replies off the
socket and wakes their waiters; errors of posted requests and messages the
server pushes go to the owner's callbacks. User code never runs on the
reader thread.
"""

import collections
import hmac
import itertools
import logging
import os
import secrets
import socket
import sys
import threading
import time
import weakref

from remoteio_factory import protocol, transport
from remoteio_factory._version import __version__
from remoteio_factory.exc import (
    RemoteIOAuthError, RemoteIOConnectionError, RemoteIOFactoryClosed, exception_for)

log = logging.getLogger('remoteio_factory')

DEFAULT_CONNECT_TIMEOUT = 3.0
DEFAULT_TIMEOUT = 10.0
#: How long close() waits for the server to confirm it has everything.
CLOSE_TIMEOUT = 2.0
#: How long a refused hello waits for the reader to hand over the server's reason.
REASON_WAIT = 1.0
#: Posted requests get no answer, so a client could post faster than the server carries
#: them out and pile up a backlog in the sockets' buffers (megabytes: seconds of work)
#: in front of its own heartbeats and reads, until the connection counts as lost. Every
#: POST_MARK posts the connection also sends a ``heartbeat``, which the server answers
#: once it has read everything sent before it; a post waits while POST_MARKS_AHEAD of
#: those are unanswered. The backlog stays under POST_MARK * (POST_MARKS_AHEAD + 1)
#: requests, and the pipeline never runs dry.
POST_MARK = 256
POST_MARKS_AHEAD = 8

#: The client's clock: gpiozero's ticks, and the one edge times are converted to.
#: time.monotonic() on Linux and macOS; on Windows before Python 3.13 that ticks in
#: 15.6 ms steps (GetTickCount64), too coarse for the clock offset and held_time,
#: so perf_counter() (QueryPerformanceCounter: monotonic too, microseconds) is used
#: there; from 3.13 on both are the same clock.
clock = time.perf_counter if sys.platform == 'win32' else time.monotonic

# Connections are not usable in a forked child: it has the socket but not the
# reader thread. Mark them so the child neither uses nor shuts down the
# parent's socket. Windows has no fork (nor os.register_at_fork): nothing to do.
_connections = weakref.WeakSet()


def _forked():
    for connection in list(_connections):
        connection._forked = True


if hasattr(os, 'register_at_fork'):
    os.register_at_fork(after_in_child=_forked)


class _Waiter:
    """
    A caller waiting for its reply: the one hand-off from the reader thread. A
    lock taken at once and given back by the reader (:meth:`set`) costs less
    than an Event (no condition, no second lock per wait).
    """
    __slots__ = ('_lock', 'reply', 'id', 'op')

    def __init__(self, id, op):
        self._lock = threading.Lock()
        self._lock.acquire()
        self.reply = None
        self.id = id
        self.op = op

    def set(self):
        try:
            self._lock.release()
        except RuntimeError:
            pass                      # set already (a reply, then the loss of the connection)

    def wait(self, timeout):
        """True once set; False if *timeout* passed first."""
        if self._lock.acquire(timeout=timeout):
            self.set()                # set stays set (a later wait returns at once)
            return True
        return False


class TaskHandle:
    """
    A timed task the server accepted: :meth:`wait` blocks until it has ended
    and returns how (``completed``, ``replaced``, ``superseded``, ``stopped``;
    ``failed`` raises the error).
    """

    def __init__(self, connection, id, pin):
        self.connection = connection
        self.id = id
        self.pin = pin
        self.result = None
        self.error = None
        self._ended = threading.Event()

    def _end(self, result, error):
        self.result, self.error = result, error
        self._ended.set()

    @property
    def ended(self):
        return self._ended.is_set()

    def wait(self, timeout=None):
        """Wait for the end (at most *timeout* seconds; None: as long as it takes)."""
        while not self._ended.wait(1.0 if timeout is None else timeout):
            if timeout is not None:
                raise TimeoutError(f'task {self.id} on GPIO{self.pin} has not ended')
            self.connection._check()
        if self.error is not None and self.result == 'failed':
            raise exception_for(self.error)
        return self.result


class Connection:
    """
    A connection to the server at *host*:*port*; says hello on construction
    and keeps the server's answer in :attr:`hello`. *on_error* is called (on
    the reader thread; keep it short) with ``(pin, exception)`` when a posted
    request fails; *on_push* with each pushed message.
    """

    def __init__(self, host, port, connect_timeout=DEFAULT_CONNECT_TIMEOUT,
                 timeout=DEFAULT_TIMEOUT, on_error=None, on_push=None, mode=None, token=None,
                 tls=None, on_lost=None):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.on_error = on_error
        self.on_push = on_push
        self.on_lost = None      # set once connected: a failed connect is no loss
        self._ids = itertools.count(1)
        self._waiters = {}
        self._tasks = {}
        self._send_lock = threading.Lock()
        self._post_lock = threading.Lock()
        self._posted = 0                  # posts since the last mark (see POST_MARK)
        self._marks = collections.deque()  # the marks' waiters, oldest first
        self._closing = False
        self._forked = False
        self._broken = None
        self._lost_lock = threading.Lock()
        self._established = False         # hello (and auth) done: a loss from then on is news
        self._server_reason = None        # why the server said it is closing
        self._first_bytes = None          # what a server sent that was not protocol
        self._understood = False          # a message from the server was valid
        self._stop_heartbeat = threading.Event()
        self._idle_timeouts = False       # see the send timeout below
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise RemoteIOConnectionError(
                f'cannot connect to the remoteio server at {host}:{port}: '
                f'{exc.strerror or exc}. Is remoteio-server running there, and are '
                f'REMOTEIO_HOST and REMOTEIO_PORT right?') from None
        sock = self._sock
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # A send may block only this long (a server that stopped reading): SO_SNDTIMEO,
        # encoded as each platform wants it. Where it cannot be set, a plain socket gets
        # Python's own timeout instead, which bounds its receives too: the reader then
        # takes a receive timeout as an idle connection, not a lost one. (Under TLS the
        # transport bounds sends itself.)
        if not transport.set_send_timeout(sock, timeout) and tls is None:
            log.debug('no SO_SNDTIMEO on this platform: sends bounded by a socket timeout')
            sock.settimeout(timeout)
            self._idle_timeouts = True
        if tls is not None:
            try:
                self._sock = transport.wrap(tls, sock, server_side=False, server_hostname=host,
                                            timeout=connect_timeout)
            except (OSError, ValueError) as exc:
                sock.close()
                raise RemoteIOConnectionError(
                    f'TLS handshake with the remoteio server at {host}:{port} failed: {exc}. '
                    f'Does the server use TLS (--tls-cert), and does REMOTEIO_TLS_CA hold the '
                    f'certificate that signed its own?') from None
            self._sock.settimeout(None)
        self._reader = threading.Thread(
            target=self._read_loop, name=f'remoteio-reader-{host}:{port}', daemon=True)
        self._reader.start()
        _connections.add(self)
        hello = {'protocol': [protocol.PROTOCOL_VERSION],
                 'client': f'remoteio-factory/{__version__} pid {os.getpid()}'}
        if mode is not None:
            hello['mode'] = mode
        try:
            try:
                self.hello = self.request('hello', timeout=connect_timeout, **hello)
            except RemoteIOConnectionError as exc:
                if not self._server_reason and self._broken is not None:
                    # The send may fail (the server closed) while our reader still holds
                    # the server's last words, the reason for its refusal: they come
                    # before its end, at which the reader stops.
                    self._reader.join(min(connect_timeout, REASON_WAIT))
                    if self._server_reason:
                        raise RemoteIOConnectionError(
                            f'{exc}: {self._server_reason}') from None
                if self._server_reason:
                    raise           # a remoteio server that refused us, and said why
                raise RemoteIOConnectionError(self._no_hello(connect_timeout, tls)) from None
            if self.hello.get('auth'):
                self._authenticate(token, connect_timeout)
            elif token or os.environ.get('REMOTEIO_TOKEN'):
                # A server that asks for no token cannot prove it knows ours.
                raise RemoteIOAuthError(
                    f'the server at {host}:{port} asks for no token although one is set '
                    f'(REMOTEIO_TOKEN): is it the right server? Unset REMOTEIO_TOKEN for a '
                    f'server without a token')
            #: The server's monotonic clock minus ours (edge times are converted with it).
            self.clock_offset = self._measure_clock_offset(connect_timeout)
        except Exception:
            self.close(graceful=False)
            raise
        self.on_lost = on_lost
        self._established = True
        lease = self.hello.get('lease') or 0
        if lease > 0:
            threading.Thread(target=self._heartbeat, args=(lease,), daemon=True,
                             name=f'remoteio-heartbeat-{host}:{port}').start()

    def _no_hello(self, timeout, tls):
        """Why the server did not answer hello, as far as we can tell, and what to do."""
        where = f'{self.host}:{self.port}'
        check = ('check REMOTEIO_HOST and REMOTEIO_PORT (remoteio-server listens on port '
                 f'{protocol.DEFAULT_PORT} unless told otherwise)')
        first = self._first_bytes
        if first:
            text = first.decode('utf-8', 'replace').strip()
            web = first.startswith(b'HTTP/') or first.lstrip()[:15].lower().startswith(
                (b'<!doctype html', b'<html'))
            kind = ' (an HTTP server)' if web else ''
            return (f'the server at {where} is not a remoteio server{kind}: it answered '
                    f'{text[:60]!r} instead of a remoteio hello; {check}')
        if self._broken is None:
            return (f'the server at {where} did not answer hello within {timeout:g} s: it '
                    f'accepted the connection but said nothing, so it is not a remoteio '
                    f'server (or it is stuck); {check}')
        if tls is not None:
            return (f'the server at {where} closed the connection without answering hello '
                    f'({self._broken}): is it a remoteio server with TLS? {check}')
        return (f'the server at {where} closed the connection without answering hello '
                f'({self._broken}). A remoteio server started with --tls-cert does that to '
                f'a client without TLS: then set REMOTEIO_TLS_CA to the certificate that '
                f'signed its own. Otherwise it is not a remoteio server: {check}')

    def _authenticate(self, token, timeout):
        """Answer the server's challenge, and make it answer ours."""
        scheme = self.hello['auth']
        if scheme != protocol.AUTH_SCHEME:
            raise RemoteIOAuthError(f'the server wants authentication {scheme!r}, '
                                    f'which this client does not know')
        token = token or os.environ.get('REMOTEIO_TOKEN')
        if not token:
            raise RemoteIOAuthError(
                f'the remoteio server at {self.host}:{self.port} requires a token: set '
                f'REMOTEIO_TOKEN (or RemoteIOFactory(token=...)) to the server\'s token')
        token = token.encode('utf-8')
        nonce = secrets.token_hex(32)
        try:
            reply = self.request('auth', timeout=timeout, nonce=nonce,
                                 mac=protocol.auth_mac(token, 'client', self.hello['nonce']))
        except RemoteIOAuthError:
            raise RemoteIOAuthError(
                f'the remoteio server at {self.host}:{self.port} refused our token: '
                f'check REMOTEIO_TOKEN') from None
        expected = protocol.auth_mac(token, 'server', nonce).encode()
        if not hmac.compare_digest(expected, str(reply.get('proof')).encode('utf-8', 'replace')):
            raise RemoteIOAuthError(
                f'the server at {self.host}:{self.port} could not prove it knows the token: '
                f'is it the right server?')
        # what the token may do (a server with scoped tokens says; else: everything)
        self.scope = {'token': reply.get('token'), 'read_only': bool(reply.get('read_only')),
                      'pins': reply.get('pins')}

    def _measure_clock_offset(self, timeout, samples=5):
        """The server's clock minus ours, from the quickest of a few round trips."""
        best = None
        for _ in range(samples):
            sent = clock()
            server_time = self.request('heartbeat', timeout=timeout)['monotonic']
            received = clock()
            if best is None or received - sent < best[0]:
                best = (received - sent, server_time - (sent + received) / 2)
        return best[1]

    def _heartbeat(self, lease):
        """
        Keep the lease: a message every third of it. A server that does not
        answer one within the request timeout counts as lost (not within the
        lease: a connection's own read may keep the server busy that long).
        """
        while not self._stop_heartbeat.wait(lease / 3):
            if self._closing or self._broken is not None:
                return
            try:
                self.request('heartbeat', timeout=max(lease, self.timeout))
            except RemoteIOConnectionError as exc:
                self._unresponsive(f'the server did not answer a heartbeat ({exc})')
                return
            except Exception:
                return

    def _unresponsive(self, why):
        """The server did not answer in time: the connection is lost (its reader sees the end)."""
        if not self._closing and self._broken is None:
            self._lost(why)
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def closed(self):
        return self._closing or self._forked

    @property
    def broken(self):
        """Why the connection was lost, or None while it is up."""
        return self._broken

    # Sending -----------------------------------------------------------------

    def _check(self):
        if self._forked:
            raise RemoteIOFactoryClosed('a remoteio connection cannot be used in a forked child')
        if self._broken is not None:
            raise RemoteIOConnectionError(
                f'the connection to the remoteio server at {self.host}:{self.port} '
                f'was lost: {self._broken}')

    def _send(self, message):
        data = protocol.encode(message)
        with self._send_lock:
            self._check()
            try:
                self._sock.sendall(data)
            except OSError as exc:
                self._lost(f'send failed: {exc.strerror or exc}')
                self._check()

    def post(self, op, **fields):
        """
        Send a request without waiting; a failure is reported to on_error. Waits
        only if the server is :data:`POST_MARK` * :data:`POST_MARKS_AHEAD` posts
        behind; a server that does not catch up within the request timeout
        counts as lost, as one that does not answer a heartbeat.
        """
        if self._closing:
            return  # writes after close are dropped quietly (e.g. at exit)
        fields.update(id=next(self._ids), op=op, quiet=True)
        self._send(fields)
        with self._post_lock:
            self._posted += 1
            if self._posted < POST_MARK:
                return
            self._posted = 0
            try:
                self._marks.append(self.send('heartbeat'))
            except RemoteIOFactoryClosed:
                return            # closing meanwhile: close() waits for what was sent
            if len(self._marks) <= POST_MARKS_AHEAD:
                return
            oldest = self._marks.popleft()
        try:
            self.wait(oldest)
        except RemoteIOConnectionError as exc:
            self._unresponsive(f'the server did not catch up with the requests posted ({exc})')
            self._check()
            raise

    def task(self, **fields):
        """Send a ``task`` request; return its :class:`TaskHandle` once accepted."""
        id = next(self._ids)
        handle = TaskHandle(self, id, fields.get('pin'))
        self._tasks[id] = handle
        try:
            self.request('task', _id=id, **fields)
        except BaseException:
            self._tasks.pop(id, None)
            raise
        return handle

    def request(self, op, timeout=None, _id=None, **fields):
        """Send a request and return its reply; raise the error it carries."""
        return self.wait(self.send(op, _id=_id, **fields), timeout)

    def send(self, op, _id=None, **fields):
        """
        Send a request without waiting for its reply; :meth:`wait` waits for it.
        Several requests can so be in flight at once (e.g. the releases of every
        pin when a factory closes).
        """
        if self._closing and op != 'bye':
            raise RemoteIOFactoryClosed('the remoteio factory has been closed')
        id = next(self._ids) if _id is None else _id
        fields.update(id=id, op=op)
        waiter = _Waiter(id, op)
        self._waiters[id] = waiter
        try:
            self._send(fields)
        except BaseException:
            self._waiters.pop(id, None)
            raise
        return waiter

    def wait(self, waiter, timeout=None):
        """Wait (at most *timeout*, default: the request timeout) for the reply to a :meth:`send`."""
        timeout = self.timeout if timeout is None else timeout
        try:
            if not waiter.wait(max(timeout, 0)):
                self._check()
                raise RemoteIOConnectionError(
                    f'the remoteio server at {self.host}:{self.port} did not answer '
                    f'{waiter.op!r} within {timeout:g} s')
        finally:
            self._waiters.pop(waiter.id, None)
        reply = waiter.reply
        if reply is None:
            self._check()
            raise RemoteIOConnectionError('the connection was closed')
        if reply.get('ok') is False and (reply.get('error') or {}).get('code') in (
                'auth_failed', 'auth_required'):
            raise RemoteIOAuthError(str((reply.get('error') or {}).get('message')))
        if not reply.get('ok'):
            raise exception_for(reply.get('error') or {})
        return reply

    # Receiving ---------------------------------------------------------------

    def _read_loop(self):
        reader = protocol.LineReader(limit=1 << 24)
        reason = 'the server closed the connection'
        try:
            while True:
                try:
                    data = self._sock.recv(65536)
                except socket.timeout as exc:
                    if self._idle_timeouts and exc.errno is None:
                        continue      # Python's timeout (see __init__): nothing to read yet
                    reason = f'receive failed: {exc.strerror or exc}'
                    break
                except OSError as exc:
                    reason = f'receive failed: {exc.strerror or exc}'
                    break
                if not data:
                    break
                if not self._understood and self._first_bytes is None:
                    self._first_bytes = data[:80]
                for line in reader.feed(data):
                    self._dispatch(protocol.decode(line))
                    self._understood = True
                    self._first_bytes = None
                if reader.error is not None:
                    raise reader.error
        except protocol.ProtocolError as exc:
            reason = f'the server sent a bad message: {exc}'
        finally:
            self._lost(reason)

    def _dispatch(self, message):
        if 'push' in message:
            if message['push'] == 'task_end':
                handle = self._tasks.pop(message.get('id'), None)
                if handle is not None:
                    handle._end(message.get('result'), message.get('error'))
            if message['push'] == 'closing':
                # The reason goes into the loss's reason (_lost), and so into the error
                # raised or the warning logged then: not logged twice.
                self._server_reason = message.get('reason')
                log.debug('remoteio server %s:%s is closing the connection: %s',
                          self.host, self.port, message.get('reason'))
            if self.on_push is not None:
                self.on_push(message)
            return
        id = message.get('id')
        waiter = self._waiters.get(id) if id is not None else None
        if waiter is not None:
            waiter.reply = message
            waiter.set()
        elif message.get('ok') is False:
            error = message.get('error') or {}
            exc = exception_for(error)
            if self.on_error is not None:
                self.on_error(message.get('pin'), exc)       # the owner reports it
            else:
                log.warning('remoteio server %s:%s rejected an earlier request on pin %s: %s',
                            self.host, self.port, message.get('pin'), exc)

    def _lost(self, reason):
        if self._server_reason:
            reason = f'{reason}: {self._server_reason}'
        with self._lost_lock:
            if self._broken is None:
                if not self._closing and self.on_lost is not None:
                    # Told before `broken` is set, so the owner knows it is lost (and
                    # starts reconnecting) before any caller sees this connection broken.
                    try:
                        self.on_lost(reason)
                    except Exception:
                        log.exception('handling the loss of the connection failed')
                elif not self._closing and self._established:
                    log.error('lost the remoteio server at %s:%s: %s', self.host, self.port, reason)
                self._broken = reason
        for waiter in list(self._waiters.values()):
            waiter.set()
        for handle in list(self._tasks.values()):
            handle._end('failed', {'code': 'connection_lost', 'type': 'RemoteIOConnectionError',
                                   'message': f'the connection was lost: {reason}'})

    # Closing ---------------------------------------------------------------

    def close(self, graceful=True):
        """
        Close the connection. *graceful*: tell the server first, and wait (at
        most :data:`CLOSE_TIMEOUT`) until it confirms it has carried out every
        request sent before, so that nothing sent is lost. Never raises, never
        hangs; a no-op when already closed.
        """
        if self._closing:
            return
        self._closing = True
        self._stop_heartbeat.set()
        if self._forked:
            return
        if graceful and self._broken is None:
            try:
                self.request('bye', timeout=CLOSE_TIMEOUT)
            except Exception:
                pass
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        if threading.current_thread() is not self._reader:
            self._reader.join(CLOSE_TIMEOUT if graceful else 0.1)
        try:
            self._sock.close()
        except OSError:
            pass
