"""
The MQTT bridge (``remoteio mqtt``, docs/mqtt.md) against the real thing: a
Mosquitto broker on loopback, two mock remoteio servers, the bridge as a
subprocess, and a paho-mqtt client in the test that sees every message (as
Home Assistant would) and sends the commands. What reaches a pin is checked
on the server (its status and history), not in the bridge.
"""

import json
import shutil
import signal
import subprocess

import pytest
from gpiozero import OutputDevice
from gpiozero.exc import GPIOPinInUse

from conftest import ServerProcess, transitions, wait_for
from mqtt_rig import Broker, BridgeProcess, Listener, scratch
from remoteio_factory.mqtt import config as mqtt_config

pytest.importorskip('paho.mqtt.client')

BASE = 'remoteio'
HA = 'homeassistant'


def bridge_config(broker, servers, extra_broker='', keepalive=5):
    a, b = servers
    return f'''
[broker]
host = "127.0.0.1"
port = {broker.port}
client_id = "bridge-under-test"
keepalive = {keepalive}
{extra_broker}

[topics]
base = "{BASE}"
discovery = "{HA}"

[servers.alpha]
host = "127.0.0.1"
port = {a.port}

[servers.beta]
host = "127.0.0.1"
port = {b.port}

[[pins]]
server = "alpha"
gpio = 17
role = "switch"
name = "Kettle"

[[pins]]
server = "alpha"
gpio = 18
role = "light"
name = "Lamp"
frequency = 200

[[pins]]
server = "alpha"
gpio = 22
role = "impulse"
name = "Door opener"
time_ms = 200

[[pins]]
server = "alpha"
gpio = 23
role = "input"
name = "Doorbell"
pull = "up"
device_class = "occupancy"

[[pins]]
server = "beta"
gpio = 5
role = "observed"
name = "Pump (driven by another program)"

[[pins]]
server = "beta"
gpio = 6
role = "switch"
name = "Fan"
'''


def state(key):
    return f'{BASE}/{key}/state'


def command(key):
    return f'{BASE}/{key}/set'


class Rig:
    def __init__(self, broker_options=None, listener_options=None, extra_broker='',
                 start=True):
        self.directory = scratch()
        self.broker = Broker(self.directory, **(broker_options or {}))
        self.servers = [ServerProcess(), ServerProcess()]
        self.listener = Listener(self.broker, **(listener_options or {}))
        self.extra_broker = extra_broker
        self.bridge = self.start_bridge() if start else None

    def start_bridge(self):
        return BridgeProcess(bridge_config(self.broker, self.servers, self.extra_broker),
                             self.directory)

    def online(self, timeout=30):
        for topic in (f'{BASE}/bridge/availability', f'{BASE}/alpha/availability',
                      f'{BASE}/beta/availability'):
            self.listener.wait(topic, 'online', timeout)

    def close(self):
        if self.bridge is not None:
            self.bridge.stop()
        self.listener.close()
        for server in self.servers:
            server.stop()
        self.broker.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@pytest.fixture(scope='module')
def rig():
    rig = Rig()
    try:
        rig.online()
        yield rig
    finally:
        rig.close()


@pytest.fixture
def fresh():
    rigs = []

    def start(**options):
        rigs.append(Rig(**options))
        return rigs[-1]
    yield start
    for rig in rigs:
        rig.close()


# Discovery and topics ---------------------------------------------------------------------

