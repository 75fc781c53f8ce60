"""
The benchmark's reference server (``bench/reference.py``) serves the real
client: RemoteIOFactory with unmodified gpiozero devices, the seed API and
an MCP3008, so that the benchmark compares like with like.
"""

import threading

import pytest
from gpiozero import MCP3008, DigitalInputDevice, InputDevice, OutputDevice
from gpiozero.exc import GPIOPinInUse

from bench import harness
from remoteio_factory import RemoteIOFactory, RemoteServer


@pytest.fixture(scope='module')
def reference():
    server = harness.start_reference_server(lifetime=120)
    yield server
    server.stop()


@pytest.fixture
def factory(reference):
    factory = RemoteIOFactory('127.0.0.1', reference.port)
    yield factory
    factory.close()


def test_output_and_input_devices(factory):
    led = OutputDevice(17, pin_factory=factory)
    led.on()
    assert led.value == 1 and led.pin.state == 1
    led.off()
    assert led.pin.state == 0
    button = InputDevice(4, pull_up=True, pin_factory=factory)
    assert button.pin.state == 1 and button.value == 0
    led.close()
    button.close()


def test_a_claimed_pin_is_in_use_for_another_client(factory, reference):
    led = OutputDevice(18, pin_factory=factory)
    other = RemoteIOFactory('127.0.0.1', reference.port)
    try:
        with pytest.raises(GPIOPinInUse):
            OutputDevice(18, pin_factory=other)
    finally:
        other.close()
        led.close()


def test_edge_events_reach_gpiozero(factory):
    button = DigitalInputDevice(5, pin_factory=factory)
    pressed = threading.Event()
    button.when_activated = pressed.set
    factory._connection.request('drive', pin=5, state=1)
    assert pressed.wait(5)
    button.close()


def test_seed_api_tasks(reference):
    remote = RemoteServer('127.0.0.1', reference.port)
    try:
        pin = remote.pin(22, 'g')
        assert pin.on(time_ms=5).wait(5) == 'completed'
        endless = pin.blink()
        assert pin.off().wait(5) == 'completed'
        assert endless.wait(5) in ('replaced', 'superseded')
    finally:
        remote.close()


def test_mcp3008(factory):
    factory._connection.request('set_channel', device=8, channel=0, value=0.5)
    adc = MCP3008(channel=0, pin_factory=factory)
    assert adc.raw_value == 512
    adc.close()
