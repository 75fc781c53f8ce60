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


def test_demo_runs(server):
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, 'demo.py'), '--seconds', '2'],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert 'GPIO17' in result.stdout and 'every pin released' in result.stdout