def test_discovery_follows_home_assistants_rules(rig):
    seen = rig.listener
    # (the first, sent before the server was reached, does not know the board yet)
    kettle = json.loads(seen.wait(f'{HA}/switch/remoteio_alpha/gpio17/config',
                                  where=lambda p: 'model' in json.loads(p)['device']))
    assert kettle['unique_id'] == 'remoteio_alpha_gpio17'
    assert kettle['name'] == 'Kettle'
    assert kettle['command_topic'] == command('alpha/17')
    assert kettle['state_topic'] == state('alpha/17')
    assert kettle['device']['identifiers'] == ['remoteio_alpha']
    assert kettle['device']['model']                         # the server's board, from hello
    assert kettle['origin']['name'] == 'remoteio-factory' and kettle['origin']['sw_version']
    assert kettle['availability'] == [{'topic': f'{BASE}/bridge/availability'},
                                      {'topic': f'{BASE}/alpha/availability'},
                                      {'topic': f'{BASE}/alpha/17/availability'}]
    assert kettle['availability_mode'] == 'all'
    lamp = seen.json(f'{HA}/light/remoteio_alpha/gpio18/config')
    assert lamp['schema'] == 'json' and lamp['supported_color_modes'] == ['brightness']
    assert lamp['effect_list'] == ['pulse', 'blink']
    assert lamp['flash'] is False and lamp['transition'] is False   # (Home Assistant: true)
    door = seen.json(f'{HA}/button/remoteio_alpha/gpio22/config')
    assert door['payload_press'] == 'PRESS' and 'state_topic' not in door
    bell = seen.json(f'{HA}/binary_sensor/remoteio_alpha/gpio23/config')
    assert bell['device_class'] == 'occupancy'
    pump = seen.json(f'{HA}/binary_sensor/remoteio_beta/gpio5/config')
    assert pump['json_attributes_topic'] == f'{BASE}/beta/5/attributes'
    assert pump['device']['identifiers'] == ['remoteio_beta']
    unique = [seen.json(topic)['unique_id'] for topic in seen.messages if topic.startswith(HA)
              and topic.endswith('/config')]
    assert len(unique) == len(set(unique)) == 6
    # retained: a consumer that subscribes later still finds them
    late = Listener(rig.broker)
    try:
        assert late.json(f'{HA}/switch/remoteio_beta/gpio6/config')['name'] == 'Fan'
        assert late.wait(f'{BASE}/bridge/availability') == 'online'
        assert late.wait(state('alpha/17')) == 'OFF'
    finally:
        late.close()


def test_home_assistant_restarting_gets_everything_again(rig):
    topics = [f'{HA}/light/remoteio_alpha/gpio18/config', f'{BASE}/alpha/availability',
              f'{BASE}/beta/availability', state('alpha/17'), state('alpha/23'),
              state('beta/5'), f'{BASE}/alpha/22/availability']
    before = {topic: rig.listener.count(topic) for topic in topics}
    rig.listener.publish(f'{HA}/status', 'online')          # Home Assistant's birth message
    for topic in topics:
        rig.listener.wait(topic, since=before[topic])
    assert rig.listener.last(f'{BASE}/alpha/availability') == 'online'


# Commands reach the pins ----------------------------------------------------------------------

def test_a_switch_command_reaches_the_pin_and_the_pin_is_the_bridges(rig):
    alpha = rig.servers[0]
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.wait(state('alpha/17'), 'ON')
    pin = wait_for(lambda: (lambda p: p if p['state'] == 1 else None)(alpha.pin(17)),
                   message='GPIO17 high')
    assert pin['function'] == 'output' and pin['status'] == 'claimed'
    owner = [c for c in alpha.status()['clients'] if 17 in c['pins']]
    assert len(owner) == 1 and owner[0]['client'].startswith('remoteio-factory')
    factory = alpha.factory()
    try:
        with pytest.raises(GPIOPinInUse):
            OutputDevice(17, pin_factory=factory)            # another client cannot have it
    finally:
        factory.close()
    rig.listener.publish(command('alpha/17'), 'off')
    rig.listener.wait(state('alpha/17'), 'OFF')
    wait_for(lambda: alpha.pin(17)['state'] == 0, message='GPIO17 low')


