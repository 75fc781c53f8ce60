"""
The factory against a real server: pin naming on the remote board,
``pinout``, ownership between clients, and closing.
"""

import os
import subprocess
import sys
import time

import pytest
from gpiozero import LED, GPIOPinInUse, PinInvalidPin, PinInvalidState, PinSetInput

from conftest import run_script, states, wait_for
from remoteio_factory import RemoteIOFactory


@pytest.mark.parametrize('name', [17, '17', 'GPIO17', 'BCM17', 'BOARD11', 'J8:11', 'WPI0'])
def test_every_alias_drives_the_same_remote_gpio(factory, server, name):
    led = LED(name, pin_factory=factory)
    try:
        led.on()
        assert led.value == 1     # a read: the write has reached the server
        entry = server.pin(17)
        assert entry['owner'] is not None and entry['state'] == 1
        assert factory.pin(name) is factory.pin(17)
    finally:
        led.close()
    server.wait_free(17)


def test_names_resolve_against_the_remote_board(fresh_server):
    # Pi 1 B rev 1: physical pin 3 is GPIO0 there (GPIO2 on every later board)
    old = fresh_server('--revision', '0002')
    factory = old.factory()
    try:
        assert factory.board_info.model == 'B'
        led = LED('BOARD3', pin_factory=factory)
        led.on()
        assert led.value == 1
        assert old.pin(0)['state'] == 1
        with pytest.raises(PinInvalidPin):
            LED(2, pin_factory=factory)  # no GPIO2 on that board
        led.close()
    finally:
        factory.close()


def test_non_gpio_pins_are_refused_locally(factory):
    with pytest.raises(PinInvalidPin):
        LED('J8:1', pin_factory=factory)   # 3V3
    with pytest.raises(PinInvalidPin):
        LED(99, pin_factory=factory)


def test_pinout_shows_the_remote_board(fresh_server):
    pi4 = fresh_server('--revision', 'c03111')
    pinout = os.path.join(os.path.dirname(sys.executable), 'pinout')
    result = subprocess.run([pinout, '--monochrome'], env=pi4.env(), capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'Revision           : c03111' in result.stdout
    assert 'Raspberry Pi 4B rev 1.1' in result.stdout
    assert 'GPIO17' in result.stdout


def test_invalid_values_raise_at_once(factory):
    pin = factory.pin(16)
    pin.function = 'output'
    try:
        with pytest.raises(PinInvalidState):
            pin.state = 1.5
        with pytest.raises(PinInvalidState):
            pin.state = float('nan')
        with pytest.raises(PinInvalidState):
            pin.state = 'high'
        pin.function = 'input'
        with pytest.raises(PinSetInput):
            pin.state = 1
    finally:
        pin.close()


def test_second_client_gets_pin_in_use_and_first_keeps_working(server):
    first, second = server.factory(), server.factory()
    try:
        led = LED(27, pin_factory=first)
        with pytest.raises(GPIOPinInUse):
            LED(27, pin_factory=second)
        led.on()
        assert led.value == 1
        assert server.pin(27)['state'] == 1
        led.close()
        server.wait_free(27)
        other = LED(27, pin_factory=second)   # free again: the second client may have it
        other.on()
        assert other.value == 1
        assert server.pin(27)['state'] == 1
        other.close()
    finally:
        first.close()
        second.close()


def test_same_client_reclaims_after_close(factory, server):
    for _ in range(3):
        led = LED(4, pin_factory=factory)
        led.on()
        assert led.value == 1
        led.close()
    (entry,) = server.wait_free(4)
    assert states(entry) == [0, 1, 0]


def test_status_lists_clients_and_pins(factory, server):
    led = LED(14, pin_factory=factory)
    try:
        led.on()
        status = factory.status()
        assert status['backend'] == 'mock' and status['mode'] == 'wait'
        assert status['board']['revision'] == 'a02082'
        mine = [c for c in status['clients'] if 14 in c['pins']]
        assert len(mine) == 1 and mine[0]['client'].startswith('remoteio-factory/')
        entry = next(p for p in status['pins'] if p['gpio'] == 14)
        assert entry['name'] == 'GPIO14' and entry['status'] == 'claimed'
        assert entry['owner'] == mine[0]['id']
        assert entry['function'] == 'output' and entry['state'] is True
        assert all(e['t'] <= status['monotonic'] for e in entry['history'])
    finally:
        led.close()


def test_status_command(server, factory):
    led = LED(15, pin_factory=factory)
    led.on()
    assert led.value == 1
    bindir = os.path.dirname(sys.executable)
    text = subprocess.run([os.path.join(bindir, 'remoteio'), 'status', '--host', server.host,
                           '--port', str(server.port)], capture_output=True, text=True, timeout=30)
    assert text.returncode == 0, text.stderr
    assert 'backend mock' in text.stdout
    assert 'GPIO15' in text.stdout and 'high' in text.stdout
    led.close()


def test_factory_passed_as_pin_factory_is_closed_at_exit(server):
    started = time.monotonic()
    result = run_script(server, f"""
        from gpiozero import LED, PWMLED
        from remoteio_factory import RemoteIOFactory
        factory = RemoteIOFactory(host='127.0.0.1', port={server.port})
        led = LED(3, pin_factory=factory)
        led.blink(0.01, 0.01)
        pwm = PWMLED(2, pin_factory=factory)
        pwm.pulse(0.1, 0.1)
        print('ready')
    """)
    assert time.monotonic() - started < 15
    assert 'Traceback' not in result.stderr and 'Exception' not in result.stderr, result.stderr
    server.wait_free(3, 2)


def test_close_does_not_hang_after_server_died(fresh_server):
    doomed = fresh_server()
    factory = doomed.factory(timeout=2)
    led = LED(17, pin_factory=factory)
    led.blink(0.01, 0.01)
    doomed.stop(sig=9)
    started = time.monotonic()
    led.close()
    factory.close()
    assert time.monotonic() - started < 5


def test_unreachable_server_fails_fast():
    import socket
    from remoteio_factory import RemoteIOConnectionError
    with socket.socket() as s:   # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(RemoteIOConnectionError) as info:
        RemoteIOFactory(host='127.0.0.1', port=port)
    assert time.monotonic() - started < 5
    assert 'remoteio-server' in str(info.value)
    assert isinstance(info.value, ConnectionError)
    from gpiozero import PinError
    assert isinstance(info.value, PinError)


def test_unreachable_server_through_env_var(server):
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    result = run_script(server, "from gpiozero import LED\nLED(17)\n", check=False,
                        env=dict(server.env(), REMOTEIO_PORT=str(port)))
    assert result.returncode == 1
    assert 'RemoteIOConnectionError' in result.stderr
    assert 'Is remoteio-server running there' in result.stderr


def test_server_killed_mid_script_raises_promptly(fresh_server):
    from remoteio_factory import RemoteIOConnectionError
    doomed = fresh_server()
    # Without reconnecting (by default the client waits for the server to come back);
    # the main thread here is pytest's, so it is not interrupted.
    factory = doomed.factory(reconnect=False, interrupt_main=False)
    led = LED(17, pin_factory=factory)
    led.on()
    doomed.stop(sig=9)
    started = time.monotonic()
    with pytest.raises(RemoteIOConnectionError):
        wait_for(lambda: led.value is None, timeout=5)
    assert time.monotonic() - started < 5
    with pytest.raises(RemoteIOConnectionError):
        led.on()
    factory.close()
