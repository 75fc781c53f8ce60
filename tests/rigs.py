"""
Test rigs: a real ``remoteio-server`` on one backend, with what stands in
for the Pi's pins below it and a way to touch them from outside.

- ``mock``: gpiozero's MockFactory; inputs are driven through the server
  (the protocol's ``drive``), levels read from its status.
- ``lgpio``: gpiozero's LGPIOFactory on the real lgpio library, over the
  emulated kernel GPIO chip of a Raspberry Pi 5 (:mod:`emulation.gpiochip`).
- ``rpigpio``: gpiozero's RPiGPIOFactory on the real rpi-lgpio package (what
  Raspberry Pi OS ships as RPi.GPIO), over the emulated chip of a Pi 4B.
- ``pigpio``: gpiozero's PiGPIOFactory on the real pigpio client, talking to
  the pigpiod double (:mod:`emulation.pigpiod`) on loopback.

Every rig offers the same few verbs (:meth:`Rig.drive`, :meth:`Rig.level`,
:meth:`Rig.direction`), so one test runs unchanged on every backend.
"""

import importlib.util

import pytest

from conftest import ServerProcess
from remoteio_factory.connection import Connection

BACKENDS = ('mock', 'lgpio', 'rpigpio', 'pigpio')

#: The Python package each backend needs in the server's environment.
PACKAGES = {'lgpio': 'lgpio', 'rpigpio': 'RPi.GPIO', 'pigpio': 'pigpio'}


class Rig:
    """A server on one backend; see the module docstring."""

    backend = None

    def __init__(self, *args, env=None, **popen):
        self.server = ServerProcess(*args, backend=self.backend, env=env, **popen)

    def drive(self, gpio, level):
        """Drive input *gpio* from outside: 0, 1, or None to let it go."""
        raise NotImplementedError

    def level(self, gpio):
        """The level *gpio* has on the (emulated) header now."""
        raise NotImplementedError

    def direction(self, gpio):
        """'input' or 'output', as the hardware (or its stand-in) has it."""
        raise NotImplementedError

    def close(self):
        self.server.stop()


class MockRig(Rig):
    backend = 'mock'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._connection = None

    def drive(self, gpio, level):
        if level is None:
            return        # a mock input keeps the level it was last driven to
        if self._connection is None:
            self._connection = Connection(self.server.host, self.server.port)
        self._connection.request('drive', pin=gpio, state=int(bool(level)))

    def close(self):
        if self._connection is not None:
            self._connection.close()
        super().close()

    def _entry(self, gpio):
        entry = self.server.pin(gpio, history=0)
        if entry is None:
            return {'function': 'input', 'state': False}
        return entry

    def level(self, gpio):
        state = self._entry(gpio)['state']
        return int(state >= 0.5) if isinstance(state, float) else int(bool(state))

    def direction(self, gpio):
        return self._entry(gpio)['function']


class ChipRig(Rig):
    """A backend on the lgpio library, over the emulated GPIO chip."""

    revision = None

    def __init__(self, *args, env=None, **popen):
        from emulation.gpiochip import EmulatedPi, EmulationUnavailable
        try:
            self.pi = EmulatedPi(self.revision)
        except EmulationUnavailable as exc:
            pytest.skip(f'{self.backend}: {exc}')
        try:
            super().__init__(*args, env=self.pi.env(env), **popen)
        except Exception:
            self.pi.close()
            raise

    def drive(self, gpio, level):
        self.pi.drive(gpio, level)

    def level(self, gpio):
        return self.pi.level(gpio)

    def direction(self, gpio):
        return self.pi.line(gpio)['direction']

    def close(self):
        try:
            super().close()
        finally:
            self.pi.close()


class LgpioRig(ChipRig):
    backend = 'lgpio'
    revision = 'd04170'       # a Pi 5: lgpio is the backend there


class RPiGPIORig(ChipRig):
    backend = 'rpigpio'
    revision = 'c03111'       # a Pi 4B


class PigpioRig(Rig):
    backend = 'pigpio'

    def __init__(self, *args, env=None, **popen):
        import os
        from emulation.pigpiod import PigpiodDouble
        self.daemon = PigpiodDouble()
        self.daemon.start()
        env = dict(os.environ if env is None else env,
                   PIGPIO_ADDR='127.0.0.1', PIGPIO_PORT=str(self.daemon.port))
        try:
            super().__init__(*args, env=env, **popen)
        except Exception:
            self.daemon.stop()
            raise

    def drive(self, gpio, level):
        self.daemon.drive(gpio, level)

    def level(self, gpio):
        return self.daemon.level(gpio)

    def direction(self, gpio):
        return 'output' if self.daemon.mode(gpio) == 1 else 'input'

    def close(self):
        try:
            super().close()
        finally:
            self.daemon.stop()


RIGS = {'mock': MockRig, 'lgpio': LgpioRig, 'rpigpio': RPiGPIORig, 'pigpio': PigpioRig}


def start_rig(backend, *args, env=None, **popen):
    """Start a rig for *backend*; skip (with the reason) if its library is missing."""
    package = PACKAGES.get(backend)
    if package is not None:
        try:
            found = importlib.util.find_spec(package) is not None  # (RPi.GPIO refuses to import off a Pi)
        except ImportError:
            found = False
        if not found:
            pytest.skip(f'{backend}: the {package} package is not installed')
    return RIGS[backend](*args, env=env, **popen)
