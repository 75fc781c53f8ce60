"""
Observers: connections that follow every pin without claiming one (the
``observe`` request, ``changes`` pushes), and ``remoteio_factory.observe``.

The server pushes each pin's transitions with its own timestamps, tasks
starting and ending, claims, releases and clients, after a snapshot; an
observer that does not read loses old transitions but never a pin's latest
state, and costs the pins and other clients nothing.
"""

import json
import socket
import time

from gpiozero import LED, PWMLED

from conftest import wait_for
from remoteio_factory import RemoteServer
from remoteio_factory.observe import Observation


def test_an_observer_gets_a_snapshot_then_every_change_in_order(server, factory):
    led = LED(18, pin_factory=factory)
    led.on()
    with Observation(server.host, server.port) as seen:
        # (the LED's write is another connection's: in the snapshot, or pushed right after)
        wait_for(lambda: any(p['gpio'] == 18 and p['state'] and p['status'] == 'claimed'
                             for p in seen.status()['pins']), message='GPIO18 on')
        seen.wait_changes(0)                          # (nothing yet: start afresh)
        blinker = LED(17, pin_factory=factory)
        for _ in range(3):
            blinker.on()
            blinker.off()
        blinker.close()
        changes = []
        wait_for(lambda: changes.extend(seen.wait_changes(0.1)) or any(
            c.get('pin') == 17 and c.get('status') == 'free' for c in changes),
            message='GPIO17 claimed, toggled and freed')
        mine = [c for c in changes if c.get('pin') == 17]
        assert mine[0]['status'] == 'claimed' and mine[-1]['status'] == 'free'
        states = [c['state'] for c in mine if 'state' in c and 'status' not in c]
        assert states == [1, 0] * 3
        times = [c['t'] for c in mine]
        assert times == sorted(times)                 # in order, on the server's clock
        assert next(p for p in seen.status()['pins'] if p['gpio'] == 17)['status'] == 'free'
    led.close()


def test_an_observer_sees_tasks_start_and_end_and_clients_come_and_go(server):
    with Observation(server.host, server.port) as seen:
        seen.wait_changes(0)
        remote = RemoteServer('127.0.0.1', server.port)
        try:
            assert remote.pin(19, 'g').on(time_ms=50).wait(10) == 'completed'
        finally:
            remote.close()
        changes = []
        wait_for(lambda: changes.extend(seen.wait_changes(0.1)) or any(
            c.get('event') == 'gone' for c in changes), message='the client to go')
        tasks = [c for c in changes if c.get('pin') == 19 and 'task' in c]
        assert tasks[0]['task']['kind'] == 'on' and tasks[-1] == dict(
            tasks[-1], task=None, result='completed')
        assert 0.045 < tasks[-1]['t'] - tasks[0]['t'] < 0.5
        events = [c['event'] for c in changes if 'client' in c]
        assert events[0] == 'connected' and events[-1] == 'gone'


def test_a_pwm_change_shows_within_half_a_second(server, factory):
    with Observation(server.host, server.port) as seen:
        led = PWMLED(20, pin_factory=factory)
        started = time.monotonic()
        led.value = 0.25
        wait_for(lambda: any(p['gpio'] == 20 and p.get('state') == 0.25 and p.get('frequency')
                             for p in seen.status()['pins']), timeout=0.5,
                 message='the duty cycle in the observation')
        assert time.monotonic() - started < 0.5
        led.close()


def test_an_observer_that_never_reads_costs_nothing_and_loses_no_latest_state(fresh_server):
    """
    A raw observer stops reading while another client makes thousands of
    transitions: the blink keeps its timing, the server keeps the observer's
    outbox small, and when it reads at last, every pin's latest state is there
    (old transitions given up, counted in `dropped`).
    """
    server = fresh_server('--lease', '0')         # (it sends nothing for seconds, on purpose)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # (before connecting)
    sock.settimeout(10)
    sock.connect((server.host, server.port))
    reader = sock.makefile('rb')
    sock.sendall(b'{"id":1,"op":"hello","protocol":1}\n{"id":2,"op":"observe","history":0}\n')
    assert json.loads(reader.readline())['ok']
    assert json.loads(reader.readline())['id'] == 2
    remote = RemoteServer('127.0.0.1', server.port)
    factory = server.factory()
    try:
        once = LED(21, pin_factory=factory)
        once.on()                                     # one change, early: it must survive
        blinking = (16, 5, 6, 12, 13, 19, 26, 20)
        handles = [remote.pin(gpio, 'g').blink(0, 0.002, 0.002, n=1000) for gpio in blinking]
        assert [h.wait(30) for h in handles] == ['completed'] * len(handles)
        history = server.pin(16)['history']
        rises = [e['t'] for e in history if e.get('state') == 1]
        periods = [b - a for a, b in zip(rises, rises[1:])]
        assert len(rises) >= 400 and sorted(periods)[len(periods) // 2] < 0.0045
        # Each pin's last transition, as the server has it (the blinks have ended: final).
        status = {p['gpio']: p for p in server.status(1)['pins']}
        final = {gpio: status[gpio]['history'][-1]['t'] for gpio in blinking}
        # read at last, until those have come (not until a silence: a loaded server's
        # next push may take longer than any pause chosen here)
        last_seen = {}
        latest, dropped, transitions = {}, 0, 0
        deadline = time.monotonic() + 30
        while any(last_seen.get(gpio) != final[gpio] for gpio in blinking):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            try:
                line = reader.readline()
            except (socket.timeout, OSError):
                break
            if not line:
                break
            push = json.loads(line)
            if push.get('push') != 'changes':
                continue
            dropped += push['dropped']
            transitions += len(push['transitions'])
            for transition in push['transitions']:
                if 'state' in transition and 'status' not in transition:
                    last_seen[transition['pin']] = transition['t']
            for gpio, fields in push['pins'].items():
                latest.setdefault(int(gpio), {}).update(fields)
        assert latest[21]['state'] is True or latest[21]['state'] == 1
        assert latest[16]['state'] in (0, False) and latest[16]['status'] == 'claimed'
        assert dropped > 0 and transitions + dropped >= len(blinking) * 1400
        # what was given up was old: each pin's last transition arrived, as the server has it
        for gpio in blinking:
            assert last_seen.get(gpio) == final[gpio], gpio
    finally:
        sock.close()
        factory.close()
        remote.close()


def test_observe_stop_and_the_status_of_an_observer(server):
    from remoteio_factory.connection import Connection
    pushes = []
    connection = Connection(server.host, server.port, on_push=pushes.append)
    try:
        connection.request('observe', history=0)
        connection.request('observe', stop=True)
        factory = server.factory()
        LED(22, pin_factory=factory).on()
        factory.close()
        server.wait_free(22)
        connection.request('ping')
        assert not [p for p in pushes if p.get('push') == 'changes' and any(
            t.get('pin') == 22 for t in p['transitions'])]
    finally:
        connection.close()
