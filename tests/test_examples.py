"""Every example in examples/ runs as-is against a mock-backend server."""

import os
import subprocess
import sys
import threading

import pytest

from conftest import states

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, 'examples')


def run_example(server, name, *args, timeout=60):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args],
                            env=server.env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    assert 'Traceback' not in result.stderr, result.stderr
    return result


@pytest.mark.parametrize('name, pins', [
    ('led_blink.py', [17]),
    ('pwmled_pulse.py', [18]),
    ('rgbled_colours.py', [9, 10, 11]),
    ('motor.py', [20, 21]),
    ('traffic_lights.py', [25, 8, 7, 23, 24]),
    ('buzzer.py', [5, 6]),
])
def test_device_examples(server, name, pins):
    run_example(server, name)
    for entry in server.wait_free(*pins):
        assert len(states(entry)) >= 3, (name, entry['name'], entry['history'])


def test_explicit_factory_example(server):
    result = run_example(server, 'explicit_factory.py', server.host, str(server.port))
    assert 'Raspberry Pi 3B, backend mock' in result.stdout
    assert 'a second client cannot take GPIO17' in result.stdout
    (entry,) = server.wait_free(17)
    assert states(entry)[:11] == [0] + [1, 0] * 5


def test_two_servers_example(server, fresh_server):
    other = fresh_server('--revision', 'c03111')
    result = run_example(server, 'two_servers.py', f'{server.host}:{server.port}',
                         f'{other.host}:{other.port}')
    assert 'is a Pi 3B' in result.stdout and 'is a Pi 4B' in result.stdout
    (a,) = server.wait_free(17)
    (b,) = other.wait_free(17)
    assert states(a) == states(b) == [0] + [1, 0] * 5


