"""
gpiozero's own tests for two pins joined by a wire (its ``test_real_pins.py``,
unchanged, in ``tests/upstream``), run through the remoteio factory against a
server on the mock backend with GPIO22 and GPIO27 joined by a virtual wire.

They hold the virtual Pi to a real one: an output drives the other end
whatever its pull; a pull-up or pull-down on one end pulls the other; a PWM
output, sampled 20,000 times through the wire, reads high for its duty cycle
(within gpiozero's own tolerance); bad functions, pulls and duty cycles raise
gpiozero's exceptions; the SPI interface and the factory's entry point behave
as gpiozero expects of any factory. Only the choice of factories changes:
the upstream module runs every factory installed, this one the remoteio
factory alone (the others have no pins on this machine).
"""

import os

import pytest
from gpiozero import Device

from conftest import ServerProcess
from upstream.gpiozero_real_pins import *  # noqa: F401,F403 (gpiozero's tests)
from upstream import gpiozero_real_pins as upstream


@pytest.fixture(scope='module')
def wired_server():
    proc = ServerProcess('--mock-wire', '22:27')
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def remoteio_environment(wired_server):
    """Point REMOTEIO_* at the server; undo what gpiozero's tests do to the environment."""
    saved = dict(os.environ)
    os.environ.update(REMOTEIO_HOST='127.0.0.1', REMOTEIO_PORT=str(wired_server.port))
    os.environ.pop('GPIOZERO_PIN_FACTORY', None)
    try:
        yield
    finally:
        factory = Device.pin_factory
        if factory is not None and type(factory).__name__ == 'RemoteIOFactory':
            factory.close()
            Device.pin_factory = None
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope='module')
def pin_factory_name():
    """Overrides the upstream fixture: the remoteio factory only."""
    return 'remoteio'


@pytest.fixture()
def no_default_factory():
    """gpiozero's conftest fixture: no default factory for the test."""
    saved = Device.pin_factory
    Device.pin_factory = None
    try:
        yield None
    finally:
        Device.pin_factory = saved


def setup_module(module):
    """The upstream module takes a lock file against parallel runs on one Pi: not needed here."""


def teardown_module(module):
    pass


def test_the_upstream_tests_are_here():
    """The import brought gpiozero's tests (a renamed or moved file would run nothing)."""
    names = [name for name in dir(upstream) if name.startswith('test_')]
    assert {'test_pull', 'test_input_with_pull', 'test_pulls_are_weak',
            'test_duty_cycles'} <= set(names)
    assert len(names) >= 20
