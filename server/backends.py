"""
Choosing and building the local gpiozero pin factory a pin worker drives.

Flow: server → pin worker → **backend factory** → gpiozero pin. Each worker
process calls :func:`build_factory` once; the server's main process never
opens a backend itself. The backend is always named by the operator (command
line), never by a client, and never taken from ``GPIOZERO_PIN_FACTORY``
(which on a client machine names *us*: the server would connect to itself).
"""

import atexit
import contextlib
import io
import logging
import os
import shutil
import socket
import struct
import tempfile

from remoteio_server.board import describe

log = logging.getLogger('remoteio_server.backends')

#: The backends ``--backend`` accepts, in the order ``auto`` tries the real ones
#: (gpiozero's own order of preference).
AUTO_ORDER = ('lgpio', 'rpigpio', 'pigpio', 'native')
BACKENDS = AUTO_ORDER + ('mock',)

#: What each backend can do, announced to clients in the hello reply.
CAPABILITIES = {
    'lgpio':   {'pwm': True,  'edges': True},
    'rpigpio': {'pwm': True,  'edges': True},
    'pigpio':  {'pwm': True,  'edges': True},
    'native':  {'pwm': False, 'edges': True},
    'mock':    {'pwm': True,  'edges': True},
}

DEFAULT_MOCK_REVISION = 'a02082'


#: The board's description (gpiozero's PiBoardInfo), built in the zygote before it forks
#: the workers (:func:`prepare_board`): each worker's factory takes this one instead of
#: building its own copy, which would be some 0.5 MiB of every worker's private memory.
_BOARD = None


def prepare_board(revision):
    """Build the description of the board *revision* (hex) for the workers to share."""
    global _BOARD
    from gpiozero.pins.pi import PiBoardInfo
    _BOARD = PiBoardInfo.from_revision(int(revision, 16))


def _share_board(factory):
    """Give *factory* the prepared board description, if it is its board and it has none yet."""
    board = _BOARD
    if board is None or getattr(factory, '_info', False) is not None:
        return factory            # (not prepared, or a factory that keeps it elsewhere)
    own = getattr(factory, '_revision', None)          # a MockFactory's
    if own is None or f'{own:x}' == board.revision:
        factory._info = board
    return factory


def build_factory(name, revision=None, auto=False):
    """
    Return a new gpiozero pin factory for backend *name*; see :func:`_build_factory`.
    It describes the board with the description the zygote prepared, when there is one.
    """
    return _share_board(_build_factory(name, revision, auto))


def _build_factory(name, revision=None, auto=False):
    """
    Return a new gpiozero pin factory for backend *name*. *revision* (a hex
    string) only applies to ``mock``; *auto*: the backend was (or is being)
    chosen by ``--backend auto``, which looks for pins on this machine only.
    Raises whatever the backend raises when it cannot run here (ImportError,
    OSError, gpiozero's PinFactoryFallback…).
    """
    if name == 'mock':
        from gpiozero.pins.mock import MockFactory
        from remoteio_server.virtualpin import VirtualPin
        return MockFactory(revision=revision or DEFAULT_MOCK_REVISION, pin_class=VirtualPin)
    if name == 'lgpio':
        from gpiozero.pins.lgpio import LGPIOFactory
        return LGPIOFactory()
    if name == 'rpigpio':
        from gpiozero.pins.rpigpio import RPiGPIOFactory
        return RPiGPIOFactory()
    if name == 'pigpio':
        return _pigpio_factory(local=auto)
    if name == 'native':
        import warnings
        from gpiozero.pins.native import NativeFactory
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # NativePinFactoryFallback: we chose it
            return NativeFactory()
    raise ValueError(f'unknown backend {name!r}; choose one of {", ".join(BACKENDS)}')


#: Where a pin worker builds its factory: ``pigpio`` only when the pin is claimed
#: (see :func:`_pigpio_factory`), the others when the worker starts (a spare).
BUILD_AT_CLAIM = frozenset({'pigpio'})

#: pigpiod's error for "no notification handle left" (PI_NO_HANDLE).
_PI_NO_HANDLE = -24
_PI_CMD_NOIB, _PI_CMD_NC = 99, 21


#: How long the pigpio daemon may take to accept a connection (the pigpio library
#: itself waits for ever).
PIGPIO_CONNECT_TIMEOUT = 5.0


def pigpio_address(local=False):
    """
    The pigpio daemon's (host, port): ``PIGPIO_ADDR``/``PIGPIO_PORT``, as pigpio
    reads them. *local*: for ``--backend auto``, which must find this machine's
    pins, never another machine's (``PIGPIO_ADDR`` may well name the Pi a client
    drives remotely): ``localhost`` whatever ``PIGPIO_ADDR`` says.
    """
    host = 'localhost' if local else os.environ.get('PIGPIO_ADDR') or 'localhost'
    return host, int(os.environ.get('PIGPIO_PORT') or 8888)