def test_a_light_takes_brightness_and_runs_its_effects_on_the_server(rig):
    alpha = rig.servers[0]
    rig.listener.publish(command('alpha/18'), json.dumps({'state': 'ON', 'brightness': 64}))
    got = json.loads(rig.listener.wait(state('alpha/18'), where=lambda p: '"brightness":64' in p))
    assert got == {'state': 'ON', 'color_mode': 'brightness', 'brightness': 64, 'effect': None}
    pin = wait_for(lambda: (lambda p: p if p['state'] == pytest.approx(64 / 255) else None)(
        alpha.pin(18)), message='GPIO18 at 64/255')
    assert pin['frequency'] == 200
    rig.listener.publish(command('alpha/18'), json.dumps({'state': 'ON', 'effect': 'pulse'}))
    rig.listener.wait(state('alpha/18'), where=lambda p: json.loads(p).get('effect') == 'pulse')
    task = wait_for(lambda: alpha.pin(18).get('task'), message='a pulse task on GPIO18')
    assert task['kind'] == 'pulse'
    rig.listener.publish(command('alpha/18'), 'OFF')          # the next command ends the effect
    off = json.loads(rig.listener.wait(state('alpha/18'),
                                       where=lambda p: json.loads(p)['state'] == 'OFF'))
    assert off['effect'] is None                  # said, so Home Assistant forgets the effect
    wait_for(lambda: not alpha.pin(18).get('task') and alpha.pin(18)['state'] == 0,
             message='GPIO18 off, no task')


def test_an_impulse_is_timed_on_the_server(rig):
    alpha = rig.servers[0]
    before = rig.listener.count(state('alpha/22'))
    rig.listener.publish(command('alpha/22'), 'PRESS')
    rig.listener.wait(state('alpha/22'), 'ON', since=before)
    rig.listener.wait(state('alpha/22'), 'OFF', since=before + 1)
    changes = transitions(alpha.pin(22))
    rises = [i for i, (_, level) in enumerate(changes) if level == 1]
    assert rises, changes
    start, end = changes[rises[-1]][0], changes[rises[-1] + 1][0]
    assert changes[rises[-1] + 1][1] == 0
    assert abs((end - start) - 0.200) < 0.05, changes     # the server's own clock


def test_bad_commands_change_nothing(rig):
    alpha = rig.servers[0]
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.wait(state('alpha/17'), 'ON')
    for topic, payload in ((command('alpha/17'), 'maybe'), (command('alpha/18'), '{"state": 3}'),
                           (command('alpha/23'), 'ON'), (command('alpha/99'), 'ON'),
                           (command('alpha/17'), b'\xff')):
        rig.listener.publish(topic, payload)
    for said in ("ignored the command 'maybe'", 'ignored the command \'{"state": 3}\'',
                 'a pin with role input takes no commands', 'a command for no configured pin',
                 'the command is not UTF-8'):
        wait_for(lambda: said in rig.bridge.text(), message=said)
    assert alpha.pin(17)['state'] == 1
    assert rig.listener.last(state('alpha/17')) == 'ON'
    rig.listener.publish(command('alpha/17'), 'OFF')
    rig.listener.wait(state('alpha/17'), 'OFF')


def test_presses_during_an_impulse_are_ignored(rig):
    alpha = rig.servers[0]
    before = rig.listener.count(state('alpha/22'))
    rises_before = sum(1 for _, level in transitions(alpha.pin(22)) if level == 1)
    for _ in range(5):
        rig.listener.publish(command('alpha/22'), 'PRESS')
    rig.listener.wait(state('alpha/22'), 'OFF', since=before + 1)
    wait_for(lambda: 'the impulse still runs' in rig.bridge.text(), message='presses ignored')
    changes = transitions(alpha.pin(22))
    assert sum(1 for _, level in changes if level == 1) == rises_before + 1, changes
    assert changes[-1][1] == 0


