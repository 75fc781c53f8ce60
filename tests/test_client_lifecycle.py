"""
The client's pin lifecycle against a real server: closing releases a pin on
the server before it returns (a device's close and the factory's), a pin is
not used again after its device closed, the seed API's closed pins, devices
made again on a pin, exit without tracebacks from gpiozero's threads, and the
client's configuration errors (``REMOTEIO_PORT``, a port that is not a
remoteio server, ``PIGPIO_ADDR``).
"""

import http.server
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from gpiozero import LED, Button, GPIODeviceClosed, GPIOPinInUse
from gpiozero.exc import DeviceClosed

from conftest import ServerProcess, run_script
from remoteio_factory import LED as TimedLED
from remoteio_factory import RemoteIOConnectionError, RemoteIOFactory, RemoteServer


def held_by_anyone(status, gpio):
    return any(gpio in client['pins'] for client in status['clients'])


def free_now(server, *gpios):
    """Are *gpios* free on the server right now (one status, no waiting)?"""
    status = server.status()
    pins = {p['gpio']: p for p in status['pins']}
    return {g: (pins[g]['status'] if g in pins else None, held_by_anyone(status, g))
            for g in gpios}


# 1. close() returns once the server has released the pin -----------------------------------

def test_a_pin_closed_by_one_client_is_claimed_by_another_at_once_200_times(server):
    first, second = server.factory(), server.factory()
    try:
        for i in range(200):
            led = LED(22, pin_factory=first)
            led.on()
            led.close()
            try:
                other = LED(22, pin_factory=second)    # no wait, no retry
            except GPIOPinInUse as exc:
                pytest.fail(f'round {i}: {exc}')
            other.close()
    finally:
        first.close()
        second.close()
    server.wait_free(22)


def test_a_device_close_returns_once_the_pin_is_free(server, factory):
    led = TimedLED(23, pin_factory=factory)
    led.on(time_ms=300)              # a finite task: the soft close carries it out first
    started = time.monotonic()
    led.close()
    elapsed = time.monotonic() - started
    assert free_now(server, 23) == {23: ('free', False)}
    assert elapsed >= 0.2            # it waited for the task, then for the release


def test_factory_close_waits_once_for_all_its_pins(server, caplog):
    gpios = [5, 6, 12, 13]
    factory = server.factory(timeout=1)
    leds = [TimedLED(g, pin_factory=factory) for g in gpios]
    for led in leds:
        led.on(time_ms=3000)         # longer than the timeout: the close gives up waiting
    caplog.set_level(logging.WARNING, logger='remoteio_factory')
    started = time.monotonic()
    factory.close()                  # never raises
    elapsed = time.monotonic() - started
    # one wait of at most `timeout` for all of them, not one per pin (that would be 3 s)
    assert 0.9 <= elapsed < 2.5, elapsed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(f'GPIO{g}' in warnings[0] for g in gpios), warnings
    server.wait_free(*gpios)


def test_factory_close_returns_once_its_pins_are_free(server):
    gpios = [5, 6, 12, 13, 16, 19]
    factory = server.factory()
    for gpio in gpios:
        TimedLED(gpio, pin_factory=factory).on(time_ms=200)
    factory.close()
    assert free_now(server, *gpios) == {g: ('free', False) for g in gpios}


def test_a_device_close_is_bounded_and_never_raises(server, caplog):
    factory = server.factory(timeout=1)
    try:
        led = TimedLED(20, pin_factory=factory)
        led.on(time_ms=3000)
        caplog.set_level(logging.WARNING, logger='remoteio_factory')
        started = time.monotonic()
        led.close()
        assert 0.9 <= time.monotonic() - started < 2.5
        assert any('GPIO20' in r.getMessage() for r in caplog.records
                   if r.levelno == logging.WARNING)
    finally:
        factory.close()
    server.wait_free(20)


# 2. a pin is not used again after its device closed ---------------------------------------

