"""
The browser dashboard (``remoteio-server --http PORT``, off by default): a
page that shows the board's header, every pin live, a timeline of each pin's
transitions, the clients and the server; on the mock backend, controls for
its inputs and simulated parts.

Flow: browser → HTTP (the page; ``/events``, a server-sent event stream;
``/api/...``) → **dashboard** → observer hub (:mod:`.observers`: the same
snapshot and ``changes`` an ``observe`` connection gets) and, for the mock
controls, the pin table (``drive``, ``part``).

Served by the standard library's threading HTTP server (no dependency: the
server stays small enough for a Pi Zero), on its own threads: the pins'
timing never waits for it, and a browser that stops reading is one more slow
observer (its stream is coalesced, not queued). The page is one file with
its script and style inline: nothing from the internet.

Access follows the server's rules. Without a token (protected mode) the
dashboard answers this machine only, with full rights. With tokens, it
answers whoever ``--allow-hosts`` lets in, serves the page (which holds no
data) to anyone, and everything else only after a login with a token
(``POST /api/login``; a random session cookie, HttpOnly, SameSite=Strict,
then stands for the token): the page then gets what that token allows (a
read-only token sees, and changes nothing). The token crosses the network at
that login: serve the dashboard over TLS (``--tls-cert``) beyond a trusted
LAN. The controls work on the mock backend only, with a token that may
claim the pin (or, for a part, its pins).
"""

import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from remoteio_server.pintable import InternalReply

log = logging.getLogger('remoteio_server.dashboard')

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dashboard.html')
#: Sessions (logged-in browsers) kept at most; the oldest goes first.
MAX_SESSIONS = 256
#: A stream that has had nothing to send for this long gets a comment (keeps proxies awake).
KEEPALIVE = 15.0
#: Largest request body accepted (bytes).
MAX_BODY = 4096
#: Connections served at once (each has a thread); more are closed at once.
MAX_CONNECTIONS = 100
#: Event streams (open pages) at once, of those: the rest stay for requests.
MAX_STREAMS = 64
#: Seconds a connection may take to send its whole request (TLS handshake included), and
#: a stream to take one write.
REQUEST_TIMEOUT = 5.0

FULL_ACCESS = None      # what a browser may do on a server without tokens (this machine only)


class Stream:
    """One browser's event stream: a slow observer for the hub (see :mod:`.observers`)."""

    def __init__(self):
        self.channel = self              # (the hub posts to session.channel)
        self.closed = False
        self.queued = 0
        self._queue = queue.Queue()
        self._lock = threading.Lock()

    def post(self, data):
        with self._lock:
            self.queued += len(data)
        self._queue.put(data)

    def next(self, timeout):
        try:
            data = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._lock:
            self.queued -= len(data)
        return data


