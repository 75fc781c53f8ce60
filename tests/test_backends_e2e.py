"""
The end-to-end behaviours that matter, on every backend the server drives:
gpiozero's MockFactory, and its real LGPIOFactory, RPiGPIOFactory and
PiGPIOFactory over the real lgpio, rpi-lgpio and pigpio libraries, with an
emulated kernel GPIO chip or a pigpiod double beneath them (see
:mod:`rigs`). Levels are checked where the pins are (the emulated chip, the
double), not only in what the server says; timing from the server's own
timestamps.
"""

import json
import signal
import subprocess
import sys
import threading

import pytest
from gpiozero import LED, Button, PWMLED

from conftest import transitions, wait_for
from remoteio_factory import LED as TimedLED
from rigs import BACKENDS, ChipRig, MockRig, PigpioRig, start_rig

#: Timing tolerance against the server's timestamps (see test_timed_tasks.py).
TOLERANCE = 0.010


@pytest.fixture(scope='module', params=BACKENDS)
def rig(request):
    r = start_rig(request.param)
    yield r
    r.close()


@pytest.fixture
def factory(rig):
    f = rig.server.factory()
    yield f
    f.close()


def test_the_server_runs_the_backend_it_was_given(rig):
    status = json.loads(subprocess.run(
        [sys.executable, '-m', 'remoteio_factory.cli', 'status', '--json',
         '--host', rig.server.host, '--port', str(rig.server.port)],
        check=True, capture_output=True, text=True, timeout=30).stdout)
    assert status['backend'] == rig.backend
    if isinstance(rig, ChipRig):
        # the board gpiozero read from the (emulated) device tree
        assert status['board']['revision'] == rig.pi.revision


def test_outputs_switch_the_pin(rig, factory):
    led = LED(17, pin_factory=factory)
    led.on()
    assert led.value == 1                     # a read: every write before it has been applied
    assert rig.level(17) == 1 and rig.direction(17) == 'output'
    led.off()
    assert led.value == 0
    assert rig.level(17) == 0
    led.close()
    (entry,) = rig.server.wait_free(17)
    assert entry['function'] == 'input'
    assert rig.direction(17) == 'input'


def test_pwm_runs_on_the_pin(rig, factory):
    led = PWMLED(18, pin_factory=factory, frequency=100)
    led.value = 0.25
    assert led.value == 0.25
    entry = rig.server.pin(18, history=0)
    assert entry['frequency'] == 100 and entry['state'] == 0.25
    if isinstance(rig, ChipRig):
        # lgpio's PWM is a thread toggling the line: both levels show up
        seen = set()
        wait_for(lambda: seen.add(rig.level(18)) or seen == {0, 1}, 5,
                 message='the PWM line to toggle')
    elif isinstance(rig, PigpioRig):
        duty, full_range, frequency = rig.daemon.pwm(18)
        assert duty / full_range == 0.25 and frequency == 100
    led.close()
    (entry,) = rig.server.wait_free(18)
    assert entry['frequency'] is None and entry['function'] == 'input'
    assert rig.direction(18) == 'input'


def test_button_edges_reach_the_callbacks(rig, factory):
    rig.drive(4, 1)
    button = Button(4, pin_factory=factory)             # pull-up: pressed when low
    pressed, released = threading.Event(), threading.Event()
    button.when_pressed = pressed.set
    button.when_released = released.set
    assert not button.is_pressed
    rig.drive(4, 0)
    assert pressed.wait(5)
    assert button.is_pressed
    rig.drive(4, 1)
    assert released.wait(5)
    assert not button.is_pressed
    button.close()
    rig.server.wait_free(4)


def test_bounce_is_honoured(rig, factory):
    rig.drive(5, 1)
    button = Button(5, pin_factory=factory, bounce_time=0.3)
    presses = []
    pressed, released = threading.Event(), threading.Event()
    button.when_pressed = lambda: (presses.append(1), pressed.set())
    button.when_released = released.set
    for level in (0, 1, 0, 1, 0):                       # a contact bouncing as it closes
        rig.drive(5, level)
    assert pressed.wait(5)
    wait_for(lambda: button.is_pressed, 5, message='the button to read pressed')
    rig.drive(5, 1)
    assert released.wait(5)
    # events of one pin arrive in order: any second press from the burst came before this
    assert presses == [1]
    button.close()
    rig.server.wait_free(5)