def test_a_pin_used_after_its_device_closed_raises_and_stays_free(server, factory):
    led = LED(24, pin_factory=factory)
    pin = led.pin
    led.on()
    led.close()
    with pytest.raises(GPIODeviceClosed, match='closed'):
        pin.state = 1
    with pytest.raises(GPIODeviceClosed):
        _ = pin.state
    with pytest.raises(GPIODeviceClosed):
        pin.function = 'output'
    with pytest.raises(DeviceClosed):
        pin.frequency = 100
    assert free_now(server, 24) == {24: ('free', False)}     # not claimed again
    # A device made on the pin again works as before (gpiozero reuses the pin object).
    again = LED(24, pin_factory=factory)
    assert again.pin is pin
    again.on()
    assert again.value == 1 and server.pin(24)['state'] is True
    again.close()


def test_a_late_write_from_another_thread_raises(server, factory):
    led = LED(25, pin_factory=factory)
    pin = led.pin
    closed, result = threading.Event(), []

    def late_writer():            # e.g. a blink or source thread that still holds the pin
        closed.wait(10)
        try:
            pin.state = 1
            result.append('written')
        except DeviceClosed as exc:
            result.append(exc)
    writer = threading.Thread(target=late_writer)
    writer.start()
    led.close()
    closed.set()
    writer.join(10)
    assert isinstance(result[0], GPIODeviceClosed), result
    assert free_now(server, 25) == {25: ('free', False)}


def test_a_pin_opened_without_a_device_is_claimed_on_first_use(server, factory):
    for _ in range(2):
        pin = factory.pin(26)        # no device, no reservation
        pin.function = 'output'
        pin.state = 1
        assert pin.state == 1 and server.pin(26)['state'] is True
        pin.close()
        assert free_now(server, 26) == {26: ('free', False)}


# 3. the seed API: tasks for a closed pin are refused ----------------------------------------

def test_seed_pin_closed_refuses_tasks_and_says_how_to_get_it_again(server):
    remote = RemoteServer(server.host, server.port)
    try:
        valve = remote.pin(7, 'b')               # GPIO4
        valve.on(time_ms=50)
        valve.close()
        with pytest.raises(DeviceClosed) as info:
            valve.on()
        message = str(info.value)
        assert 'closed' in message and ".pin(7, 'b')" in message, message
        with pytest.raises(DeviceClosed):
            valve.blink(time_ms=100)
        assert free_now(server, 4) == {4: ('free', False)}   # the pin was not claimed again
        again = remote.pin(7, 'b')
        assert again.on(time_ms=20).wait(5) == 'completed'
    finally:
        remote.close()
    server.wait_free(4)


# 4. a device made again on a pin gets its events ---------------------------------------------

@pytest.fixture(scope='module')
def wired():
    proc = ServerProcess('--mock-wire', '17:27')
    yield proc
    proc.stop()


def test_a_button_made_again_on_a_pin_gets_its_presses(wired):
    factory = wired.factory()
    try:
        led = LED(17, pin_factory=factory)                 # wired to GPIO27
        for round in range(3):
            button = Button(27, pull_up=False, pin_factory=factory)
            pressed = threading.Event()
            button.when_pressed = pressed.set
            led.on()
            assert pressed.wait(5), f'no press in round {round}'
            led.off()
            assert button.wait_for_release(5)
            button.close()
        led.close()
    finally:
        factory.close()


# 5. no tracebacks at exit ------------------------------------------------------------------

SENSORS_AT_EXIT = {
    'default factory': """
        from gpiozero import LineSensor, MotionSensor
        line = LineSensor({a})
        motion = MotionSensor({b})
        print(line.value, motion.value)
    """,
    'pin_factory=': """
        from gpiozero import LineSensor, MotionSensor
        from remoteio_factory import RemoteIOFactory
        factory = RemoteIOFactory()
        line = LineSensor({a}, pin_factory=factory)
        motion = MotionSensor({b}, pin_factory=factory)
        print(line.value, motion.value)
    """,
    'led.source': """
        from gpiozero import LED, LineSensor
        line = LineSensor({b})
        led = LED({a})
        led.source = line                 # gpiozero's source thread reads and writes
        print(line.value)
    """,
}