class Dashboard:
    """The dashboard's HTTP server, for one remoteio :class:`~.daemon.Server`."""

    def __init__(self, server, host, port, tls=None):
        self.server = server
        self.sessions = {}               # cookie -> access.Token
        self._lock = threading.Lock()
        cls = _IPv6Server if ':' in host else _Server
        self.httpd = cls((host, port), _Handler)
        self.httpd.dashboard = self
        # (the handshake is done by each connection's thread, within its deadline: a TLS
        # listening socket would do it in accept(), where one silent peer stalls everyone)
        self.httpd.tls = tls
        self.tls = tls is not None
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.port = self.httpd.server_address[1]
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        name='remoteio-dashboard', daemon=True)
        self._thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    # Access ----------------------------------------------------------------------

    def refusal(self, peer, host_header=None, origin=None):
        """
        Why a browser at *peer* may not use the dashboard at all, or None. In
        protected mode (no token: full rights for this machine) the page must
        also be asked for by a loopback name: a page of another site whose name
        a browser on this machine was made to resolve to 127.0.0.1 (DNS
        rebinding) is refused, as is a request whose Origin is another site.
        """
        why = self.server.access.admit(peer)
        if why or not self.server.access.protected:
            return why
        for value in (host_header, origin):
            if value is None:
                continue
            name = value.split('://', 1)[-1].rsplit(':', 1)[0] if not value.endswith(']') \
                else value.split('://', 1)[-1]
            name = name.strip('[]').lower()
            if name not in ('localhost', '127.0.0.1', '::1') and not name.startswith('127.'):
                return (f'protected mode: open the dashboard as http://127.0.0.1:{self.port}/ '
                        f'or http://localhost:{self.port}/ (not as {value[:60]!r})')
        return None

    def login(self, secret):
        """The cookie for the token whose secret this is, or None."""
        secret = str(secret).encode('utf-8', 'replace')
        found = None
        for token in self.server.access.tokens:      # each compared, every time
            if secrets.compare_digest(token.secret, secret):
                found = token
        if found is None:
            return None, None
        cookie = secrets.token_urlsafe(24)
        with self._lock:
            if len(self.sessions) >= MAX_SESSIONS:
                # the oldest of this token's own, if it has any: logging in again and again
                # must not log out the other tokens' pages
                mine = [c for c, t in self.sessions.items() if t is found]
                self.sessions.pop(mine[0] if mine else next(iter(self.sessions)))
            self.sessions[cookie] = found
        return cookie, found

    def token_of(self, cookie):
        """The token a request carries: FULL_ACCESS without tokens; False when it has none."""
        if self.server.access.protected:
            return FULL_ACCESS
        with self._lock:
            return self.sessions.get(cookie, False)

    # What it serves ----------------------------------------------------------------

    def info(self, token):
        server = self.server
        header, rows = server.board.main_header()

        def cell(pin):
            if pin is None:
                return None
            return {'number': pin.number, 'name': pin.name, 'gpio': pin.gpio}
        return {
            'header': header,
            'rows': [[cell(left), cell(right)] for left, right in rows],
            'backend': server.backend,
            'token': None if token is FULL_ACCESS else token.name,
            'read_only': False if token is FULL_ACCESS else token.read_only,
            'pins': None if token is FULL_ACCESS or token.pins is None else sorted(token.pins),
            'controls': server.backend == 'mock' and (token is FULL_ACCESS or not token.read_only),
            'login': not server.access.protected,
        }

    def may_change(self, token, gpios):
        """None if *token* may drive every GPIO of *gpios*, else why not."""
        if self.server.backend != 'mock':
            return 'the controls work on the mock backend only'
        for gpio in [None, *gpios]:        # (None: may it change anything at all)
            why = self.server.access.refusal(token, gpio, 'drive')
            if why:
                return why
        return None

    def drive(self, token, body):
        gpio, state = body.get('pin'), body.get('state')
        if type(gpio) is not int or gpio not in self.server.registry.gpios:
            return 400, {'error': 'pin must be a GPIO of the board'}
        if state is not None and (type(state) is not int or state not in (0, 1)):
            return 400, {'error': 'state must be 0, 1 or null'}
        why = self.may_change(token, [gpio])
        if why:
            return 403, {'error': why}
        reply = InternalReply()
        self.server.registry.drive(gpio, state, reply)
        try:
            reply.wait(5.0)
        except Exception as exc:
            return 409, {'error': str(exc)}
        return 200, {}

    def part(self, token, body):
        circuit = self.server.circuit
        name, value = body.get('name'), body.get('value')
        parts = circuit.parts if circuit is not None else {}
        if name not in parts:
            return 400, {'error': f'no simulated part named {str(name)[:40]!r}'}
        part = parts[name]
        gpios = list(part.gpios.values())
        if part.kind == 'pot':
            from remoteio_server import spi
            gpios.append(spi.MOCK_SELECTS[part.adc])
        why = self.may_change(token, gpios)
        if why:
            return 403, {'error': why}
        try:
            part.parse(value)
        except (TypeError, ValueError) as exc:
            return 400, {'error': str(exc)}
        reply = InternalReply()
        self.server.registry.set_part(name, value, reply)
        reply.wait(5.0)
        return 200, {}

    def stream(self, handler, history=100):
        """Send the snapshot, then the hub's changes, until the browser goes."""
        hub = self.server.registry.hub
        stream = Stream()
        observer = hub.add(stream)
        handler.request.settimeout(REQUEST_TIMEOUT)     # a browser that stops reading: ended
        try:
            status = self.server.status(history)
            handler.wfile.write(b'event: snapshot\ndata: ' + json.dumps(status).encode() + b'\n\n')
            handler.wfile.flush()
            hub.started(observer)
            while not self.server.stopping:
                data = stream.next(KEEPALIVE)
                if data is None:
                    handler.wfile.write(b': keepalive\n\n')
                else:
                    handler.wfile.write(b'event: changes\ndata: ' + data.rstrip(b'\n') + b'\n\n')
                handler.wfile.flush()
        except (OSError, ValueError):
            pass                           # the browser went away
        finally:
            stream.closed = True
            hub.remove(stream)


