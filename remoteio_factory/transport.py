"""
TLS under the protocol, for both halves.

Flow: connection (client) / session (server) → **transport** → TCP.

Both ends read a connection on one thread and write to it from several
(pipelined writes, replies from several pin workers). A plain socket allows
that; an SSL connection does not (OpenSSL lets one thread use it at a time).
So :class:`TLSTransport` gives the SSL socket to a pump thread of its own,
which does all of its reading and writing; the other threads hand it bytes
to send and take the bytes it has read. It offers the few socket methods the
protocol code uses (``recv``, ``sendall``, ``settimeout``, ``shutdown``,
``close``), so a plain socket and a TLS transport are used alike.

It also holds the one platform-specific socket option both halves set: the
send timeout (:func:`set_send_timeout`), whose value is encoded differently
on Linux, macOS and Windows.
"""

import errno
import select
import socket
import ssl
import struct
import sys
import threading
from collections import deque

#: Bytes a writer may queue before it waits for the pump (back-pressure).
SEND_BUFFER = 1 << 20
#: How long a writer waits for room when no timeout is set (a peer that stopped reading).
SEND_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0


# How SO_SNDTIMEO/SO_RCVTIMEO take their value, by platform (chosen once, at import;
# tests force another by patching it):
#  - 'timeval' (Linux, the BSDs): struct timeval {long tv_sec; long tv_usec;}.
#  - 'darwin' (macOS): struct timeval {time_t tv_sec; int32 tv_usec;} padded to the
#    alignment of time_t (16 bytes on 64-bit macOS).
#  - 'win32' (Windows): a DWORD of milliseconds, not a timeval.
if sys.platform == 'win32':
    SEND_TIMEOUT_STYLE = 'win32'
elif sys.platform == 'darwin':
    SEND_TIMEOUT_STYLE = 'darwin'
else:
    SEND_TIMEOUT_STYLE = 'timeval'

_TIMEVAL_FORMAT = {'timeval': '@ll', 'darwin': '@li0l'}


def _timeval(seconds, style):
    return struct.pack(_TIMEVAL_FORMAT[style], int(seconds), int((seconds % 1) * 1e6))


def timeval(seconds):
    """
    *seconds* as this platform's ``struct timeval``, for SO_SNDTIMEO/SO_RCVTIMEO
    on POSIX systems (Linux: two longs, as before; macOS: a long and an int32).
    Windows takes milliseconds for those options instead, not a timeval: use
    :func:`set_send_timeout`, which works on every platform.
    """
    return _timeval(seconds, 'timeval' if SEND_TIMEOUT_STYLE == 'win32' else SEND_TIMEOUT_STYLE)


def send_timeout_value(seconds, style=None):
    """The value of SO_SNDTIMEO (or SO_RCVTIMEO) for *seconds* on this platform."""
    style = style or SEND_TIMEOUT_STYLE
    if style == 'win32':
        milliseconds = int(round(seconds * 1000))
        # 0 would mean "no timeout": a positive timeout below 1 ms is 1 ms
        return max(milliseconds, 1) if seconds > 0 else 0
    return _timeval(seconds, style)


def set_send_timeout(sock, seconds):
    """
    Make a blocking send on *sock* fail after *seconds* without progress
    (SO_SNDTIMEO), on Linux, macOS and Windows alike. Returns True if the
    option is set; False if this platform cannot set it (the caller then bounds
    its sends another way; see :class:`remoteio_factory.connection.Connection`).
    """
    option = getattr(socket, 'SO_SNDTIMEO', None)
    if option is None:      # not in this platform's socket module
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, send_timeout_value(seconds))
        return True
    except OSError as exc:
        if (SEND_TIMEOUT_STYLE == 'timeval' and exc.errno == errno.EINVAL
                and struct.calcsize('@l') == 4):
            # A 32-bit Linux whose C library has a 64-bit time_t (Debian and Raspberry
            # Pi OS from trixie on armhf): SO_SNDTIMEO is SO_SNDTIMEO_NEW there and takes
            # two 64-bit integers.
            try:
                sock.setsockopt(socket.SOL_SOCKET, option,
                                struct.pack('@qq', int(seconds), int((seconds % 1) * 1e6)))
                return True
            except OSError:
                pass
        return False


def client_context(cafile=None, check_hostname=True):
    """An SSL context for a client: the server's certificate checked against *cafile*."""
    context = ssl.create_default_context(cafile=cafile)
    context.check_hostname = check_hostname
    return context