def test_scripts_with_reading_threads_exit_without_tracebacks(server):
    slots = [(5, 6), (12, 13), (16, 19), (20, 21), (25, 26)]
    runs = 30
    failures = []
    for start in range(0, runs, len(slots)):
        processes = []
        for i, (a, b) in enumerate(slots):
            code = list(SENSORS_AT_EXIT.values())[(start + i) % 3].format(a=a, b=b)
            processes.append(subprocess.Popen(
                [sys.executable, '-c', textwrap.dedent(code)], env=server.env(),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for process in processes:
            out, err = process.communicate(timeout=60)
            if process.returncode != 0 or err:
                failures.append((process.returncode, err))
        server.wait_free(*(g for slot in slots for g in slot))
    assert not failures, f'{len(failures)} of {runs} runs: {failures[0][1]}'


# 7. configuration errors ---------------------------------------------------------------------

def test_a_port_that_is_not_a_number_is_named(server):
    result = run_script(server, 'from gpiozero import LED\nLED(17)\n', check=False,
                        env=dict(server.env(), REMOTEIO_PORT='abc'))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert 'REMOTEIO_PORT' in last and "'abc'" in last, result.stderr
    with pytest.raises(ValueError, match='port'):
        RemoteIOFactory(host=server.host, port='abc')
    status = subprocess.run([sys.executable, '-m', 'remoteio_factory.cli', 'status'],
                            env=dict(server.env(), REMOTEIO_PORT='abc'),
                            capture_output=True, text=True, timeout=30)
    assert status.returncode != 0 and 'REMOTEIO_PORT' in status.stderr, status.stderr
    assert 'Traceback' not in status.stderr


def test_a_timeout_that_is_not_a_number_is_named(server):
    for name in ('REMOTEIO_RECONNECT_TIMEOUT', 'REMOTEIO_TIMEOUT'):
        result = run_script(server, 'from gpiozero import LED\nLED(17)\n', check=False,
                            env=dict(server.env(), **{name: 'soon'}))
        assert result.returncode != 0
        assert f"{name}='soon'" in result.stderr.strip().splitlines()[-1], result.stderr


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_port():
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_an_http_server_is_not_taken_for_a_tls_server(http_port):
    started = time.monotonic()
    with pytest.raises(RemoteIOConnectionError) as info:
        RemoteIOFactory(host='127.0.0.1', port=http_port, connect_timeout=3)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert 'not a remoteio server' in message and 'HTTP' in message, message
    assert 'TLS' not in message, message


def test_a_silent_server_is_not_taken_for_a_tls_server():
    with socket.create_server(('127.0.0.1', 0)) as listener:   # accepts, never answers
        port = listener.getsockname()[1]
        with pytest.raises(RemoteIOConnectionError) as info:
            RemoteIOFactory(host='127.0.0.1', port=port, connect_timeout=1)
    message = str(info.value)
    assert 'did not answer' in message and 'remoteio server' in message, message
    assert 'TLS' not in message, message


def test_pigpio_addr_without_remoteio_host_warns_once(server):
    env = server.env(PIGPIO_ADDR='192.0.2.7')
    del env['REMOTEIO_HOST']                  # localhost: where the test's server is
    result = run_script(server, """
        from gpiozero import LED
        from remoteio_factory import RemoteIOFactory
        led = LED(17)
        other = RemoteIOFactory()
        led.on()
        print(led.value)
        other.close()
    """, env=env)
    assert result.stdout.strip() == '1'
    lines = [line for line in result.stderr.splitlines() if 'PIGPIO_ADDR' in line]
    assert len(lines) == 1 and 'REMOTEIO_HOST' in lines[0], result.stderr
    quiet = run_script(server, 'from gpiozero import LED\nLED(17).on()\n',
                       env=server.env(PIGPIO_ADDR='192.0.2.7'))   # REMOTEIO_HOST set: no warning
    assert 'PIGPIO_ADDR' not in quiet.stderr
    server.wait_free(17)