def test_claim_release_and_claim_again_by_another_client(rig):
    first, second = rig.server.factory(), rig.server.factory()
    try:
        for factory in (first, first, second, first):
            led = LED(22, pin_factory=factory)
            led.on()
            assert led.value == 1 and rig.level(22) == 1
            led.close()
            rig.server.wait_free(22)
            assert rig.direction(22) == 'input'
    finally:
        first.close()
        second.close()


def test_timed_task_and_soft_close(rig, factory):
    led = TimedLED(23, pin_factory=factory)
    led.blink(on_time=0.05, off_time=0.05, n=2)
    led.on(time_ms=200)
    led.close()                       # soft close: what was sent is still carried out
    (entry,) = rig.server.wait_free(23)
    changes = [(t, s) for t, s in transitions(entry) if s in (0, 1)]
    ons = [t for t, s in changes if s == 1]
    offs = [t for t, s in changes if s == 0 and t > ons[0]]
    assert len(ons) == 3 and len(offs) >= 3, changes
    assert abs(offs[0] - ons[0] - 0.05) < TOLERANCE
    assert abs(ons[1] - offs[0] - 0.05) < TOLERANCE
    assert abs(offs[2] - ons[2] - 0.200) < TOLERANCE      # the impulse ran to its end
    function_changes = transitions(entry, 'function')
    assert function_changes[-1][1] == 'input' and function_changes[-1][0] >= offs[2]
    assert rig.level(23) == 0 and rig.direction(23) == 'input'


def test_claim_release_200_times_and_every_edge_arrives(rig):
    clients = [rig.server.factory(), rig.server.factory()]
    try:
        rig.drive(6, 1)
        for cycle in range(200):
            factory = clients[cycle % 2]          # every other claim by another client
            button = Button(6, pin_factory=factory)
            pressed = threading.Event()
            button.when_pressed = pressed.set
            rig.drive(6, 0)
            assert pressed.wait(5), f'cycle {cycle}: the edge after the claim was lost'
            rig.drive(6, 1)
            button.close()
            rig.server.wait_free(6)
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize('backend', BACKENDS)
def test_sigterm_switches_everything_off(backend):
    rig = start_rig(backend, '--log-level', 'info')
    try:
        factory = rig.server.factory()
        led = TimedLED(17, pin_factory=factory)
        led.on(time_ms=60000)                     # a long impulse under way
        pwm = PWMLED(18, pin_factory=factory)
        pwm.value = 0.5
        assert pwm.value == 0.5 and rig.level(17) == 1
        rig.server.process.send_signal(signal.SIGTERM)
        assert rig.server.process.wait(30) == 0
        factory.close()
        if not isinstance(rig, MockRig):      # (mock pins end with the server: its log tells)
            for gpio in (17, 18):
                assert rig.direction(gpio) == 'input', f'GPIO{gpio} left as an output'
        if isinstance(rig, ChipRig):
            assert not rig.pi.line(17)['used'] and not rig.pi.line(18)['used']
        if isinstance(rig, PigpioRig):
            assert rig.daemon.pwm(18).dutycycle in (None, 0)     # PWM stopped
        log = ''.join(rig.server.stderr_lines)
        assert 'GPIO17 released: input' in log and 'GPIO18 released: input' in log
    finally:
        rig.close()



def test_pigpio_running_out_of_notification_handles_is_explained():
    """pigpiod has 32 notification handles; each claimed pin's connection takes one."""
    import socket
    import struct
    from gpiozero.exc import GPIOZeroError
    rig = start_rig('pigpio', '--spares', '2')
    others = []
    try:
        assert rig.daemon.handles_in_use() == 0          # spares hold none
        for _ in range(31):                             # other pigpio clients take 31
            sock = socket.create_connection(('127.0.0.1', rig.daemon.port))
            sock.sendall(struct.pack('IIII', 99, 0, 0, 0))          # NOIB
            assert struct.unpack('12si', sock.recv(16))[1] >= 0
            others.append(sock)
        factory = rig.server.factory()
        led = LED(17, pin_factory=factory)               # the 32nd handle
        led.on()
        assert led.value == 1 and rig.level(17) == 1
        with pytest.raises(GPIOZeroError, match='no notification handle left'):
            LED(18, pin_factory=factory)
        others.pop().close()                             # one comes free
        wait_for(lambda: rig.daemon.handles_in_use() == 31, message='the handle to be freed')
        second = LED(18, pin_factory=factory)
        second.on()
        assert second.value == 1 and rig.level(18) == 1
        factory.close()
    finally:
        for sock in others:
            sock.close()
        rig.close()