def test_a_pin_another_client_has_is_unavailable_and_the_others_work(fresh):
    from gpiozero import DigitalOutputDevice
    rig = fresh(start=False)
    alpha = rig.servers[0]
    other = alpha.factory()
    try:
        held = DigitalOutputDevice(22, pin_factory=other)    # before the bridge starts
        rig.bridge = rig.start_bridge()
        rig.online()
        rig.listener.wait(f'{BASE}/alpha/22/availability', 'offline')
        rig.listener.wait(f'{BASE}/alpha/17/availability', 'online')
        rig.listener.publish(command('alpha/17'), 'ON')         # the others work
        rig.listener.wait(state('alpha/17'), 'ON')
        wait_for(lambda: alpha.pin(17)['state'] == 1, message='GPIO17 high')
        held.close()                                             # let go: the bridge takes it
        rig.listener.wait(f'{BASE}/alpha/22/availability', 'online', timeout=20)
        changes = transitions(alpha.pin(17))
        assert [level for _, level in changes if level == 0][1:] == [], changes  # no blip
    finally:
        other.close()


# Inputs and observed pins -------------------------------------------------------------------

def test_input_edges_are_published(rig):
    alpha = rig.servers[0]
    driver = alpha.factory()
    try:
        for level, expected in ((0, 'ON'), (1, 'OFF'), (0, 'ON'), (1, 'OFF')):
            driver.drive(23, level)                 # a button to ground, on a pull-up
            rig.listener.wait(state('alpha/23'), expected)
    finally:
        driver.close()


def test_an_observed_pin_shows_what_another_client_does(rig):
    beta = rig.servers[1]
    other = beta.factory()
    try:
        pump = OutputDevice(5, pin_factory=other)
        pump.on()
        rig.listener.wait(state('beta/5'), 'ON')
        attributes = json.loads(rig.listener.wait(
            f'{BASE}/beta/5/attributes', where=lambda p: json.loads(p)['function'] == 'output'))
        assert attributes['owner'] is not None and attributes['status'] == 'claimed'
        pump.off()
        rig.listener.wait(state('beta/5'), 'OFF')
    finally:
        other.close()
    assert not [c for c in beta.status()['clients'] if 5 in c['pins']]   # never the bridge's


# Faults and lifecycle -----------------------------------------------------------------------

def test_a_server_that_dies_goes_offline_and_comes_back_restored(fresh):
    rig = fresh()
    rig.online()
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.publish(command('alpha/18'), json.dumps({'state': 'ON', 'brightness': 128}))
    rig.listener.wait(state('alpha/17'), 'ON')
    alpha = rig.servers[0]
    wait_for(lambda: alpha.pin(17)['state'] == 1 and alpha.pin(18)['state'] > 0)
    port = alpha.port
    alpha.stop(signal.SIGKILL)
    rig.listener.wait(f'{BASE}/alpha/availability', 'offline')
    assert rig.listener.last(f'{BASE}/beta/availability') == 'online'
    # a command while it is away is kept for its return (GPIO17 is left as it was told before)
    rig.listener.publish(command('alpha/18'), '200')
    rig.listener.publish(command('alpha/22'), 'PRESS')     # a press is not kept for later
    wait_for(lambda: "'PRESS' dropped" in rig.bridge.text(), message='the press dropped')
    inputs = rig.listener.count(state('alpha/23'))
    back = rig.servers[0] = ServerProcess('--port', str(port))
    rig.listener.wait(f'{BASE}/alpha/availability', 'online')
    pins = wait_for(lambda: (lambda s: s if s.get(17, {}).get('state') == 1 and
                             s.get(18, {}).get('state') == pytest.approx(200 / 255) else None)(
        {p['gpio']: p for p in back.status()['pins']}), message='GPIO17 and 18 restored')
    assert pins[17]['status'] == 'claimed' and pins[18]['frequency'] == 200
    assert pins[23]['function'] == 'input' and pins[23]['pull'] == 'up'
    assert pins[22]['state'] == 0 and not transitions(pins[22])[1:]   # no late impulse
    rig.listener.wait(state('alpha/23'), 'OFF', since=inputs)   # read afresh
    assert json.loads(rig.listener.last(state('alpha/18')))['brightness'] == 200