class _Deadlines:
    """One thread that shuts down the connections whose request is not in by its deadline."""

    def __init__(self):
        self._due = {}                   # id(handler) -> (deadline, socket)
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name='remoteio-dashboard-deadlines',
                         daemon=True).start()

    def add(self, key, sock):
        with self._lock:
            self._due[key] = (time.monotonic() + REQUEST_TIMEOUT, sock)

    def remove(self, key):
        with self._lock:
            self._due.pop(key, None)

    def _run(self):
        while True:
            time.sleep(0.25)
            now = time.monotonic()
            with self._lock:
                late = [k for k, (when, _) in self._due.items() if when <= now]
                socks = [self._due.pop(k)[1] for k in late]
            for sock in socks:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class _Server(ThreadingHTTPServer):
    """Threads for at most MAX_CONNECTIONS connections: a flood costs a refusal each, no thread."""
    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.deadlines = _Deadlines()

    tls = None

    def get_request(self):
        request, address = self.socket.accept()
        if self.tls is not None:
            request = self.tls.wrap_socket(request, server_side=True,
                                           do_handshake_on_connect=False)
        return request, address

    def handle_error(self, request, client_address):
        log.debug('dashboard: a connection from %s failed', client_address[0], exc_info=True)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            log.debug('dashboard: %s refused: %d connections already', client_address[0],
                      MAX_CONNECTIONS)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server_version = 'remoteio-dashboard'
    protocol_version = 'HTTP/1.1'
    timeout = REQUEST_TIMEOUT          # a connection that sends nothing is closed

    def setup(self):
        # One deadline for the whole request (a peer sending a byte a second must not
        # hold a connection): past it, the socket is shut down under the reader.
        self.server.deadlines.add(id(self), self.request)
        self.request.settimeout(REQUEST_TIMEOUT)
        if hasattr(self.request, 'do_handshake'):
            self.request.do_handshake()
        super().setup()

    def _request_read(self):
        """The request is in: its deadline is over."""
        self.server.deadlines.remove(id(self))

    def finish(self):
        self.server.deadlines.remove(id(self))
        super().finish()

    def handle(self):
        # A peer that may not use the dashboard is refused before its request is read.
        why = self.dashboard.server.access.admit(self.client_address[0])
        if why:
            self._request_read()
            self.close_connection = True
            try:
                body = json.dumps({'error': why}).encode()
                self.wfile.write(b'HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n'
                                 b'Connection: close\r\nContent-Length: ' +
                                 str(len(body)).encode() + b'\r\n\r\n' + body)
            except OSError:
                pass
            return
        self.handle_one_request()      # one request per connection (no keep-alive)

    def log_message(self, format, *args):
        log.debug('%s %s', self.client_address[0], format % args)

    @property
    def dashboard(self):
        return self.server.dashboard

    def _cookie(self):
        for part in self.headers.get('Cookie', '').split(';'):
            name, _, value = part.strip().partition('=')
            if name == 'remoteio':
                return value
        return None

    def _send(self, code, body, content_type='application/json', headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(data)))
        self.send_header('Cache-Control', 'no-store')
        self.send_header('X-Content-Type-Options', 'nosniff')
        self.send_header('Connection', 'close')
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _refused(self):
        self.close_connection = True
        why = self.dashboard.refusal(self.client_address[0], self.headers.get('Host'),
                                     self.headers.get('Origin'))
        if why:
            self._send(403, {'error': why})
            return True
        return False

    def _token(self):
        token = self.dashboard.token_of(self._cookie())
        if token is False:
            self._send(401, {'error': 'log in with a token first', 'login': True})
        return token

    def do_GET(self):
        self._request_read()
        if self._refused():
            return
        path = self.path.split('?', 1)[0]
        if path in ('/', '/index.html'):
            with open(PAGE, 'rb') as page:
                self._send(200, page.read(), 'text/html; charset=utf-8', [
                    ('Content-Security-Policy', "default-src 'self'; script-src 'unsafe-inline'; "
                                                "style-src 'unsafe-inline'; img-src data:")])
            return
        token = self._token()
        if token is False:
            return
        if path == '/api/info':
            self._send(200, self.dashboard.info(token))
        elif path == '/events':
            if not self.dashboard.streams.acquire(blocking=False):
                self._send(503, {'error': f'{MAX_STREAMS} pages are open already'})
                return
            try:
                self.send_response(200)
                self.send_header('Content-Type', 'text/event-stream')
                self.send_header('Cache-Control', 'no-store')
                self.send_header('Connection', 'close')
                self.end_headers()
                self.dashboard.stream(self)
            finally:
                self.dashboard.streams.release()
        else:
            self._send(404, {'error': 'no such page'})

    def do_POST(self):
        if self._refused():
            return
        try:
            length = int(self.headers.get('Content-Length') or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY or self.headers.get('Content-Type', '').split(';')[0] \
                != 'application/json':
            self._send(400, {'error': f'a JSON body of at most {MAX_BODY} bytes'})
            return
        try:
            raw = self.rfile.read(length)
            self._request_read()
            body = json.loads(raw or b'{}')
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            self._send(400, {'error': 'the body is not a JSON object'})
            return
        path = self.path.split('?', 1)[0]
        if path == '/api/login':
            cookie, token = self.dashboard.login(body.get('token', ''))
            if cookie is None:
                time.sleep(0.5)            # (a guess costs the guesser)
                self._send(403, {'error': 'wrong token'})
                self.dashboard.server.warn_limited(
                    'dashboard-login', 'dashboard: a login from %s with a wrong token',
                    self.client_address[0])
                return
            log.info('dashboard: %s logged in with token %s', self.client_address[0],
                     token.describe())
            secure = '; Secure' if self.dashboard.tls else ''
            self._send(200, {'token': token.name}, headers=[
                ('Set-Cookie', f'remoteio={cookie}; HttpOnly; SameSite=Strict; Path=/{secure}')])
            return
        token = self._token()
        if token is False:
            return
        if path == '/api/drive':
            self._send(*self.dashboard.drive(token, body))
        elif path == '/api/part':
            self._send(*self.dashboard.part(token, body))
        else:
            self._send(404, {'error': 'no such request'})

