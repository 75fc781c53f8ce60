"""
The server: listening socket, accept loop, the connected sessions, and an
orderly shutdown.

Flow: client → wire → **server** → session → pin worker → gpiozero pin.

:class:`Server` resolves the backend (in a throw-away process), starts the
spawner of pin workers, listens, and starts one :class:`Session` thread per
connection. On SIGTERM or SIGINT it stops accepting, soft-closes every pin
and exits within a bounded time.
"""

import logging
import shutil
import signal
import socket
import threading
import time

from gpiozero.pins.pi import PiBoardInfo

from remoteio_factory import protocol, transport
from remoteio_factory.protocol import MODES
from remoteio_factory._version import __version__
from remoteio_server import backends
from remoteio_server.access import AccessPolicy
from remoteio_server.registry import Registry
from remoteio_server.session import SEND_TIMEOUT, Session
from remoteio_server.spawner import Spawner

log = logging.getLogger('remoteio_server')

#: Seconds a connection may stay silent before it counts as gone (clients
#: send a heartbeat every third of it).
DEFAULT_LEASE = 3.0
#: Refused connections told why at the same time; more are just closed.
MAX_REFUSALS = 16



def board_gpios(board_info):
    """Return ``{gpio_number: 'GPIO17', ...}`` for every GPIO on the board's headers."""
    gpios = {}
    for header in board_info.headers.values():
        for info in header.pins.values():
            if 'gpio' in info.interfaces:
                gpios[int(info.name[4:])] = info.name
    return gpios