def test_a_killed_bridge_goes_offline_and_its_pins_are_soft_closed(fresh):
    rig = fresh()
    rig.online()
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.publish(command('beta/6'), 'ON')
    rig.listener.wait(state('beta/6'), 'ON')
    alpha, beta = rig.servers
    wait_for(lambda: alpha.pin(17)['state'] == 1)
    rig.bridge.stop(signal.SIGKILL)
    rig.listener.wait(f'{BASE}/bridge/availability', 'offline')      # its will
    for pin in alpha.wait_free(17, 18, 22, 23) + beta.wait_free(6):
        assert pin['function'] == 'input'                   # switched off, returned to input
    # and another client may have them now
    factory = alpha.factory()
    try:
        OutputDevice(17, pin_factory=factory).on()
    finally:
        factory.close()


def test_a_stopped_bridge_says_offline_and_releases_its_pins(fresh):
    rig = fresh()
    rig.online()
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.wait(state('alpha/17'), 'ON')
    assert rig.bridge.stop(signal.SIGTERM) == 0
    rig.listener.wait(f'{BASE}/bridge/availability', 'offline')
    assert 'Traceback' not in rig.bridge.text()
    rig.servers[0].wait_free(17, 18, 22, 23)
    # A command kept by the broker (retained) is from some earlier time: a bridge that
    # starts does not carry it out.
    rig.listener.publish(command('alpha/17'), 'ON', retain=True)
    rig.bridge = rig.start_bridge()
    rig.listener.wait(f'{BASE}/bridge/availability', 'online')
    wait_for(lambda: 'ignored a retained command' in rig.bridge.text(),
             message='the retained command ignored')
    assert rig.servers[0].pin(17)['state'] == 0
    rig.listener.publish(command('alpha/17'), '', retain=True)          # (cleared)


def test_the_broker_restarting_gets_everything_published_again(fresh):
    rig = fresh()
    rig.online()
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.wait(state('alpha/17'), 'ON')
    rig.broker.stop()                  # no persistence: its retained messages are gone
    rig.broker.start()
    late = Listener(rig.broker)
    try:
        late.wait(f'{BASE}/bridge/availability', 'online', timeout=30)
        late.json(f'{HA}/switch/remoteio_alpha/gpio17/config')
        assert late.wait(state('alpha/17'), 'ON') == 'ON'       # the state it had
        late.publish(command('alpha/17'), 'OFF')                # and commands work again
        late.wait(state('alpha/17'), 'OFF')
        wait_for(lambda: rig.servers[0].pin(17)['state'] == 0)
    finally:
        late.close()


def test_tls_and_a_password_to_the_broker(fresh, tmp_path):
    ca, cert, key = _certificates(tmp_path)
    password = tmp_path / 'password'
    password.write_text('s3cret-for-tests\n')
    rig = fresh(broker_options={'tls': {'ca': ca, 'cert': cert, 'key': key},
                                'users': {'bridge': 's3cret-for-tests', 'ha': 'ha-pass'}},
                listener_options={'username': 'ha', 'password': 'ha-pass', 'ca': ca},
                extra_broker=f'tls = true\nca_file = "{ca}"\nusername = "bridge"\n'
                             f'password_file = "{password}"')
    rig.online()
    rig.listener.publish(command('alpha/17'), 'ON')
    rig.listener.wait(state('alpha/17'), 'ON')
    wait_for(lambda: rig.servers[0].pin(17)['state'] == 1)
    assert 's3cret' not in rig.bridge.text()


def test_a_wrong_broker_password_is_reported(fresh, tmp_path):
    rig = fresh(broker_options={'users': {'ha': 'ha-pass'}},
                listener_options={'username': 'ha', 'password': 'ha-pass'},
                extra_broker='username = "bridge"\npassword = "wrong"')
    wait_for(lambda: 'refused' in rig.bridge.text(), timeout=15, message='the refusal logged')
    assert rig.listener.last(f'{BASE}/bridge/availability') is None
    assert rig.bridge.process.poll() is None           # it keeps trying, as for any outage