def server_context(certfile, keyfile=None):
    """An SSL context for the server, from its certificate chain and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    return context


def wrap(context, sock, server_side, server_hostname=None, timeout=HANDSHAKE_TIMEOUT):
    """Do the TLS handshake on *sock* (bounded by *timeout*) and return a :class:`TLSTransport`."""
    sock.settimeout(timeout)
    tls = context.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname)
    return TLSTransport(tls)


class TLSTransport:
    """An SSL socket driven by a pump thread; see the module docstring."""

    def __init__(self, tls):
        self._tls = tls
        tls.setblocking(False)
        self._incoming = deque()
        self._outgoing = bytearray()
        self._lock = threading.Lock()
        self._readable = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        self._timeout = None
        self._eof = False
        self._error = None
        self._shut_write = False
        self._closed = False
        # The pump's wake-up: a socket pair, not a pipe, because Windows' select()
        # takes sockets only (and os.set_blocking() on a pipe needs Python 3.12 there).
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._wake_socks = (self._wake_r, self._wake_w)
        self._pump = threading.Thread(target=self._run, name='remoteio-tls', daemon=True)
        self._pump.start()

    # The socket methods the protocol code uses -------------------------------

    def settimeout(self, timeout):
        self._timeout = timeout

    def recv(self, size):
        with self._lock:
            if not self._readable.wait_for(
                    lambda: self._incoming or self._eof or self._error, self._timeout):
                raise socket.timeout('timed out')
            if self._incoming:
                chunk = self._incoming.popleft()
                if len(chunk) > size:
                    self._incoming.appendleft(chunk[size:])
                    chunk = chunk[:size]
                return chunk
            if self._eof:
                return b''
            raise self._error

    def sendall(self, data):
        with self._lock:
            if not self._drained.wait_for(
                    lambda: len(self._outgoing) < SEND_BUFFER or self._error or self._closed,
                    self._timeout if self._timeout is not None else SEND_TIMEOUT):
                raise socket.timeout('timed out')
            if self._error is not None:
                raise self._error
            if self._closed or self._shut_write:
                raise OSError('the TLS connection is closed')
            self._outgoing += data
        self._wake()

    def shutdown(self, how):
        with self._lock:
            if self._closed:
                return
            if how in (socket.SHUT_WR, socket.SHUT_RDWR):
                self._shut_write = True
            if how in (socket.SHUT_RD, socket.SHUT_RDWR):
                self._eof = True
                self._readable.notify_all()
        self._wake()

    def close(self):
        """Send what is queued (for at most a few seconds), then close."""
        with self._lock:
            if self._closed:
                return
            self._drained.wait_for(lambda: not self._outgoing or self._error, 2.0)
            self._closed = True
            self._eof = True
            self._readable.notify_all()
            self._drained.notify_all()
        self._wake()
        if threading.current_thread() is not self._pump:
            self._pump.join(2)
        if not self._pump.is_alive():
            self._close_wake_socks()

    def _close_wake_socks(self):
        # Only once the pump has ended: it may still be selecting on them.
        with self._lock:
            socks, self._wake_socks = self._wake_socks, None
        if socks is not None:
            for sock in socks:
                sock.close()

    # The pump ------------------------------------------------------------------

    def _wake(self):
        with self._lock:
            if self._wake_socks is None:
                return
            try:
                self._wake_w.send(b'x')
            except OSError:       # full: the pump is awake already
                pass

    def _run(self):
        tls = self._tls
        try:
            while True:
                with self._lock:
                    if self._closed:
                        break
                    want_write = bool(self._outgoing)
                    shut_now = self._shut_write and not self._outgoing
                if shut_now:
                    try:
                        # the TCP half-close only: SSLSocket.shutdown would drop TLS itself
                        socket.socket.shutdown(tls, socket.SHUT_WR)
                    except OSError:
                        pass
                    with self._lock:
                        self._shut_write = False
                        self._outgoing.clear()
                if not tls.pending():
                    readable, writable, _ = select.select(
                        [tls, self._wake_r], [tls] if want_write else [], [])
                    if self._wake_r in readable:
                        self._wake_r.recv(4096)
                else:
                    readable, writable = [tls], []
                if tls in readable:
                    self._read_some(tls)
                if writable or want_write:
                    self._write_some(tls)
        except _Finished:
            with self._lock:
                self._error = OSError('the peer closed the TLS connection')
                self._readable.notify_all()
                self._drained.notify_all()
        except (OSError, ValueError) as exc:
            with self._lock:
                self._error = exc if isinstance(exc, OSError) else OSError(str(exc))
                self._readable.notify_all()
                self._drained.notify_all()
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def _read_some(self, tls):
        while True:
            try:
                data = tls.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            with self._lock:
                if not data:
                    self._eof = True
                else:
                    self._incoming.append(data)
                self._readable.notify_all()
            if not data:
                raise _Finished()

    def _write_some(self, tls):
        with self._lock:
            chunk = bytes(self._outgoing[:65536])
        if not chunk:
            return
        try:
            sent = tls.send(chunk)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        with self._lock:
            del self._outgoing[:sent]
            self._drained.notify_all()


class _Finished(OSError):
    """The peer closed the TLS connection (not an error for readers: they see EOF)."""
