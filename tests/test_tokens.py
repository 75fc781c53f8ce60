"""
Scoped tokens (``--tokens FILE``): several named tokens, each limited to some
GPIOs or read-only; the names in status and logs, the secrets never.
"""

import subprocess
import sys

import pytest
from gpiozero import LED, Button
from gpiozero.exc import PinInvalidPin

from conftest import ServerProcess, wait_for
from remoteio_factory import RemoteIOAuthError
from remoteio_factory.connection import Connection
from remoteio_factory.observe import Observation

SECRETS = {
    'group1': 'first group of the class, table 1',
    'group2': 'second group of the class, table 2',
    'viewer': 'the teacher looks, touches nothing',
    'admin': 'the teacher, with every pin there is',
}
FULL = 'the single token of --token-file, full'


@pytest.fixture(scope='module')
def classroom(tmp_path_factory):
    folder = tmp_path_factory.mktemp('tokens')
    tokens = folder / 'tokens'
    tokens.write_text(
        '# name   secret                                 pins         access\n'
        f'group1  {SECRETS["group1"].replace(" ", "_")}  17,18        rw\n'
        f'group2  {SECRETS["group2"].replace(" ", "_")}  22-24\n'
        f'viewer  {SECRETS["viewer"].replace(" ", "_")}  all          ro\n'
        f'admin   {SECRETS["admin"].replace(" ", "_")}\n')
    single = folder / 'token'
    single.write_text(FULL.replace(' ', '_') + '\n')
    proc = ServerProcess('--tokens', str(tokens), '--token-file', str(single),
                         '--mock-part', 'button:4')
    proc.token = SECRETS['admin'].replace(' ', '_')
    yield proc
    proc.stop()


def secret(name):
    return SECRETS[name].replace(' ', '_')


def test_each_token_claims_its_own_pins_only(classroom):
    one = classroom.factory(token=secret('group1'))
    two = classroom.factory(token=secret('group2'))
    try:
        leds = [LED(17, pin_factory=one), LED(22, pin_factory=two)]
        for led in leds:
            led.on()
        with pytest.raises(PinInvalidPin, match='token group1 may not claim or drive GPIO22'):
            LED(22, pin_factory=one)
        with pytest.raises(PinInvalidPin, match=r'token group2 .* GPIO17 \(it may: 22,23,24\)'):
            LED(17, pin_factory=two)
        with pytest.raises(PinInvalidPin, match='token group1 may not'):
            one.drive(4, 0)
    finally:
        one.close()
        two.close()


def test_a_read_only_token_observes_but_never_claims_or_drives(classroom):
    writer = classroom.factory(token=secret('group1'))
    try:
        led = LED(18, pin_factory=writer)             # (kept: a dropped LED is closed)
        led.on()
        with Observation(classroom.host, classroom.port, token=secret('viewer')) as seen:
            assert seen.connection.scope == {'token': 'viewer', 'read_only': True, 'pins': None}
            wait_for(lambda: any(p['gpio'] == 18 and p['state'] for p in seen.status()['pins']),
                     message="the other client's LED in the observation")
        viewer = classroom.factory(token=secret('viewer'))
        try:
            with pytest.raises(PinInvalidPin, match='token viewer is read-only'):
                Button(23, pin_factory=viewer)
            with pytest.raises(PinInvalidPin, match='read-only'):
                viewer.drive(17, 1)
            with pytest.raises(PinInvalidPin, match='read-only'):
                viewer.set_part('button4', 1)
            assert viewer.status()['backend'] == 'mock'
        finally:
            viewer.close()
    finally:
        writer.close()


def test_the_single_token_file_is_a_full_access_token_and_wrong_tokens_are_refused(classroom):
    full = classroom.factory(token=FULL.replace(' ', '_'))
    try:
        leds = [LED(27, pin_factory=full), LED(5, pin_factory=full)]
        for led in leds:
            led.on()
    finally:
        full.close()
    with pytest.raises(RemoteIOAuthError, match='refused our token'):
        classroom.factory(token='no such token, not at all')


def test_names_show_in_status_and_logs_secrets_never(classroom):
    connection = Connection(classroom.host, classroom.port, token=secret('group2'))
    try:
        connection.request('claim', pin=23)
        status = classroom.status(0)
        client = next(c for c in status['clients'] if 23 in c['pins'])
        assert client['token'] == 'group2'
        text = subprocess.run(
            [sys.executable, '-m', 'remoteio_factory.cli', 'status', '--port',
             str(classroom.port), '--json'], env=dict(classroom.env(),
                                                        REMOTEIO_TOKEN=secret('admin')),
            capture_output=True, text=True, timeout=30).stdout
        assert '"group2"' in text
    finally:
        connection.close()
    logs = ''.join(classroom.stderr_lines)
    for value in SECRETS.values():
        assert value.replace(' ', '_') not in logs and value.replace(' ', '_') not in text


def test_a_pin_scoped_token_cannot_set_another_groups_adc(tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('group1 first_group_of_the_class_table_1 17\n'
                    'group2 second_group_of_the_class_table_2 7-11\n')
    proc = ServerProcess('--tokens', str(path), '--mock-spi', 'mcp3008:0')
    try:
        one = Connection(proc.host, proc.port, token='first_group_of_the_class_table_1')
        two = Connection(proc.host, proc.port, token='second_group_of_the_class_table_2')
        try:
            with pytest.raises(PinInvalidPin, match='token group1 may not set a channel'):
                one.request('set_channel', device=8, channel=0, value=0.9)
            two.request('set_channel', device=8, channel=0, value=0.5)
        finally:
            one.close()
            two.close()
    finally:
        proc.stop()


def test_a_hash_inside_a_secret_is_part_of_it(tmp_path):
    path = tmp_path / 'tokens'
    path.write_text('# a comment line\n'
                    'group1 0123456789abcdef#Jd0c2lrY2xh 17\n')
    proc = ServerProcess('--tokens', str(path))
    try:
        with pytest.raises(RemoteIOAuthError):
            proc.factory(token='0123456789abcdef')          # (not the secret: it has more)
        factory = proc.factory(token='0123456789abcdef#Jd0c2lrY2xh')
        try:
            with pytest.raises(PinInvalidPin, match='may not'):
                LED(18, pin_factory=factory)                 # the pins field still counts
        finally:
            factory.close()
    finally:
        proc.stop()


@pytest.mark.parametrize('content, message', [
    ('alice short rw\n', 'at least 16 characters'),
    ('b3Jd0c2lrY2xhc3Nyb29tMQ 17,18 rw\n', 'is the name missing'),
    ('alice a_secret_long_enough_here 17,x\n', 'field 3 is neither "all"'),
    ('alice a_secret_long_enough_here\nalice another_secret_long_enough\n', 'same name'),
    ('1alice a_secret_long_enough_here\n', 'token name'),
    ('# nothing but a comment\n', 'holds no token'),
])
def test_a_bad_tokens_file_stops_the_server_with_what_is_wrong(tmp_path, content, message):
    path = tmp_path / 'tokens'
    path.write_text(content)
    result = subprocess.run([sys.executable, '-m', 'remoteio_server', '--host', '127.0.0.1',
                             '--port', '0', '--backend', 'mock', '--tokens', str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert 'b3Jd0c2lrY2xhc3Nyb29tMQ' not in result.stderr      # a secret is never printed