def _pigpio_factory(local=False):
    """
    gpiozero's PiGPIOFactory on the daemon at :func:`pigpio_address`.

    The pigpio library prints a 12-line banner on stdout when it cannot connect
    (our stdout carries the server's ready line): it is captured and logged at
    debug level instead. When the daemon refuses a notification handle (it has
    32, and every pigpio connection takes one), pigpio only says it failed to
    connect: that case is told apart and explained.
    """
    from gpiozero.pins.pigpio import PiGPIOFactory
    host, port = pigpio_address(local)
    try:
        # pigpio connects without a timeout: an unreachable daemon would hang us
        socket.create_connection((host, port), timeout=PIGPIO_CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise OSError(f'cannot connect to the pigpio daemon at {host}:{port} ({exc}); is '
                      f'pigpiod running? (sudo systemctl start pigpiod; PIGPIO_ADDR and '
                      f'PIGPIO_PORT choose another daemon with --backend pigpio)') from None
    banner = io.StringIO()
    try:
        with contextlib.redirect_stdout(banner):
            return PiGPIOFactory(host=host, port=port)
    except OSError as exc:
        if _pigpio_out_of_handles(host, port):
            raise OSError(
                f'the pigpio daemon at {host}:{port} has no notification handle left (it has '
                f'32, one per connection, and each claimed pin uses one): claim fewer pins, or '
                f'stop other pigpio clients') from None
        raise OSError(f'the pigpio daemon at {host}:{port} refused us ({exc})') from None
    finally:
        if banner.getvalue().strip():
            log.debug('pigpio said: %s', ' '.join(banner.getvalue().split()))


def _pigpio_out_of_handles(host, port):
    """True if the daemon answers but refuses a notification handle."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(struct.pack('IIII', _PI_CMD_NOIB, 0, 0, 0))
            reply = b''
            while len(reply) < 16:
                chunk = sock.recv(16 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            result = struct.unpack('12si', reply)[1]
            if result >= 0:
                sock.sendall(struct.pack('IIII', _PI_CMD_NC, result, 0, 0))
            return result == _PI_NO_HANDLE
    except OSError:
        return False


def worker_environment():
    """
    The environment for the zygote and the pin workers, and a directory to
    remove when the server ends (or None).

    The lgpio library creates its notification FIFOs in its working directory
    (``LG_WD``, else the current directory, which under systemd's
    ``ProtectSystem=strict`` is a read-only ``/``). Unless ``LG_WD`` is set,
    workers get a private directory: systemd's ``RUNTIME_DIRECTORY`` if the
    unit has one, else a new temporary directory.
    """
    env = dict(os.environ)
    if env.get('LG_WD'):
        return env, None
    runtime = (env.get('RUNTIME_DIRECTORY') or '').split(':')[0]
    if runtime and os.access(runtime, os.W_OK | os.X_OK):
        env['LG_WD'] = runtime
        return env, None
    _sweep_workdirs()
    created = tempfile.mkdtemp(prefix=f'{_WORKDIR_PREFIX}{os.getpid()}-')
    atexit.register(shutil.rmtree, created, True)   # also when start-up fails
    env['LG_WD'] = created
    return env, created


_WORKDIR_PREFIX = 'remoteio-server-'


def _sweep_workdirs():
    """Remove the directories of servers that were killed (their pid is gone)."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(_WORKDIR_PREFIX):
            continue
        pid = name[len(_WORKDIR_PREFIX):].split('-', 1)[0]
        if pid.isdigit() and not os.path.exists(f'/proc/{pid}'):
            path = os.path.join(base, name)
            try:
                if os.stat(path).st_uid == os.getuid():
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def on_raspberry_pi():
    """
    The model if this machine is a Raspberry Pi (device tree or /proc/cpuinfo),
    else None. Files are opened (not tested for existence), so that what the
    device tree says is what gpiozero will read.
    """
    for path in ('/proc/device-tree/model', '/sys/firmware/devicetree/base/model'):
        try:
            with open(path, 'rb') as f:
                model = f.read().rstrip(b'\0').decode('utf-8', 'replace').strip()
        except OSError:
            continue
        return model if model.startswith('Raspberry Pi') else None
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() == 'Model' and 'Raspberry Pi' in value:
                    return value.strip()
    except OSError:
        pass
    return None


class NoBackend(RuntimeError):
    """No real backend works on a Raspberry Pi: serving simulated pins would mislead."""


def probe(name, revision=None):
    """
    Resolve *name* (``auto`` or a backend) to a working backend. Returns
    ``(backend, board, reasons)`` where *board* describes the board
    (:func:`.board.describe`: the server's process has no gpiozero) and
    *reasons* lists why the backends tried before it did not work. Builds and
    closes one factory per backend tried; meant to run in a throw-away process.
    """
    candidates = AUTO_ORDER if name == 'auto' else (name,)
    reasons = []
    for candidate in candidates:
        try:
            factory = build_factory(candidate, revision, auto=name == 'auto')
            try:
                board = describe(factory.board_info)
            finally:
                factory.close()
        except Exception as exc:  # any failure means: not usable here
            reasons.append(f'{candidate}: {type(exc).__name__}: {exc}')
            continue
        return candidate, board, reasons
    if name != 'auto':
        raise RuntimeError(f'backend {name} does not work on this machine: {reasons[0]}')
    model = on_raspberry_pi()
    if model is not None:
        raise NoBackend(
            f'this is a {model}, but no GPIO backend works here, so no pin could be driven:\n  '
            + '\n  '.join(reasons) +
            '\nInstall one (on Raspberry Pi OS: sudo apt install python3-lgpio, and a venv made '
            'with --system-site-packages; or pip install lgpio), make sure this user may open '
            '/dev/gpiochip* (group gpio) and that lgpio may write its working directory '
            '(LG_WD). To run on simulated pins anyway, say --backend mock.')
    factory = build_factory('mock', revision)
    return 'mock', describe(factory.board_info), reasons
