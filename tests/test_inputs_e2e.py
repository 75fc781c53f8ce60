"""
Remote inputs: unmodified gpiozero input devices in subprocesses, with edge
events detected by the server's pin workers and pushed to the client.

The server runs the mock backend with virtual jumper wires (--mock-wire
OUT:IN): an output of the script drives an input of the same script, so each
script is self-contained and runs as it would on a Pi with a jumper wire.
"""

import subprocess
import sys

import pytest

from conftest import ServerProcess, run_script, start_script, states

WIRES = ['17:27', '5:6', '13:19', '20:21', '16:26']


@pytest.fixture(scope='module')
def wired():
    args = []
    for wire in WIRES:
        args += ['--mock-wire', wire]
    proc = ServerProcess(*args)
    yield proc
    proc.stop()


def test_button_events_hold_and_times(wired):
    result = run_script(wired, """
        from gpiozero import Button, LED
        from time import sleep
        led = LED(17)                                   # wired to GPIO27
        button = Button(27, pull_up=False, hold_time=0.2, hold_repeat=True)
        log = []
        button.when_pressed = lambda: log.append('pressed')
        button.when_released = lambda: log.append('released')
        button.when_held = lambda: log.append('held')
        print(button.is_pressed)
        led.on()
        assert button.wait_for_press(2)
        sleep(0.5)
        print(button.is_pressed, round(button.held_time, 1), round(button.active_time, 1))
        led.off()
        assert button.wait_for_release(2)
        print(log)
    """)
    lines = result.stdout.splitlines()
    assert lines[0] == 'False'
    assert lines[1] == 'True 0.3 0.5'           # times from the server's edge timestamps
    assert lines[2] == "['pressed', 'held', 'held', 'released']"
    (entry,) = wired.wait_free(27)
    assert states(entry)[-3:] == [0, 1, 0]


def test_remoteio_drive_presses_a_button(wired):
    script = start_script(wired, """
        from gpiozero import Button
        button = Button(4)                              # pull-up: pressed when low
        print('ready', flush=True)
        assert button.wait_for_press(10)
        print('pressed', flush=True)
        assert button.wait_for_release(10)
        print('released', flush=True)
    """)
    command = [sys.executable, '-m', 'remoteio_factory.cli', 'drive', '--host', wired.host,
               '--port', str(wired.port)]
    subprocess.run(command + ['GPIO4', 'low'], check=True, timeout=30, capture_output=True)
    assert script.stdout.readline().strip() == 'pressed'
    subprocess.run(command + ['GPIO4', 'high'], check=True, timeout=30, capture_output=True)
    assert script.stdout.readline().strip() == 'released'
    assert script.wait(10) == 0


@pytest.mark.parametrize('device, code, expected', [
    ('DigitalInputDevice',
     "d = DigitalInputDevice(21)\nout.on()\nassert d.wait_for_active(2)\nprint(d.value)\n"
     "out.off()\nassert d.wait_for_inactive(2)\nprint(d.value)\n", ['1', '0']),
    ('InputDevice',
     "d = InputDevice(21)\nout.on()\nprint(d.value)\nout.off()\nprint(d.value)\n", ['1', '0']),
    ('MotionSensor',
     "d = MotionSensor(21, queue_len=1, sample_rate=50)\nout.on()\nassert d.wait_for_motion(3)\n"
     "print(d.motion_detected)\nout.off()\nassert d.wait_for_no_motion(3)\n"
     "print(d.motion_detected)\n", ['True', 'False']),
    ('LineSensor',
     "d = LineSensor(21, queue_len=2, sample_rate=50)\nout.on()\nassert d.wait_for_no_line(3)\n"
     "print(d.line_detected)\nout.off()\nassert d.wait_for_line(3)\nprint(d.line_detected)\n",
     ['False', 'True']),
])
def test_input_devices_unmodified(wired, device, code, expected):
    result = run_script(wired, f"from gpiozero import {device}, LED\nout = LED(20)\n{code}")
    assert result.stdout.split() == expected


