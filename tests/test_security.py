"""
Trust: protected mode, the token challenge-response, host and pin allow-lists,
the lease that ends silent connections, and a fuzz run of bad input.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from gpiozero import LED, PinInvalidPin

from conftest import ServerProcess, start_script, wait_for
from remoteio_factory import (
    RemoteIOAuthError, RemoteIOConnectionError, RemoteIOFactory, server_status)
from remoteio_factory.protocol import auth_mac

TOKEN = 'correct horse battery staple 42'


@pytest.fixture(scope='module')
def locked(tmp_path_factory):
    """A server with a token (from a file) and an allow-list of pins."""
    path = tmp_path_factory.mktemp('token') / 'token'
    path.write_text(TOKEN + '\n')
    proc = ServerProcess('--token-file', str(path), '--allow-pins', '17,18,22-27')
    yield proc
    proc.stop()


def raw(server):
    sock = socket.create_connection((server.host, server.port), timeout=5)
    return sock, sock.makefile('rb')


def exchange(sock, reader, message):
    sock.sendall(json.dumps(message).encode() + b'\n')
    return json.loads(reader.readline())


def test_no_token_is_refused_with_a_clear_message(locked):
    with pytest.raises(RemoteIOAuthError, match='requires a token: set REMOTEIO_TOKEN'):
        locked.factory()


def test_wrong_token_is_refused(locked):
    with pytest.raises(RemoteIOAuthError, match='refused our token'):
        locked.factory(token='not the token at all, sorry')


def test_right_token_works_and_allow_pins_applies(locked):
    factory = locked.factory(token=TOKEN)
    try:
        led = LED(17, pin_factory=factory)
        led.on()
        assert led.value == 1
        with pytest.raises(PinInvalidPin, match='allow-pins'):
            LED(4, pin_factory=factory)
        led.close()
    finally:
        factory.close()
    status = server_status(locked.host, locked.port, token=TOKEN)
    assert status['security']['token'] and status['security']['allow_pins'][:2] == [17, 18]


def test_the_token_comes_from_the_environment(locked):
    bindir = os.path.dirname(sys.executable)
    result = subprocess.run([os.path.join(bindir, 'remoteio'), 'status', '--port', str(locked.port),
                             '--host', locked.host], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, REMOTEIO_TOKEN=TOKEN))
    assert result.returncode == 0, result.stderr
    result = subprocess.run([os.path.join(bindir, 'remoteio'), 'status', '--port', str(locked.port),
                             '--host', locked.host], capture_output=True, text=True, timeout=30,
                            env={k: v for k, v in os.environ.items() if k != 'REMOTEIO_TOKEN'})
    assert result.returncode == 2 and 'requires a token' in result.stderr


def test_requests_before_auth_and_replayed_answers_are_refused(locked):
    sock, reader = raw(locked)
    with sock:
        hello = exchange(sock, reader, {'id': 1, 'op': 'hello', 'protocol': 1})
        assert hello['auth'] == 'hmac-sha256' and len(hello['nonce']) == 64
        reply = exchange(sock, reader, {'id': 2, 'op': 'claim', 'pin': 17})
        assert reply['error']['code'] == 'auth_required'
        answer = auth_mac(TOKEN.encode(), 'client', hello['nonce'])
        reply = exchange(sock, reader, {'id': 3, 'op': 'auth', 'mac': answer, 'nonce': 'a' * 32})
        assert reply['ok'] and reply['proof'] == auth_mac(TOKEN.encode(), 'server', 'a' * 32)
    # the same answer on a new connection: a fresh nonce, so it is worthless
    sock, reader = raw(locked)
    with sock:
        exchange(sock, reader, {'id': 1, 'op': 'hello', 'protocol': 1})
        reply = exchange(sock, reader, {'id': 2, 'op': 'auth', 'mac': answer, 'nonce': 'b' * 32})
        assert reply['error']['code'] == 'auth_failed'
        closing = json.loads(reader.readline())
        assert closing['push'] == 'closing' and 'wrong token' in closing['reason']
        assert reader.readline() == b''


def test_a_short_token_is_refused_at_start():
    result = subprocess.run([sys.executable, '-m', 'remoteio_server', '--backend', 'mock',
                             '--token', 'short'], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and 'at least 16 characters' in result.stderr


# Peers that are not on this machine: a network namespace of the test's own ---------------

# A /30 of the namespace's own, picked at random so that runs side by side do not clash.
_NET = random.Random().randrange(1 << 14) * 4
NETNS_HOST = f'10.231.{_NET >> 8}.{(_NET & 255) + 1}'
NETNS_PEER = f'10.231.{_NET >> 8}.{(_NET & 255) + 2}'


@pytest.fixture(scope='module')
def netns():
    """A network namespace joined to this one by a veth pair; skipped where not permitted."""
    name = f'rio{uuid.uuid4().hex[:8]}'
    host_if, peer_if = f'{name}a', f'{name}b'
    commands = [
        ['ip', 'netns', 'add', name],
        ['ip', 'link', 'add', host_if, 'type', 'veth', 'peer', 'name', peer_if],
        ['ip', 'link', 'set', peer_if, 'netns', name],
        ['ip', 'addr', 'add', f'{NETNS_HOST}/30', 'dev', host_if],
        ['ip', 'link', 'set', host_if, 'up'],
        ['ip', 'netns', 'exec', name, 'ip', 'addr', 'add', f'{NETNS_PEER}/30', 'dev', peer_if],
        ['ip', 'netns', 'exec', name, 'ip', 'link', 'set', peer_if, 'up'],
        ['ip', 'netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up'],
    ]
    try:
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        subprocess.run(['ip', 'netns', 'del', name], capture_output=True)
        pytest.skip(f'cannot create a network namespace here: {exc}')
    yield name
    subprocess.run(['ip', 'link', 'del', host_if], capture_output=True)
    subprocess.run(['ip', 'netns', 'del', name], capture_output=True)


def run_in(netns, code, port, **env):
    return subprocess.run(
        ['ip', 'netns', 'exec', netns, sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, REMOTEIO_HOST=NETNS_HOST, REMOTEIO_PORT=str(port),
                 GPIOZERO_PIN_FACTORY='remoteio', **env))


@pytest.fixture
def open_server():
    """A server on 0.0.0.0 (reachable from the namespace), no token: protected mode."""
    proc = ServerProcess('--host', '0.0.0.0')
    yield proc
    proc.stop()


def test_protected_mode_refuses_other_machines(netns, open_server):
    result = run_in(netns, "from gpiozero import LED\nLED(17)\n", open_server.port)
    assert result.returncode == 1
    assert 'RemoteIOConnectionError' in result.stderr
    assert 'protected mode' in result.stderr and 'token' in result.stderr
    assert open_server.alive()


def test_a_token_lets_other_machines_in(netns, tmp_path):
    path = tmp_path / 'token'
    path.write_text(TOKEN)
    server = ServerProcess('--host', '0.0.0.0', '--token-file', str(path))
    try:
        code = "from gpiozero import LED\nled = LED(17)\nled.on()\nprint(led.value)\n"
        assert run_in(netns, code, server.port, REMOTEIO_TOKEN=TOKEN).stdout.strip() == '1'
        refused = run_in(netns, code, server.port, REMOTEIO_TOKEN='a wrong token, 123456')
        assert 'refused our token' in refused.stderr
    finally:
        server.stop()


def test_allow_hosts_refuses_others(netns, tmp_path):
    path = tmp_path / 'token'
    path.write_text(TOKEN)
    server = ServerProcess('--host', '0.0.0.0', '--token-file', str(path),
                           '--allow-hosts', '127.0.0.1,192.0.2.0/24')
    try:
        result = run_in(netns, "from gpiozero import LED\nLED(17)\n", server.port,
                        REMOTEIO_TOKEN=TOKEN)
        assert "not in the server's --allow-hosts list" in result.stderr
    finally:
        server.stop()


# The lease -----------------------------------------------------------------------------

def test_a_silent_client_loses_its_pins(fresh_server):
    server = fresh_server('--lease', '0.5')
    sock, reader = raw(server)
    with sock:
        exchange(sock, reader, {'id': 1, 'op': 'hello', 'protocol': 1})
        exchange(sock, reader, {'id': 2, 'op': 'claim', 'pin': 17})
        exchange(sock, reader, {'id': 3, 'op': 'setup', 'pin': 17, 'function': 'output', 'state': 1})
        started = time.monotonic()
        closing = json.loads(reader.readline())        # and then we say nothing
        assert closing['push'] == 'closing' and 'lease expired' in closing['reason']
        assert 0.4 < time.monotonic() - started < 3
    (entry,) = server.wait_free(17)
    assert entry['function'] == 'input'


def test_a_frozen_client_is_dropped_and_learns_it_promptly(fresh_server):
    server = fresh_server('--lease', '1')
    # Without reconnecting (REMOTEIO_RECONNECT=0; by default the client would reconnect
    # and restore the pin): the loss is fatal at once, and the main thread is told even
    # while it still waits for its input.
    client = start_script(server, """
        from gpiozero import LED
        import sys, time
        led = LED(17)
        led.on()
        started = None
        try:                                     # (the loss may be raised anywhere after 'ready')
            print('ready', flush=True)
            sys.stdin.readline()                 # frozen meanwhile
            started = time.monotonic()
            led.value
        except Exception as exc:
            print(type(exc).__name__, round(time.monotonic() - (started or time.monotonic()), 1),
                  flush=True)
    """, env=server.env(REMOTEIO_RECONNECT='0'))
    bystander = server.factory()
    client.send_signal(signal.SIGSTOP)            # neither reads nor writes nor heartbeats
    try:
        led = LED(18, pin_factory=bystander)       # meanwhile others are served as usual
        for _ in range(20):
            led.toggle()
        assert led.value == 0
        (entry,) = server.wait_free(17, timeout=10)
        assert entry['function'] == 'input'
    finally:
        client.send_signal(signal.SIGCONT)
        bystander.close()
    out, err = client.communicate('\n', timeout=30)
    assert len(out.split()) == 2, (out, err)
    name, seconds = out.split()
    assert name == 'RemoteIOConnectionError' and float(seconds) < 2


def test_a_working_client_keeps_its_lease(fresh_server):
    server = fresh_server('--lease', '0.6')
    factory = server.factory()
    try:
        led = LED(17, pin_factory=factory)
        led.on()
        time.sleep(2)                             # idle for over three leases
        assert led.value == 1
    finally:
        factory.close()


# Fuzzing ---------------------------------------------------------------------------------

def fuzz_messages(rng, count):
    """(category, bytes) of bad input, from a seeded generator."""
    pins = [17, 99, -1, 2**70, '17', None, True, 1.5]
    categories = {
        'truncated': lambda: json.dumps({'id': rng.randrange(9), 'op': 'write', 'pin': 17,
                                         'state': 1}).encode()[:rng.randrange(1, 30)] + b'\n',
        'garbage': lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b'\n',
        'wrong_types': lambda: json.dumps({'id': rng.choice(['1', [], {}, 1.5, None]),
                                           'op': rng.choice([1, None, [], 'claim'])}).encode() + b'\n',
        'unknown_op': lambda: json.dumps({'id': 5, 'op': rng.choice(
            ['__del__', 'eval', 'exec', '__class__', 'getattr', 'drop', '']) }).encode() + b'\n',
        'huge_numbers': lambda: json.dumps({'id': 5, 'op': rng.choice(['write', 'task']),
                                            'pin': rng.choice(pins), 'state': 10**rng.randrange(3, 400),
                                            'task': 'on', 'time_ms': 10**rng.randrange(9, 400)}
                                           ).encode() + b'\n',
        'nan': lambda: b'{"id": 5, "op": "write", "pin": 17, "state": ' +
        rng.choice([b'NaN', b'Infinity', b'-Infinity']) + b'}\n',
        'negative_times': lambda: json.dumps({'id': 5, 'op': 'task', 'pin': 17, 'task': 'on',
                                              'time_ms': -rng.randrange(1, 10**6)}).encode() + b'\n',
        'bad_fields': lambda: json.dumps({'id': 5, 'op': rng.choice(['setup', 'edges', 'pull',
                                                                     'frequency', 'task', 'drive']),
                                          'pin': 17, 'function': rng.choice(['alt0', 1, None]),
                                          'edges': 'sideways', 'pull': 'maybe', 'frequency': -1,
                                          'task': 'explode'}).encode() + b'\n',
        'deep_nesting': lambda: b'{"id": 5, "op": "ping", "x": ' + b'[' * 5000 + b']' * 5000 + b'}\n',
        'replayed_auth': lambda: json.dumps({'id': 5, 'op': 'auth', 'mac': '0' * 64,
                                             'nonce': 'x' * 32}).encode() + b'\n',
    }
    names = sorted(categories)
    for i in range(count):
        name = names[i % len(names)]
        yield name, categories[name]()


def test_fuzzing_never_hurts_the_server_or_a_bystander(server, factory):
    bystander = LED(20, pin_factory=factory)
    rng = random.Random(20261124)
    counts = {}
    before_hello = 0
    sock, reader = raw(server)
    sock.settimeout(10)
    hello_sent = False
    for index, (category, payload) in enumerate(fuzz_messages(rng, 2000)):
        if not hello_sent and index >= 10:
            assert exchange(sock, reader, {'id': 1, 'op': 'hello', 'protocol': 1})['ok']
            exchange(sock, reader, {'id': 2, 'op': 'claim', 'pin': 17})
            hello_sent = True
        sock.sendall(payload)
        line = reader.readline()
        assert line, (category, payload[:80])
        reply = json.loads(line)
        if reply.get('push') == 'closing':              # allowed: a closed connection with a reason
            assert reply['reason']
            sock.close()
            sock, reader = raw(server)
            sock.settimeout(10)
            hello_sent = False
        else:
            assert reply['ok'] is False and reply['error']['code'] and reply['error']['message'], \
                (category, payload[:80], reply)
        if not hello_sent:
            before_hello += 1
        counts[category] = counts.get(category, 0) + 1
        if index % 200 == 0:
            bystander.toggle()
    sock.close()
    assert len(counts) >= 10 and sum(counts.values()) == 2000 and before_hello >= 10
    assert server.alive()
    bystander.on()
    assert bystander.value == 1 and server.pin(20)['state'] is True
    bystander.close()
    print(f'fuzz: {sum(counts.values())} messages in {len(counts)} categories')


# TLS -----------------------------------------------------------------------------------

def make_certificate(directory, name):
    """A self-signed certificate for localhost and 127.0.0.1 (its own CA)."""
    cert, key = directory / f'{name}.pem', directory / f'{name}.key'
    subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1',
                    '-keyout', str(key), '-out', str(cert), '-subj', '/CN=localhost',
                    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope='module')
def tls_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp('tls')
    try:
        cert, key = make_certificate(directory, 'server')
        other, _ = make_certificate(directory, 'other')
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f'openssl cannot make test certificates here: {exc}')
    proc = ServerProcess('--tls-cert', str(cert), '--tls-key', str(key), '--mock-wire', '17:27')
    proc.ca, proc.other_ca = str(cert), str(other)
    yield proc
    proc.stop()


def test_tls_end_to_end(tls_server):
    from gpiozero import Button
    factory = tls_server.factory(tls_ca=tls_server.ca)
    try:
        led = LED(17, pin_factory=factory)
        button = Button(27, pull_up=False, pin_factory=factory)
        seen = []
        button.when_pressed = lambda: seen.append(1)
        for i in range(2000):                  # pipelined writes through the TLS pump
            led.value = i % 2
        led.on()
        assert led.value == 1 and button.is_pressed
        wait_for(lambda: len(seen) == 1000, message='1000 presses')
        status = server_status(tls_server.host, tls_server.port)   # with REMOTEIO_TLS_CA unset...
    except RemoteIOConnectionError as exc:
        assert 'TLS' in str(exc)                                    # ...a plain client is refused
    else:
        pytest.fail(f'a plain client got the status of a TLS server: {status}')
    finally:
        factory.close()
    env_status = subprocess.run(
        [sys.executable, '-m', 'remoteio_factory.cli', 'status', '--json', '--host', '127.0.0.1',
         '--port', str(tls_server.port)], capture_output=True, text=True, timeout=30,
        env=dict(os.environ, REMOTEIO_TLS_CA=tls_server.ca))
    assert env_status.returncode == 0, env_status.stderr
    assert json.loads(env_status.stdout)['security']['tls'] is True


def test_tls_with_a_certificate_we_do_not_trust_is_refused(tls_server):
    started = time.monotonic()
    with pytest.raises(RemoteIOConnectionError, match='TLS handshake .* failed'):
        tls_server.factory(tls_ca=tls_server.other_ca)
    assert time.monotonic() - started < 5
    assert tls_server.alive()


def test_a_tls_client_of_a_plain_server_fails_promptly(server, tls_server):
    started = time.monotonic()
    with pytest.raises(RemoteIOConnectionError, match='TLS'):
        RemoteIOFactory(host=server.host, port=server.port, tls_ca=tls_server.ca,
                        connect_timeout=2)
    assert time.monotonic() - started < 5


# Reconnecting ----------------------------------------------------------------------------

def test_reconnect_restores_pins_after_the_server_comes_back(fresh_server):
    from gpiozero import Button, PWMLED
    first = fresh_server('--mock-wire', '17:27')
    port = first.port
    factory = first.factory(reconnect=True)
    try:
        led = LED(17, pin_factory=factory)
        lamp = PWMLED(18, frequency=500, pin_factory=factory)
        button = Button(27, pull_up=False, pin_factory=factory)
        presses = []
        button.when_pressed = lambda: presses.append(1)
        led.on()
        lamp.value = 0.3
        wait_for(lambda: presses == [1], message='the first press')
        first.stop(sig=signal.SIGKILL)
        wait_for(lambda: factory.reconnecting, 5, message='the factory to notice')
        led.off()                                   # during the gap: kept, applied on return
        second = fresh_server('--mock-wire', '17:27', '--port', str(port))
        wait_for(lambda: not factory.reconnecting, 15, message='the reconnection')
        pins = {p['gpio']: p for p in second.status()['pins']}
        assert pins[17]['function'] == 'output' and pins[17]['state'] is False
        assert pins[18]['frequency'] == 500.0 and pins[18]['state'] == pytest.approx(0.3)
        assert pins[27]['function'] == 'input' and pins[27]['status'] == 'claimed'
        led.on()                                    # events flow again
        wait_for(lambda: presses == [1, 1], message='a press after reconnecting')
        assert lamp.value == pytest.approx(0.3)
    finally:
        factory.close()


def test_a_token_is_not_given_to_a_server_that_asks_for_none(server):
    with pytest.raises(RemoteIOAuthError, match='asks for no token'):
        RemoteIOFactory(host=server.host, port=server.port, token=TOKEN)


def test_refusals_reach_tls_clients_in_tls(tls_server, tmp_path):
    cert, key = make_certificate(tmp_path, 'refusing')
    refusing = ServerProcess('--tls-cert', str(cert), '--tls-key', str(key),
                             '--token', TOKEN, '--allow-hosts', '192.0.2.0/24')
    try:
        with pytest.raises(RemoteIOConnectionError, match='allow-hosts'):
            RemoteIOFactory(host='127.0.0.1', port=refusing.port, tls_ca=str(cert), token=TOKEN)
    finally:
        refusing.stop()
