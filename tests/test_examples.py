"""Every example in examples/ runs as-is against a mock-backend server."""

import os
import subprocess
import sys

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