class Server:
    """A remoteio server; see the module docstring and :func:`run_server`."""

    def __init__(self, host='0.0.0.0', port=protocol.DEFAULT_PORT, backend='auto',
                 mode='wait', revision=None, max_message=protocol.MAX_MESSAGE,
                 max_clients=64, max_pins=64, spares=2, shutdown_timeout=10.0, mock_wires=(),
                 access=None, lease=DEFAULT_LEASE, tls=None):
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
        self.mock_wires = list(mock_wires)
        self.access = access or AccessPolicy()
        self.lease = lease
        self.tls = tls                # an ssl.SSLContext (server side), or None
        self.host = host
        self.port = port
        self.requested_backend = backend
        self.mode = mode
        self.revision = revision
        self.max_message = max_message
        self.max_clients = max_clients
        self.max_pins = max_pins
        self.spares = spares
        self.shutdown_timeout = shutdown_timeout
        self.sessions = {}
        self._next_session = 1
        self._lock = threading.Lock()
        self._listener = None
        self._stopping = threading.Event()
        self._refusals = threading.BoundedSemaphore(MAX_REFUSALS)   # explained at once
        self.started = None
        self._workdir = None          # a directory made for lgpio's FIFOs

    # Start-up ----------------------------------------------------------------

    def start(self):
        """Resolve the backend, start the spawner and listen. Returns the bound port."""
        env, self._workdir = backends.worker_environment()
        self.spawner = Spawner(None, self.revision, self.spares, env=env)
        try:
            backend, revision, reasons = self.spawner.probe(self.requested_backend)
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
        self.board_info = PiBoardInfo.from_revision(int(revision, 16))
        gpios = board_gpios(self.board_info)
        for out, into in self.mock_wires:
            for gpio in (out, into):
                if gpio not in gpios:
                    self._close_spawner()
                    raise ValueError(f'--mock-wire: GPIO{gpio} is not a GPIO of this board')
        self.spawner.use(backend, revision if backend == 'mock' else None)
        self.registry = Registry(self.spawner, gpios, self.mock_wires)
        self._listener = self._listen()
        self.port = self._listener.getsockname()[1]
        self.spawner.start()
        self.started = time.monotonic()
        return self.port

    def _listen(self):
        infos = socket.getaddrinfo(self.host or None, self.port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        return socket.create_server(address, family=family, backlog=64)

    # Serving -----------------------------------------------------------------

    def serve_forever(self):
        """Accept connections until :meth:`stop` is called."""
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            self._accept(sock, peer)

    def _accept(self, sock, peer):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.settimeout(None)
        # A blocked send (a client that stopped reading) must not stall a pin forever.
        transport.set_send_timeout(sock, SEND_TIMEOUT)
        peer_text = _peer_text(peer)
        refusal = self.access.admit(peer[0])
        session = None
        with self._lock:
            if refusal is None and len(self.sessions) >= self.max_clients:
                refusal = f'the server has its maximum of {self.max_clients} clients'
            if refusal is None:
                session = Session(self, sock, peer_text, self._next_session)
                self._next_session += 1
                self.sessions[session.id] = session
        if session is None:
            log.warning('refused %s: %s', peer_text, refusal)
            if self._refusals.acquire(blocking=False):
                threading.Thread(target=self._refuse, args=(sock, refusal), daemon=True,
                                 name='remoteio-refuse').start()
            else:
                sock.close()        # a flood: no thread, no explanation
            return
        log.debug('client %s connected', session.describe())
        threading.Thread(target=session.run, name=f'remoteio-session-{session.id}',
                         daemon=True).start()

    def _refuse(self, sock, reason):
        """Tell a refused peer why (over TLS if the server speaks it), then close."""
        try:
            self._explain(sock, reason)
        finally:
            self._refusals.release()

    def _explain(self, sock, reason):
        try:
            if self.tls is not None:
                sock = transport.wrap(self.tls, sock, server_side=True, timeout=5.0)
            sock.settimeout(5.0)
            sock.sendall(protocol.encode({'push': 'closing', 'reason': reason}))
            sock.shutdown(socket.SHUT_WR)
        except (OSError, ValueError):
            pass
        finally:
            sock.close()

    def session_ended(self, session, reason):
        with self._lock:
            self.sessions.pop(session.id, None)
        # a client that drove pins is worth a line; a status query is not
        level = logging.INFO if session.claimed_any else logging.DEBUG
        log.log(level, 'client %s disconnected: %s', session.describe(), reason)

    # Information ---------------------------------------------------------------

    def board_dict(self):
        info = self.board_info
        return {
            'revision': info.revision,
            'model': info.model,
            'pcb_revision': info.pcb_revision,
            'released': info.released,
            'soc': info.soc,
            'manufacturer': info.manufacturer,
            'memory': info.memory,
        }

    def hello_info(self, session):
        return {
            'protocol': protocol.PROTOCOL_VERSION,
            'server': 'remoteio-server',
            'version': __version__,
            'backend': self.backend,
            'revision': self.board_info.revision,
            'mode': session.mode,
            'capabilities': self.capabilities,
            'session': session.id,
            'monotonic': time.monotonic(),
            'max_message': self.max_message,
            'lease': self.lease,
            'tls': self.tls is not None,
        }

    def status(self, history=20):
        with self._lock:
            sessions = list(self.sessions.values())
        pins = self.registry.snapshot(history)
        return {
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
                 'connected': s.connected, 'pins': sorted(s.pins)}
                for s in sessions
            ],
            'pins': pins,
        }

    # Stopping ------------------------------------------------------------------

    @property
    def stopping(self):
        return self._stopping.is_set()

    def stop(self):
        """Stop accepting, soft-close every connection's pins, stop the workers."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            sessions = list(self.sessions.values())
        # Outputs go off now, not when their tasks would have ended (a 60 s impulse
        # would outlast systemd's stop timeout, and a killed worker switches nothing off).
        self.registry.halt_all()
        for session in sessions:
            session.send({'push': 'closing', 'reason': 'the server is shutting down'})
            for pin in list(session.pins.values()):
                pin.release()
        if not self.registry.wait_all_freed(self.shutdown_timeout):
            log.error('some pins were not released within %s s: killing their workers',
                      self.shutdown_timeout)
            self.registry.kill_all()
        for session in sessions:
            session.end_reason = 'the server shut down'
            session._abort()
        self._close_spawner()

    def _close_spawner(self):
        self.spawner.close()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _peer_text(peer):
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = peer[0]
        return f'[{host}]:{peer[1]}' if ':' in host else f'{host}:{peer[1]}'
    return str(peer)


def run_server(port=protocol.DEFAULT_PORT, mode='wait', host='0.0.0.0', backend='auto',
               revision=None, ready=None, **options):
    """
    Run a remoteio server until SIGTERM or SIGINT (Ctrl+C), as the seed's
    ``run_server`` did::

        from remoteio_server import run_server

        if __name__ == '__main__':
            run_server(port=8509, mode='wait')

    *ready*, if given, is called with the :class:`Server` once it listens.
    """
    server = Server(host=host, port=port, backend=backend, mode=mode,
                    revision=revision, **options)
    server.start()

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        log.info('remoteio-server %s listening on %s:%d (backend %s, board %s, mode %s)',
                 __version__, server.host, server.port, server.backend,
                 server.board_info.revision, server.mode)
        if server.access.protected:
            log.info('protected mode: no token, so only clients on this machine are served '
                     '(see --token-file)')
        if ready is not None:
            ready(server)
        server.serve_forever()
    except KeyboardInterrupt:
        log.info('stopping: releasing every pin')
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
    return server