def test_rotary_encoder_counts_steps(wired):
    result = run_script(wired, """
        from gpiozero import RotaryEncoder, DigitalOutputDevice
        # wired to GPIO6 and GPIO19; idle high, as an encoder's contacts to ground
        # with the pull-ups RotaryEncoder turns on: a closed contact reads low
        a = DigitalOutputDevice(5, initial_value=True)
        b = DigitalOutputDevice(13, initial_value=True)
        encoder = RotaryEncoder(6, 19, max_steps=0)
        def turn(sequence, detents):
            for _ in range(detents):
                for closed_a, closed_b in sequence:
                    a.value, b.value = 1 - closed_a, 1 - closed_b
                    # reading the inputs waits until the wired edges have reached them,
                    # so each edge's event is on its way before the next edge
                    assert (encoder.a.pin.state, encoder.b.pin.state) == (a.value, b.value)
        clockwise = [(1, 0), (1, 1), (0, 1), (0, 0)]
        turn(clockwise, 3)
        print(encoder.steps)
        turn(list(reversed(clockwise[:-1])) + [(0, 0)], 5)
        print(encoder.steps)
    """)
    assert result.stdout.split() == ['3', '-2']


def test_led_source_is_a_button(wired):
    run_script(wired, """
        from gpiozero import Button, LED
        from time import sleep, monotonic
        switch = LED(16)                        # wired to GPIO26
        button = Button(26, pull_up=False)
        lamp = LED(12)
        lamp.source = button
        for level in (1, 0, 1):
            switch.value = level
            deadline = monotonic() + 2
            while lamp.value != level and monotonic() < deadline:
                sleep(0.01)
            assert lamp.value == level, level
    """)
    (lamp,) = wired.wait_free(12)
    assert states(lamp)[:4] == [0, 1, 0, 1]


def test_bounce_ignores_edges_within_bounce_time(wired):
    result = run_script(wired, """
        from gpiozero import DigitalInputDevice, LED
        from time import sleep
        out = LED(17)
        d = DigitalInputDevice(27, bounce_time=0.2)
        activations = []
        d.when_activated = lambda: activations.append(1)
        for _ in range(5):                       # chatter: 10 edges in a few ms
            out.on(); out.off()
        out.value                                # a read waits until the writes are taken
        sleep(0.3)
        out.on()                                 # after the bounce time: counted
        assert d.wait_for_active(2)
        sleep(0.1)
        print(len(activations), d.pin.bounce)
    """)
    assert result.stdout.split() == ['2', '0.2']


def test_callbacks_can_read_other_pins(wired):
    result = run_script(wired, """
        from gpiozero import Button, LED
        from threading import Event
        led = LED(17)
        other = LED(22)
        button = Button(27, pull_up=False)
        seen, done = [], Event()
        def pressed():
            other.toggle()                       # a round trip from inside a callback
            seen.append((led.value, other.value, button.is_pressed))
            done.set()
        button.when_pressed = pressed
        led.on()
        assert done.wait(5)
        print(seen)
    """)
    assert result.stdout.strip() == '[(1, 1, True)]'


def test_a_burst_of_1000_edges_arrives_complete_and_in_order(wired):
    result = run_script(wired, """
        from gpiozero import DigitalInputDevice, DigitalOutputDevice
        from threading import Event
        out = DigitalOutputDevice(17)
        d = DigitalInputDevice(27)
        seen, done = [], Event()
        def changed(value):
            seen.append(value)
            if len(seen) == 1000:
                done.set()
        d.when_activated = lambda: changed(1)
        d.when_deactivated = lambda: changed(0)
        for i in range(500):
            out.on()
            out.off()
        assert done.wait(20), len(seen)
        print(len(seen), seen == [1, 0] * 500)
    """)
    assert result.stdout.split() == ['1000', 'True']


def test_mock_helpers_refuse_a_real_backend():
    result = subprocess.run([sys.executable, '-m', 'remoteio_server', '--backend', 'lgpio',
                             '--mock-wire', '17:27'], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and 'mock only' in result.stderr
    from remoteio_server import Server
    with pytest.raises(ValueError, match='mock backend only'):
        Server(backend='native', mock_wires=[(17, 27)])


def test_pulls_are_set_on_the_server_and_fixed_pulls_respected(wired):
    result = run_script(wired, """
        from gpiozero import Button, InputDevice, PinFixedPull
        up = Button(24)                          # pull-up: reads high, not pressed
        down = InputDevice(25, pull_up=False)    # pull-down: reads low
        print(up.is_pressed, up.pin.pull, down.value, down.pin.pull)
        try:
            Button(2, pull_up=False)             # GPIO2 has a fixed pull-up on the board
        except PinFixedPull as exc:
            print('PinFixedPull')
    """)
    assert result.stdout.split() == ['False', 'up', '0', 'down', 'PinFixedPull']
