"""
Reads from each pin's shared record, the read barrier, and tasks acknowledged
without their worker (docs/protocol.md §5, §5.1, §7.10).

The proof that a read needs no worker: the worker is stopped (SIGSTOP) and the
read is still answered, with the right value; the proof that a read waits
when it must: with the worker stopped, the read is not answered until the
worker runs again, and then shows the write before it.
"""

import json
import os
import signal
import socket
import threading
from contextlib import contextmanager

import pytest
from gpiozero import DigitalInputDevice, DigitalOutputDevice, PWMOutputDevice

from conftest import ServerProcess, states
from remoteio_factory import RemoteServer

#: How long a read that must wait is given to (wrongly) come back before it is judged waiting.
WAITING = 0.3


def worker_of(server, gpio):
    return server.pin(gpio, history=0)['worker_pid']


@contextmanager
def stopped(pid):
    """The worker *pid* frozen (it takes nothing from its pipe) for the block's duration."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


class Background:
    """Run *call* on a thread; :meth:`result` waits for it."""

    def __init__(self, call):
        self._result = {}
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call):
        try:
            self._result['value'] = call()
        except BaseException as exc:
            self._result['error'] = exc

    def waiting(self, seconds=WAITING):
        self._thread.join(seconds)
        return self._thread.is_alive()

    def result(self, timeout=10):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), 'still waiting'
        if 'error' in self._result:
            raise self._result['error']
        return self._result['value']


@pytest.fixture
def wired():
    proc = ServerProcess('--mock-wire', '5:6')
    yield proc
    proc.stop()


def test_reads_of_outputs_need_no_worker(server):
    factory = server.factory(timeout=3)
    try:
        led = DigitalOutputDevice(17, pin_factory=factory)
        pwm = PWMOutputDevice(18, frequency=50, pin_factory=factory)
        led.on()
        pwm.value = 0.25
        assert (led.value, pwm.value) == (1, 0.25)
        with stopped(worker_of(server, 17)), stopped(worker_of(server, 18)):
            # answered from the records: the workers take nothing while stopped
            for _ in range(20):
                assert led.value == 1
                assert pwm.value == 0.25
                assert pwm.pin.frequency == 50
    finally:
        factory.close()


def test_a_read_after_a_write_waits_for_the_worker_to_take_it(server):
    factory = server.factory()
    try:
        led = DigitalOutputDevice(19, pin_factory=factory)
        led.on()
        assert led.value == 1
        with stopped(worker_of(server, 19)):
            led.off()                                # posted: the client does not wait
            read = Background(lambda: led.value)
            assert read.waiting(), 'a read was answered before the write before it was taken'
        assert read.result() == 0                    # ... and then shows the write
    finally:
        factory.close()


def test_an_input_read_waits_for_the_other_pins_an_output_read_does_not(wired):
    factory = wired.factory()
    try:
        out = DigitalOutputDevice(5, pin_factory=factory)
        into = DigitalInputDevice(6, pin_factory=factory)
        other = DigitalOutputDevice(17, pin_factory=factory)
        led = DigitalOutputDevice(22, pin_factory=factory)
        for i in range(50):                          # through the wire: always the write before
            out.value = i & 1
            assert into.value == i & 1
        with stopped(worker_of(wired, 17)):
            other.on()                               # the other pin has not taken it
            for _ in range(20):
                assert led.value == 0                # an output's read does not wait for it
                assert out.value == 1
            read = Background(lambda: into.value)   # an input's read does
            assert read.waiting(), 'an input was read before another pin took its write'
        assert read.result() == 1
        assert other.value == 1
    finally:
        factory.close()


def test_a_read_of_a_mock_input_shows_a_drive_once_answered(server):
    factory = server.factory()
    driver = server.factory()
    try:
        button = DigitalInputDevice(24, pull_up=False, pin_factory=factory)
        for level in (1, 0, 1, 0):
            driver._connection.request('drive', pin=24, state=level)
            assert button.value == level
    finally:
        factory.close()
        driver.close()


def test_a_seed_task_is_acknowledged_without_its_worker(server):
    remote = RemoteServer(server.host, server.port)
    try:
        remote_pin = remote.pin(25, 'g')
        remote_pin.off()
        with stopped(worker_of(server, 25)):
            call = Background(lambda: remote_pin.on(time_ms=30))
            handle = call.result(timeout=5)          # acknowledged while the worker is stopped
            assert not handle.ended
        assert handle.wait(10) == 'completed'
    finally:
        remote.close()
    (pin,) = server.wait_free(25)
    assert states(pin)[-3:] == [0, 1, 0]


def raw_session(server):
    """A bare protocol connection (hello done), for requests sent back to back."""
    sock = socket.create_connection((server.host, server.port), timeout=10)
    reader = sock.makefile('rb')
    sock.sendall(b'{"id": 1, "op": "hello", "protocol": 1}\n')
    assert json.loads(reader.readline())['ok']
    return sock, reader


def replies(reader, count):
    return [json.loads(reader.readline()) for _ in range(count)]


def test_a_failed_quiet_write_is_reported_before_a_later_read(server):
    sock, reader = raw_session(server)
    try:
        sock.sendall(b'{"id": 2, "op": "claim", "pin": 26}\n'
                     b'{"id": 3, "op": "setup", "pin": 26, "function": "input"}\n')
        assert [r['ok'] for r in replies(reader, 2)] == [True, True]
        # (a narrow window: 1000 tries, some 0.5 s, catch it where 100 rarely did)
        for i in range(1000):
            # a write to an input fails in the worker; the read right behind it must
            # not be answered (from the record) before that failure is (§6)
            sock.sendall(json.dumps({'id': 10 + 2 * i, 'op': 'write', 'pin': 26, 'state': 1,
                                     'quiet': True}).encode() + b'\n' +
                         json.dumps({'id': 11 + 2 * i, 'op': 'read', 'pin': 26}).encode() + b'\n')
            failure, read = replies(reader, 2)
            assert (failure['id'], failure['ok'], read['id'], read['ok']) == \
                (10 + 2 * i, False, 11 + 2 * i, True), (failure, read)
    finally:
        sock.close()


def test_reads_of_one_pin_are_answered_in_order(server):
    sock, reader = raw_session(server)
    try:
        sock.sendall(b'{"id": 2, "op": "claim", "pin": 27}\n'
                     b'{"id": 3, "op": "setup", "pin": 27, "function": "output"}\n')
        assert [r['ok'] for r in replies(reader, 2)] == [True, True]
        for i in range(100):
            # the first read may have to go to the worker (the write is not taken yet),
            # the second may find the record caught up: it must not overtake the first
            base = 10 + 3 * i
            sock.sendall(b''.join(json.dumps(m).encode() + b'\n' for m in (
                {'id': base, 'op': 'write', 'pin': 27, 'state': i & 1, 'quiet': True},
                {'id': base + 1, 'op': 'read', 'pin': 27},
                {'id': base + 2, 'op': 'read', 'pin': 27})))
            first, second = replies(reader, 2)
            assert (first['id'], second['id']) == (base + 1, base + 2)
            assert first['state'] == second['state'] == bool(i & 1)
    finally:
        sock.close()


def test_a_change_that_fails_half_way_is_in_the_record(server):
    # gpiozero's input_with_pull sets the function, then the pull: on GPIO2 (a fixed
    # pull-up on the board) the pull is refused with the pin already an input. A read
    # after the failure must say so, not what the record held before the request.
    sock, reader = raw_session(server)
    try:
        sock.sendall(b'{"id": 2, "op": "claim", "pin": 2}\n'
                     b'{"id": 3, "op": "setup", "pin": 2, "function": "output", "state": 1}\n')
        assert [r['ok'] for r in replies(reader, 2)] == [True, True]
        sock.sendall(b'{"id": 4, "op": "setup", "pin": 2, "function": "input", "pull": "down"}\n')
        failure, = replies(reader, 1)
        assert (failure['ok'], failure['error']['type']) == (False, 'PinFixedPull'), failure
        sock.sendall(b'{"id": 5, "op": "read", "pin": 2}\n')
        read, = replies(reader, 1)
        assert (read['function'], read['pull']) == ('input', 'up'), read
    finally:
        sock.close()