def _certificates(directory):
    ca_key, ca = directory / 'ca.key', directory / 'ca.pem'
    key, csr, cert = directory / 'broker.key', directory / 'broker.csr', directory / 'broker.pem'
    try:
        run = dict(check=True, capture_output=True)
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                        '-keyout', ca_key, '-out', ca, '-subj', '/CN=test CA'], **run)
        subprocess.run(['openssl', 'req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key,
                        '-out', csr, '-subj', '/CN=127.0.0.1'], **run)
        ext = directory / 'ext.cnf'
        ext.write_text('subjectAltName=IP:127.0.0.1\n')
        subprocess.run(['openssl', 'x509', '-req', '-in', csr, '-CA', ca, '-CAkey', ca_key,
                        '-CAcreateserial', '-out', cert, '-days', '1', '-extfile', ext], **run)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f'openssl cannot make test certificates here: {exc}')
    return str(ca), str(cert), str(key)


# The configuration ------------------------------------------------------------------------------

def _config(pins, servers='[servers.a]\nhost = "x"\n', broker=''):
    import tomllib
    return mqtt_config.parse(tomllib.loads(f'[broker]\n{broker}\n{servers}\n{pins}'))


@pytest.mark.parametrize('pins, message', [
    ('', 'no [[pins]]'),
    ('[[pins]]\ngpio = 17\nrole = "lamp"', "role 'lamp' is not one of"),
    ('[[pins]]\ngpio = 17\nrole = "switch"\ncolour = 1', "unknown key 'colour'"),
    ('[[pins]]\ngpio = 17\nrole = "switch"\ntime_ms = 5', "unknown key 'time_ms'"),
    ('[[pins]]\ngpio = "17"\nrole = "switch"', 'gpio must be a whole number'),
    ('[[pins]]\ngpio = 17\nrole = "input"\npull = "up"\nactive_high = false',
     'active_high goes with pull = "floating" only'),
    ('[[pins]]\ngpio = 17\nrole = "switch"\n[[pins]]\ngpio = 17\nrole = "light"',
     'named twice'),
    ('[[pins]]\nserver = "b"\ngpio = 17\nrole = "switch"', "server 'b' is not one of"),
])
def test_configuration_mistakes_are_explained(pins, message):
    with pytest.raises(mqtt_config.ConfigError, match=message.replace('[', r'\[').replace(
            '(', r'\(')):
        _config(pins)


def test_configuration_defaults():
    config = _config('[[pins]]\ngpio = 17\nrole = "light"', broker='tls = true')
    assert config.broker.port == 8883 and config.broker.tls
    assert config.base == 'remoteio' and config.discovery == 'homeassistant'
    pin = config.pins[0]
    assert (pin.server, pin.frequency, pin.active_high) == ('a', 100.0, True)
    with pytest.raises(mqtt_config.ConfigError, match='a password needs a username'):
        _config('[[pins]]\ngpio = 17\nrole = "switch"', broker='password = "x"')
    with pytest.raises(mqtt_config.ConfigError, match='no \\[servers.NAME\\] table'):
        _config('[[pins]]\ngpio = 17\nrole = "switch"', servers='')


def test_check_reports_a_bad_file(tmp_path):
    import sys
    bad = tmp_path / 'bad.toml'
    bad.write_text('[broker]\nport = "x"\n[servers.a]\nhost = "h"\n[[pins]]\ngpio = 1\n'
                   'role = "switch"\n')
    result = subprocess.run([sys.executable, '-m', 'remoteio_factory.cli', 'mqtt', str(bad),
                             '--check'], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert 'port must be a whole number from 1 to 65535' in result.stderr


def test_the_example_configuration_is_valid():
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / 'examples' / 'mqtt-bridge.toml'
    result = subprocess.run([sys.executable, '-m', 'remoteio_factory.cli', 'mqtt', str(example),
                             '--check'], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert '5 pins on 2 servers' in result.stdout
