"""
The server under disconnects and bad input: pins of a vanished client are
switched off and released and their workers end; malformed, oversized and
unknown messages get a clear error while everyone else is served on.
"""

import json
import os
import signal
import socket
import time

import pytest
from gpiozero import LED

from conftest import start_script, states, wait_for


def process_gone(pid):
    """True once *pid* has exited and been reaped (no zombie left)."""
    try:
        with open(f'/proc/{pid}/stat'):
            return False  # still there: running, or a zombie nobody reaped
    except FileNotFoundError:
        return True


HOLD_PINS = """
    from gpiozero import LED, PWMLED
    import sys, time
    led = LED(17)
    led.on()
    pwm = PWMLED(18)
    pwm.value = 0.5
    print('ready', flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize('how', ['sigterm', 'sigkill'])
def test_client_disconnect_releases_pins_and_ends_workers(server, how):
    client = start_script(server, HOLD_PINS)
    status = server.status()
    held = {p['gpio']: p for p in status['pins'] if p['status'] == 'claimed'}
    assert held[17]['state'] is True and held[18]['state'] == 0.5
    pids = [held[17]['worker_pid'], held[18]['worker_pid']]
    assert all(os.path.exists(f'/proc/{pid}') for pid in pids)
    client.send_signal(signal.SIGTERM if how == 'sigterm' else signal.SIGKILL)
    client.wait(10)
    led, pwm = server.wait_free(17, 18)
    assert led['function'] == 'input' and pwm['function'] == 'input'
    assert states(pwm)[-1] == 0 and pwm['frequency'] is None
    wait_for(lambda: all(process_gone(pid) for pid in pids), 10, message='workers to exit')
    assert not [c for c in server.status()['clients'] if c['pins']]


def raw_connection(server):
    sock = socket.create_connection((server.host, server.port), timeout=5)
    return sock, sock.makefile('rb')


def exchange(sock, reader, payload):
    sock.sendall(payload if isinstance(payload, bytes) else json.dumps(payload).encode() + b'\n')
    return json.loads(reader.readline())


def hello(sock, reader):
    reply = exchange(sock, reader, {'id': 1, 'op': 'hello', 'protocol': 1})
    assert reply['ok'] and reply['protocol'] == 1
    return reply


def test_hello_reply(server):
    sock, reader = raw_connection(server)
    with sock:
        reply = hello(sock, reader)
        assert reply['backend'] == 'mock' and reply['revision'] == 'a02082'
        assert reply['mode'] == 'wait' and reply['capabilities']['pwm'] is True
        assert reply['max_message'] == 65536 and isinstance(reply['monotonic'], float)


@pytest.mark.parametrize('payload, code', [
    (b'this is not json\n', 'malformed'),
    (b'[1, 2, 3]\n', 'malformed'),
    (b'{"id": 5, "op": "write", "pin": 17, "state": NaN}\n', 'malformed'),
    (b'\xff\xfe\n', 'malformed'),
    ({'id': 'x', 'op': 'ping'}, 'bad_request'),
    ({'id': -1, 'op': 'ping'}, 'bad_request'),
    ({'id': 2, 'op': 7}, 'bad_request'),
    ({'id': 2, 'op': '__del__'}, 'unknown_op'),
    ({'id': 2, 'op': 'claim', 'pin': 99}, 'invalid_pin'),
    ({'id': 2, 'op': 'claim', 'pin': '17'}, 'invalid_pin'),
    ({'id': 2, 'op': 'claim', 'pin': True}, 'invalid_pin'),
    ({'id': 2, 'op': 'write', 'pin': 17, 'state': 1}, 'not_claimed'),
    ({'id': 2, 'op': 'status', 'history': 10**30}, 'bad_request'),
    ({'id': 2, 'op': 'hello', 'protocol': 99}, 'unsupported_protocol'),
])
def test_bad_messages_get_clear_errors(server, payload, code):
    sock, reader = raw_connection(server)
    with sock:
        hello(sock, reader)
        reply = exchange(sock, reader, payload)
        assert reply['ok'] is False and reply['error']['code'] == code, reply
        assert reply['error']['message']
        # the connection is still served
        assert exchange(sock, reader, {'id': 3, 'op': 'ping'})['ok'] is True


def test_bad_values_on_a_claimed_pin(server):
    sock, reader = raw_connection(server)
    with sock:
        hello(sock, reader)
        assert exchange(sock, reader, {'id': 2, 'op': 'claim', 'pin': 16})['ok']
        for request, code in [
            ({'op': 'write', 'pin': 16, 'state': 1}, 'set_input'),      # still an input
            ({'op': 'setup', 'pin': 16, 'function': 'alt0'}, 'invalid_function'),
            ({'op': 'setup', 'pin': 16, 'function': 'output', 'state': 2}, 'invalid_state'),
            ({'op': 'write', 'pin': 16, 'state': -0.1}, 'invalid_state'),
            ({'op': 'write', 'pin': 16, 'state': '1'}, 'invalid_state'),
            ({'op': 'write', 'pin': 16}, 'bad_request'),
            ({'op': 'frequency', 'pin': 16, 'frequency': -5}, 'bad_request'),
            ({'op': 'frequency', 'pin': 16, 'frequency': 1e300}, 'bad_request'),
            ({'op': 'pull', 'pin': 16, 'pull': 'sideways'}, 'invalid_pull'),
        ]:
            reply = exchange(sock, reader, dict(request, id=9))
            assert reply['error']['code'] == code, (request, reply)
        # a second claim from another connection
        other, other_reader = raw_connection(server)
        with other:
            hello(other, other_reader)
            reply = exchange(other, other_reader, {'id': 2, 'op': 'claim', 'pin': 16})
            assert reply['error']['code'] == 'pin_in_use' and reply['error']['type'] == 'GPIOPinInUse'
        # what was accepted still works
        assert exchange(sock, reader, {'id': 10, 'op': 'setup', 'pin': 16,
                                       'function': 'output', 'state': 1})['state'] is True
        assert exchange(sock, reader, {'id': 11, 'op': 'read', 'pin': 16})['state'] is True


def test_requests_before_hello_are_refused(server):
    sock, reader = raw_connection(server)
    with sock:
        reply = exchange(sock, reader, {'id': 1, 'op': 'claim', 'pin': 17})
        assert reply['error']['code'] == 'hello_required'


def test_quiet_write_error_is_reported_with_its_pin(server):
    sock, reader = raw_connection(server)
    with sock:
        hello(sock, reader)
        exchange(sock, reader, {'id': 2, 'op': 'claim', 'pin': 21})
        sock.sendall(b'{"id": 3, "op": "write", "pin": 21, "state": 1, "quiet": true}\n')
        reply = json.loads(reader.readline())
        assert reply['id'] == 3 and reply['pin'] == 21 and reply['error']['code'] == 'set_input'


def test_oversized_message_closes_with_reason_and_others_carry_on(server, factory):
    bystander = LED(20, pin_factory=factory)
    bystander.on()
    sock, reader = raw_connection(server)
    with sock:
        hello(sock, reader)
        try:
            sock.sendall(b'{"id": 2, "op": "ping", "pad": "' + b'x' * 200_000)
        except OSError:
            pass
        error = json.loads(reader.readline())
        assert error['error']['code'] == 'message_too_large'
        closing = json.loads(reader.readline())
        assert closing['push'] == 'closing' and '65536' in closing['reason']
        assert reader.readline() == b''   # closed by the server
    assert bystander.value == 1
    bystander.off()
    assert bystander.value == 0
    assert server.pin(20)['state'] is False
    assert server.alive()
    bystander.close()


def test_garbage_stream_does_not_disturb_a_bystander(server, factory):
    bystander = LED(19, pin_factory=factory)
    rng = __import__('random').Random(2)
    for _ in range(20):
        sock = socket.create_connection((server.host, server.port), timeout=5)
        with sock:
            sock.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000))))
        bystander.toggle()
    assert bystander.value == 0
    assert server.alive()
    bystander.close()
    (entry,) = server.wait_free(19)
    assert states(entry) == [0] + [1, 0] * 10


def test_killed_worker_frees_its_pin_and_the_owner_is_told(server, factory):
    from remoteio_factory import RemoteIOPinError
    led = LED(12, pin_factory=factory)
    bystander = LED(13, pin_factory=factory)
    led.on()
    pid = server.pin(12)['worker_pid']
    os.kill(pid, signal.SIGKILL)
    (entry,) = server.wait_free(12)
    assert entry['died'] is True
    with pytest.raises(RemoteIOPinError, match='died'):
        wait_for(lambda: led.value is None, timeout=5)
    bystander.on()
    assert bystander.value == 1 and server.alive()
    # the pin can be claimed again, by anyone
    led.close()
    again = LED(12, pin_factory=factory)
    again.on()
    assert again.value == 1
    assert server.pin(12)['state'] is True
    again.close()
    bystander.close()


def test_requests_before_an_oversized_line_are_still_answered(server):
    sock, reader = raw_connection(server)
    with sock:
        hello(sock, reader)
        sock.sendall(b'{"id": 7, "op": "ping"}\n' + b'x' * 70000 + b'\n')
        assert json.loads(reader.readline())['id'] == 7
        assert json.loads(reader.readline())['error']['code'] == 'message_too_large'


def test_sigterm_mid_blink_releases_every_pin_and_exits(fresh_server):
    own = fresh_server('--log-level', 'info')
    client = start_script(own, """
        from remoteio_factory import LED, PWMLED
        import time
        led = LED(17)
        led.blink(0.02, 0.02)             # a blink task on the server
        pwm = PWMLED(18)
        pwm.pulse(0.1, 0.1)               # and a pulse
        print('ready', flush=True)
        time.sleep(60)
    """)
    pins = [p for p in own.status()['pins'] if p['status'] == 'claimed']
    assert sorted(p['task']['kind'] for p in pins) == ['blink', 'pulse']
    pids = [p['worker_pid'] for p in pins]
    started = time.monotonic()
    assert own.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - started < 10
    wait_for(lambda: all(process_gone(pid) for pid in pids), 10, message='workers to exit')
    log = wait_for(lambda: (lambda text: 'GPIO18 released' in text and text)(
        ''.join(own.stderr_lines)), 5, message='the server log')
    assert 'GPIO17 released: input' in log and 'GPIO18 released: input' in log
    client.kill()
    client.wait()
