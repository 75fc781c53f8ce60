"""
Unmodified gpiozero output scripts, run in subprocesses with
GPIOZERO_PIN_FACTORY=remoteio; each test asserts what the *server* did,
from its pin history (``remoteio status``), not what the client believes.
"""

import pytest

from conftest import run_script, states, transitions


def test_led_on_off_toggle_value(server):
    result = run_script(server, """
        from gpiozero import LED
        led = LED(17)
        led.on(); print(led.value, led.is_lit)
        led.off(); print(led.value, led.is_lit)
        led.toggle(); print(led.value)
        led.value = 0; print(led.value)
    """)
    assert result.stdout.split() == ['1', 'True', '0', 'False', '1', '0']
    (pin,) = server.wait_free(17)
    assert states(pin) == [0, 1, 0, 1, 0]
    assert pin['function'] == 'input'  # released: switched off and back to input


def test_led_blink_runs_on_client_thread(server):
    run_script(server, """
        from gpiozero import LED
        led = LED(22)
        led.blink(on_time=0.02, off_time=0.02, n=3, background=False)
    """)
    (pin,) = server.wait_free(22)
    assert states(pin) == [0, 1, 0, 1, 0, 1, 0]
    edges = transitions(pin)[1:7]
    periods = [b[0] - a[0] for a, b in zip(edges[::2], edges[2::2])]
    assert all(0.03 < p < 0.2 for p in periods), periods


def test_pwmled_pulse_and_value(server):
    run_script(server, """
        from gpiozero import PWMLED
        led = PWMLED(18, frequency=200)
        led.value = 0.25
        assert abs(led.value - 0.25) < 1e-9, led.value
        led.pulse(fade_in_time=0.2, fade_out_time=0.2, n=1, background=False)
    """)
    (pin,) = server.wait_free(18)
    duties = [v for v in states(pin) if 0 < v < 1]
    assert 0.25 in duties
    assert [v for _, v in transitions(pin, 'frequency')] == [None, 200.0, None]
    # a fade of 0.2 s at gpiozero's 25 steps/s: about 5 distinct levels each way
    assert len(set(duties)) >= 6
    assert max(states(pin)) == 1.0


def test_pwm_duty_and_frequency_round_trip(factory, server):
    from gpiozero import PWMOutputDevice
    device = PWMOutputDevice(12, frequency=500, pin_factory=factory)
    try:
        device.value = 0.3
        assert device.value == pytest.approx(0.3)
        entry = server.pin(12)
        assert entry['frequency'] == 500.0
        assert entry['state'] == pytest.approx(0.3)
        device.frequency = 1000
        assert server.pin(12)['frequency'] == 1000.0
        assert device.frequency == 1000.0
    finally:
        device.close()
    server.wait_free(12)


@pytest.mark.parametrize('device, pins, code, expected', [
    ('Buzzer', [5], "b = Buzzer(5); b.beep(0.02, 0.02, n=2, background=False)",
     {5: [0, 1, 0, 1, 0]}),
    ('OutputDevice', [6], "d = OutputDevice(6, active_high=False); d.on(); d.off()",
     {6: [0, 1, 0, 1, 0]}),
    ('DigitalOutputDevice', [13], "d = DigitalOutputDevice(13, initial_value=True); d.off()",
     {13: [0, 1, 0]}),
    ('RGBLED', [9, 10, 11], "l = RGBLED(9, 10, 11); l.color = (1, 0.5, 0); l.off()",
     {9: [0, 1.0, 0], 10: [0, 0.5, 0], 11: [0]}),
    ('Motor', [20, 21], "m = Motor(20, 21); m.forward(0.5); m.backward(1); m.stop()",
     {20: [0, 0.5, 0], 21: [0, 1.0, 0]}),
    ('LEDBoard', [23, 24], "b = LEDBoard(23, 24); b.value = (1, 0); b.toggle(); b.off()",
     {23: [0, 1, 0], 24: [0, 1, 0]}),
    ('TrafficLights', [25, 8, 7], "t = TrafficLights(25, 8, 7); t.amber.on(); t.red.on(); t.off()",
     {25: [0, 1, 0], 8: [0, 1, 0], 7: [0]}),
])
def test_output_devices_unmodified(server, device, pins, code, expected):
    run_script(server, f"from gpiozero import {device}\n{code}\n")
    entries = server.wait_free(*pins)
    for gpio, entry in zip(pins, entries):
        assert states(entry) == expected[gpio], (gpio, entry['history'])


def test_source_drives_led(server):
    run_script(server, """
        from gpiozero import LED
        from gpiozero.tools import cos_values
        from time import sleep
        from threading import Event
        led = LED(19)
        done = Event()
        def values():
            for v in (1, 0, 1, 0, 1):
                yield v
            done.set()
            while True:
                yield 0
        led.source_delay = 0.005
        led.source = values()
        done.wait(5)
        led.source = None
        led.off()
    """)
    (pin,) = server.wait_free(19)
    assert states(pin)[:6] == [0, 1, 0, 1, 0, 1]


def test_explicit_factory_and_two_servers(server, fresh_server):
    other = fresh_server('--revision', 'c03111')
    result = run_script(server, f"""
        from gpiozero import LED
        from remoteio_factory import RemoteIOFactory
        a = RemoteIOFactory(host='127.0.0.1', port={server.port})
        b = RemoteIOFactory(host='127.0.0.1', port={other.port})
        print(a.board_info.model, b.board_info.model)
        LED(26, pin_factory=a).on()
        LED(26, pin_factory=b).blink(0.01, 0.01, n=2, background=False)
    """, env=dict(server.env(), GPIOZERO_PIN_FACTORY='mock'))
    assert result.stdout.split() == ['3B', '4B']
    (a,) = server.wait_free(26)
    (b,) = other.wait_free(26)
    assert states(a) == [0, 1, 0]
    assert states(b) == [0, 1, 0, 1, 0]
