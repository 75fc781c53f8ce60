"""
Choosing and building the local gpiozero pin factory a pin worker drives.

Flow: server → pin worker → **backend factory** → gpiozero pin. Each worker
process calls :func:`build_factory` once; the server's main process never
opens a backend itself. The backend is always named by the operator (command
line), never by a client, and never taken from ``GPIOZERO_PIN_FACTORY``
(which on a client machine names *us*: the server would connect to itself).
"""

import logging

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


def build_factory(name, revision=None):
    """
    Return a new gpiozero pin factory for backend *name*. *revision* (a hex
    string) only applies to ``mock``. Raises whatever the backend raises when
    it cannot run here (ImportError, OSError, gpiozero's PinFactoryFallback…).
    """
    if name == 'mock':
        from gpiozero.pins.mock import MockFactory, MockPWMPin
        return MockFactory(revision=revision or DEFAULT_MOCK_REVISION, pin_class=MockPWMPin)
    if name == 'lgpio':
        from gpiozero.pins.lgpio import LGPIOFactory
        return LGPIOFactory()
    if name == 'rpigpio':
        from gpiozero.pins.rpigpio import RPiGPIOFactory
        return RPiGPIOFactory()
    if name == 'pigpio':
        from gpiozero.pins.pigpio import PiGPIOFactory
        factory = PiGPIOFactory(host='localhost')
        return factory
    if name == 'native':
        import warnings
        from gpiozero.pins.native import NativeFactory
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # NativePinFactoryFallback: we chose it
            return NativeFactory()
    raise ValueError(f'unknown backend {name!r}; choose one of {", ".join(BACKENDS)}')


def probe(name, revision=None):
    """
    Resolve *name* (``auto`` or a backend) to a working backend. Returns
    ``(backend, revision_hex, reasons)`` where *reasons* lists why the
    backends tried before it did not work. Builds and closes one factory per
    backend tried; meant to run in a throw-away process.
    """
    candidates = AUTO_ORDER if name == 'auto' else (name,)
    reasons = []
    for candidate in candidates:
        try:
            factory = build_factory(candidate, revision)
            try:
                board_revision = factory.board_info.revision
            finally:
                factory.close()
        except Exception as exc:  # any failure means: not usable here
            reasons.append(f'{candidate}: {type(exc).__name__}: {exc}')
            continue
        return candidate, board_revision, reasons
    if name != 'auto':
        raise RuntimeError(f'backend {name} does not work on this machine: {reasons[0]}')
    factory = build_factory('mock', revision)
    return 'mock', factory.board_info.revision, reasons