def test_seed_examples(fresh_server):
    import re
    import socket
    import threading
    with socket.socket() as s:      # a free port for the seed's run_server(port=...)
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    # its log goes nowhere: an unread pipe would fill up and stall the server
    seed_server = subprocess.Popen([sys.executable, os.path.join(EXAMPLES, 'seed_server.py'),
                                    str(port)], stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
    try:
        line = []
        reader = threading.Thread(target=lambda: line.append(seed_server.stdout.readline()))
        reader.start()
        reader.join(30)
        assert line and re.search(r'ready on .*:%d' % port, line[0]), line
        env = dict(os.environ, REMOTEIO_HOST='127.0.0.1', REMOTEIO_PORT=str(port))
        result = subprocess.run([sys.executable, os.path.join(EXAMPLES, 'seed_client.py')],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        from conftest import wait_for
        from remoteio_factory import server_status

        def gpio4_free():
            pins = {p['gpio']: p for p in server_status('127.0.0.1', port)['pins']}
            return pins.get(4) if pins.get(4, {}).get('status') == 'free' else None
        entry = wait_for(gpio4_free, 15, interval=0.05, message='GPIO4 to be released')
        changes = [(e['t'], e['state']) for e in entry['history'] if 'state' in e]
        highs = [b[0] - a[0] for a, b in zip(changes, changes[1:]) if a[1] == 1]
        assert abs(highs[0] - 2.0) < 0.01          # on(time_ms=2000), timed by the server
    finally:
        seed_server.terminate()
        assert seed_server.wait(15) == 0


def test_impulses_example(server):
    result = run_example(server, 'impulses.py')
    assert 'last task: completed' in result.stdout
    assert 'lamp at 0.5' in result.stdout
    (valve,) = server.wait_free(27)
    assert len(states(valve)) >= 8


def test_demo_runs(server):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, 'demo.py'), '--seconds', '2'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'GPIO17' in result.stdout and 'every pin released' in result.stdout
    # the inputs too: the demo presses the button, turns the knob, moves the object
    assert 'button_led.py: button pressed: LED on' in result.stdout
    assert 'pot_dimmer.py: potentiometer at' in result.stdout
    assert 'distance_meter.py: object at' in result.stdout
    assert 'Traceback' not in result.stdout + result.stderr


@pytest.fixture(scope='module')
def breadboard():
    """A server with the demo's virtual breadboard (examples/virtual_pi.circuit)."""
    from conftest import ServerProcess
    proc = ServerProcess('--mock-circuit', os.path.join(EXAMPLES, 'virtual_pi.circuit'))
    yield proc
    proc.stop()


def test_input_examples_follow_the_breadboard(breadboard):
    """button_led, pot_dimmer and distance_meter, with this test as the hand at the breadboard."""
    from conftest import wait_for
    from remoteio_factory.connection import Connection
    hand = Connection(breadboard.host, breadboard.port)
    env = breadboard.env(PYTHONWARNINGS='ignore::gpiozero.exc.PWMSoftwareFallback')
    scripts = {name: subprocess.Popen([sys.executable, os.path.join(EXAMPLES, name), '60'],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
               for name in ('button_led.py', 'pot_dimmer.py', 'distance_meter.py')}
    def last(out):
        return out[-1] if out else ''
    try:
        lines = {name: [] for name in scripts}
        for name, process in scripts.items():
            threading.Thread(target=lambda p=process, out=lines[name]: out.extend(p.stdout),
                             daemon=True).start()
        wait_for(lambda: lines['pot_dimmer.py'] and lines['distance_meter.py'] and all(
            (breadboard.pin(g) or {}).get('status') == 'claimed' for g in (4, 27)),
            timeout=30, message='every example running')
        hand.request('part', name='button4', value=1)
        wait_for(lambda: 'button pressed: LED on' in last(lines['button_led.py']),
                 message='the press')
        assert breadboard.pin(27)['state'] is True
        hand.request('part', name='button4', value=0)
        wait_for(lambda: 'button released: LED off' in last(lines['button_led.py']),
                 message='the release')
        hand.request('part', name='pot0', value=0.8)
        wait_for(lambda: 'potentiometer at 0.80: LED brightness 0.80' in last(lines['pot_dimmer.py']),
                 message='the knob at 0.8')
        hand.request('part', name='hcsr04_23', value=0.25)
        wait_for(lambda: 'object at 25 cm: LED brightness 0.75' in last(lines['distance_meter.py']),
                 message='the object at 25 cm')
    finally:
        hand.close()
        for process in scripts.values():
            process.kill()
            process.wait(10)


def test_watch_draws_the_header_live_in_tmux(server, factory):
    """`remoteio watch` in a real terminal (tmux): the picture follows the pins."""
    import shutil
    import time
    if shutil.which('tmux') is None:
        pytest.skip('tmux is not installed')
    from gpiozero import LED, PWMLED
    session = f'remoteio-watch-{os.getpid()}'
    command = (f'{sys.executable} -m remoteio_factory.cli watch --host {server.host} '
               f'--port {server.port} --interval 0.1')
    subprocess.run(['tmux', 'new-session', '-d', '-s', session, '-x', '110', '-y', '40', command],
                   check=True, timeout=30)

    def screen():
        return subprocess.run(['tmux', 'capture-pane', '-p', '-t', session], capture_output=True,
                              text=True, timeout=10).stdout

    def wait_screen(predicate):
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            text = screen()
            if predicate(text):
                return text
            time.sleep(0.1)
        raise AssertionError(f'the watch screen never showed it:\n{screen()}')

    def row(text, name):
        return next((line for line in text.splitlines() if f' {name} ' in line), '')

    try:
        text = wait_screen(lambda t: 'GPIO17' in t and 'mock' in t)
        assert ' 11 ' in row(text, 'GPIO17') and 'free' in row(text, 'GPIO17')
        led = LED(17, pin_factory=factory)
        pwm = PWMLED(18, pin_factory=factory)
        led.on()
        pwm.value = 0.5
        text = wait_screen(lambda t: 'high' in row(t, 'GPIO17') and '0.50' in row(t, 'GPIO18'))
        assert 'out' in row(text, 'GPIO17') and '███░░░' in row(text, 'GPIO18')
        led.off()
        wait_screen(lambda t: 'low' in row(t, 'GPIO17'))
        led.close()
        pwm.close()
        wait_screen(lambda t: 'free' in row(t, 'GPIO17') and 'free' in row(t, 'GPIO18'))
        subprocess.run(['tmux', 'send-keys', '-t', session, 'C-c'], check=True, timeout=10)
        deadline = time.monotonic() + 10
        while subprocess.run(['tmux', 'has-session', '-t', session],
                             capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, 'watch did not quit on Ctrl+C'
            time.sleep(0.1)
    finally:
        subprocess.run(['tmux', 'kill-session', '-t', session], capture_output=True)
