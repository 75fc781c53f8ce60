"""
The virtual Pi (mock backend): wires that behave as copper, PWM seen through a
wire as a square wave, and simulated parts set from outside, driven through
the factory by unmodified gpiozero devices.

Timing is judged from the server's own timestamps: an edge the virtual Pi
makes is stamped with the moment it happened on the wire (an echo's rise and
fall, a PWM wave's edges), so the figures checked here are exact whatever the
load; waits are for conditions, bounded in time.
"""

import subprocess
import sys
import textwrap

import pytest
from gpiozero import (Button, DistanceSensor, LED, LightSensor, LineSensor, MCP3008, MCP3208,
                      MotionSensor)

from conftest import ServerProcess, start_script, wait_for
from remoteio_factory.connection import Connection
from remoteio_factory.exc import RemoteIOProtocolError

ARGS = [
    '--mock-wire', '5:6:13',          # three pins on one wire
    '--mock-wire', '17:27',           # PWM through a wire
    '--mock-wire', '2:20',            # GPIO2's fixed 1.8 kΩ pull-up against an internal pull
    '--mock-wire', '19:26',           # a client that vanishes
    '--mock-wire', '14:15',           # remoteio drive on a net
    '--mock-part', 'button:4:bounce=4',
    '--mock-part', 'button:12:name=plain',
    '--mock-part', 'hcsr04:23:24',
    '--mock-part', 'ldr:18:charge_ms=100',
    '--mock-part', 'pir:25',
    '--mock-part', 'line:16',
    '--mock-spi', 'mcp3008:0', '--mock-part', 'pot:channel=3',
    '--mock-spi', 'mcp3208:1', '--mock-part', 'pot:ce=1:channel=7:name=knob',
]


@pytest.fixture(scope='module')
def virtual():
    proc = ServerProcess(*ARGS)
    proc.control = Connection(proc.host, proc.port)
    yield proc
    proc.control.close()
    proc.stop()


@pytest.fixture
def vf(virtual):
    factory = virtual.factory()
    yield factory
    factory.close()


def set_part(server, name, value):
    server.control.request('part', name=name, value=value)


def net(server, gpio):
    return next(n for n in server.status(0)['circuit']['nets'] if gpio in n['pins'])


# Sensors ---------------------------------------------------------------------------


def test_distance_sensor_reads_the_set_distance_within_1_cm(virtual, vf):
    sensor = DistanceSensor(echo=24, trigger=23, max_distance=4, pin_factory=vf)
    try:
        for distance in (0.05, 0.42, 1.5, 3.3):
            set_part(virtual, 'hcsr04_23', distance)
            # every ping in the sensor's queue measured the distance set (its rise and
            # fall are stamped on the server's clock, 2 d / c apart)
            wait_for(lambda: all(abs(v * 4 - distance) < 0.01 for v in sensor._queue.queue),
                     timeout=15, message=f'{distance} m in every queued ping')
            assert abs(sensor.distance - distance) < 0.01
        set_part(virtual, 'hcsr04_23', 6.0)          # out of range: a 38 ms echo
        wait_for(lambda: sensor.distance == 4, timeout=15, message='the maximum distance')
    finally:
        sensor.close()
    part = next(p for p in virtual.status(0)['circuit']['parts'] if p['name'] == 'hcsr04_23')
    assert part['pings'] >= 4 * 9 and part['distance'] == 6.0


def test_light_sensor_follows_the_light_level(virtual, vf):
    # A 100 ms charge (charge_ms=100, charge_time_limit=0.1): the time the setup takes
    # to reach the server, which the sensor counts as charging, is then about 1 %.
    sensor = LightSensor(18, charge_time_limit=0.1, queue_len=3, pin_factory=vf)
    try:
        for light in (0.2, 0.55, 0.9):
            set_part(virtual, 'ldr18', light)
            wait_for(lambda: len(sensor._queue.queue) == 3 and
                     all(abs(v - light) < 0.06 for v in sensor._queue.queue),
                     timeout=20, message=f'light {light} in every queued reading')
        set_part(virtual, 'ldr18', 0.0)               # dark: it never charges
        wait_for(lambda: sensor.value == 0.0, timeout=20, message='dark')
    finally:
        sensor.close()


def test_mcp3008_and_mcp3208_read_the_potentiometer_to_1_lsb(virtual, vf):
    for cls, kwargs, name, bits in ((MCP3008, {'channel': 3}, 'pot3', 10),
                                    (MCP3208, {'channel': 7, 'device': 1}, 'knob', 12)):
        adc = cls(pin_factory=vf, **kwargs)
        try:
            lsb = 1 / (2 ** bits - 1)
            for position in (0.0, 0.1, 1 / 3, 0.5, 0.9999, 1.0):
                set_part(virtual, name, position)
                assert abs(adc.value - position) <= lsb, (cls.__name__, position, adc.value)
        finally:
            adc.close()


def test_pir_and_line_sensor_follow_their_parts(virtual, vf):
    pir = MotionSensor(25, pin_factory=vf)
    line = LineSensor(16, pin_factory=vf)
    try:
        set_part(virtual, 'pir25', 1)
        assert pir.wait_for_motion(10)
        set_part(virtual, 'pir25', 0)
        assert pir.wait_for_no_motion(10)
        set_part(virtual, 'line16', 1)                # over a dark line: the module's output is low
        assert line.wait_for_line(10)
        set_part(virtual, 'line16', 0)
        assert line.wait_for_no_line(10)
    finally:
        pir.close()
        line.close()


def test_button_part_presses_and_bounces(virtual, vf):
    # A clean button: gpiozero's Button (pull-up, button to ground) sees each press.
    button = Button(12, pin_factory=vf)
    presses = []
    button.when_pressed = lambda: presses.append(1)
    try:
        set_part(virtual, 'plain', 1)
        wait_for(lambda: presses and button.is_pressed, message='the press')
        set_part(virtual, 'plain', 0)
        wait_for(lambda: not button.is_pressed, message='the release')
    finally:
        button.close()
    # A bouncing one (bounce=4 ms): 5 raw edges per press, stamped within 4 ms ...
    pin = vf.pin(4)
    edges = []
    try:
        pin.input_with_pull('up')
        pin.edges = 'both'
        def record(ticks, state):           # (gpiozero keeps only a weak reference)
            edges.append((ticks, state))
        pin.when_changed = record
        set_part(virtual, 'button4', 1)
        wait_for(lambda: len(edges) >= 5 and not pin.state, message='the bouncing press')
        assert [s for _, s in edges] == [0, 1, 0, 1, 0]
        assert edges[-1][0] - edges[0][0] == pytest.approx(0.004, abs=1e-6)
        set_part(virtual, 'button4', 0)
        wait_for(lambda: len(edges) >= 10 and pin.state, message='the bouncing release')
    finally:
        pin.close()
    # ... which gpiozero's bounce_time (done by the server) turns into one press and one
    # release each (each reported once the press before it has settled).
    button = Button(4, bounce_time=0.02, pin_factory=vf)
    presses, releases = [], []
    button.when_pressed = lambda: presses.append(1)
    button.when_released = lambda: releases.append(1)
    try:
        for n in range(1, 4):
            set_part(virtual, 'button4', 1)
            wait_for(lambda: len(presses) == n, message=f'press {n}')
            set_part(virtual, 'button4', 0)
            wait_for(lambda: len(releases) == n, message=f'release {n}')
        assert len(presses) == 3 and not button.is_pressed
    finally:
        button.close()


# Wires as copper ------------------------------------------------------------------------


def test_pulls_pull_the_whole_wire_and_outputs_win(virtual, vf):
    a, b, c = vf.pin(5), vf.pin(6), vf.pin(13)
    try:
        for pin in (a, b, c):
            pin.input_with_pull('floating')
        a.pull = 'up'
        assert (a.state, b.state, c.state) == (1, 1, 1)
        a.pull = 'down'
        assert (a.state, b.state, c.state) == (0, 0, 0)
        c.function = 'output'                         # pulls are weak: an output wins
        for level in (1, 0, 1):
            c.state = level
            assert (a.state, b.state) == (level, level)
        a.pull = 'up'
        c.state = 0
        assert (a.state, b.state) == (0, 0)
        assert net(virtual, 5)['short'] is None
    finally:
        for pin in (a, b, c):
            pin.close()


def test_two_outputs_that_disagree_are_a_short(virtual, vf):
    a, b, c = vf.pin(5), vf.pin(6), vf.pin(13)
    try:
        a.input_with_pull('floating')
        b.output_with_state(0)
        c.output_with_state(0)
        assert a.state == 0
        c.state = 1
        short = net(virtual, 5)['short']
        assert short is not None and 'GPIO6' in short and 'GPIO13' in short
        assert a.state == 0                           # the input keeps its level meanwhile
        wait_for(lambda: any('short circuit on GPIO5+GPIO6+GPIO13' in line
                             for line in virtual.stderr_lines), message='the short in the log')
        b.state = 1                                   # both high: no short
        assert net(virtual, 5)['short'] is None
        assert a.state == 1
    finally:
        for pin in (a, b, c):
            pin.close()


def test_a_fixed_pull_up_beats_an_internal_pull_down(virtual, vf):
    # GPIO2 has a 1.8 kOhm pull-up on the board: wired to it, GPIO20 reads high even
    # with its own (50 kOhm) pull-down, as on a Pi.
    pin = vf.pin(20)
    try:
        pin.input_with_pull('down')
        assert pin.state == 1
        assert net(virtual, 20)['level'] == 1
    finally:
        pin.close()


def sample_wave(virtual, vf, out, into, frequency, duty, count=300):
    """
    Read *into* *count* times; check each read against the wave the output
    makes (its phase from the server's history of the output: the last change
    of its duty or frequency; the read's moment on the server's clock, from an
    offset measured here with its error bound): every read whose moment is
    clear of an edge must give the wave's level there. Returns (reads checked,
    fraction high).
    """
    import math
    import time
    history = virtual.pin(out, history=1000)['history']
    origin = max(e['t'] for e in history if 'state' in e or 'frequency' in e)
    best = None
    for _ in range(20):                           # the server's clock minus ours, and its error
        sent = time.monotonic()
        server_time = vf._connection.request('heartbeat')['monotonic']
        received = time.monotonic()
        if best is None or received - sent < best[0]:
            best = (received - sent, server_time - (sent + received) / 2)
    margin, offset = best[0] / 2 + 0.0002, best[1]
    period = 1.0 / frequency
    checked = high = 0
    for _ in range(count):
        before = time.monotonic()
        level = into.state
        after = time.monotonic()
        high += level
        start, end = before + offset - margin, after + offset + margin
        phases = [math.fmod(t - origin, period) / period for t in (start, end)]
        if end - start < period * min(duty, 1 - duty) and \
                (phases[0] < duty) == (phases[1] < duty) and phases[0] <= phases[1]:
            checked += 1
            assert level == (phases[0] < duty), (start, end, phases, level, margin)
    return checked, high / count


def test_pwm_through_a_wire_is_a_square_wave(virtual, vf):
    out, into = vf.pin(17), vf.pin(27)
    edges = []
    try:
        into.input_with_pull('down')
        into.edges = 'both'

        def record(ticks, state):           # (gpiozero keeps only a weak reference)
            edges.append((ticks, state))
        into.when_changed = record
        out.function = 'output'
        out.frequency = 10
        out.state = 0.25
        # Sampled: every read gives the wave's level at its moment (gpiozero's own test
        # counts the duty cycle over 20,000 reads; here each read is checked).
        checked, fraction = sample_wave(virtual, vf, 17, into, 10, 0.25)
        assert checked >= 30
        out.frequency = 50
        into.state                                    # (the change has reached the input)
        # Until then the input's worker went on with the 10 Hz wave (docs/protocol.md §9.4):
        # the 50 Hz edges are those after this moment.
        origin = virtual.status(0)['monotonic']
        # Edges at 50 Hz: rises 20 ms apart, each high for 5 ms, on the server's clock.
        wait_for(lambda: len([e for e in edges if e[0] >= origin]) >= 12,
                 message='12 edges of the 50 Hz wave')
        rises = [t for t, s in edges if s == 1 and t >= origin]
        falls = [t for t, s in edges if s == 0 and t >= origin]
        assert all(later - earlier == pytest.approx(0.020, abs=1e-6)
                   for earlier, later in zip(rises, rises[1:]))
        assert all(any(f - r == pytest.approx(0.005, abs=1e-6) for f in falls) for r in rises[:-1])
        # Above WAVE_EDGE_LIMIT (200 Hz) the wave is sampled at each read but raises no events.
        out.frequency = 250
        out.state = 0.5
        into.state                                    # (the change has reached the input)
        count = len(edges)
        # (each read clear of an edge is checked; under load, with 2 ms between edges,
        # there may be none: the 10 Hz samples above are the ones that must be there)
        sample_wave(virtual, vf, 17, into, 250, 0.5)
        assert len(edges) <= count + 2
    finally:
        out.close()
        into.close()


def test_a_vanished_client_lets_go_of_the_wire(virtual, vf):
    script = start_script(virtual, """
        from gpiozero import LED
        led = LED(19)
        led.on()
        print('ready', flush=True)
        input()
    """)
    button = Button(26, pull_up=False, pin_factory=vf)   # pull-down at this end
    try:
        # the other client's LED drives it high (its write is its own: no order with ours)
        wait_for(lambda: button.is_pressed, message="the other client's LED")
        script.kill()
        script.wait(10)
        virtual.wait_free(19)
        # the LED's pin is an input again: nothing drives the wire, the pull-down decides
        wait_for(lambda: not button.is_pressed, message='the pull-down to win')
    finally:
        button.close()
        if script.poll() is None:
            script.kill()


def test_drive_on_a_wire_is_an_outside_source(virtual, vf):
    out, into = vf.pin(14), vf.pin(15)
    try:
        into.input_with_pull('down')
        virtual.control.request('drive', pin=15, state=1)
        assert into.state == 1
        assert net(virtual, 15)['driven'] == [15]
        out.output_with_state(0)                      # an output against the outside source
        assert 'remoteio drive GPIO15' in net(virtual, 15)['short']
        virtual.control.request('drive', pin=15, state=None)   # it lets go
        assert net(virtual, 15)['short'] is None
        assert into.state == 0
        out.close()
        assert into.state == 0                        # nothing drives: the pull-down
    finally:
        out.close()
        into.close()


def test_an_input_that_was_an_output_for_a_while_follows_the_wire_again(virtual, vf):
    out, into = vf.pin(17), vf.pin(27)
    edges = []

    def record(ticks, state):                        # (gpiozero keeps a weak reference)
        edges.append(state)
    try:
        out.output_with_state(1)
        into.output_with_state(1)                     # both drive 1: no short
        into.input_with_pull('down')                  # an input again: the wire says 1
        assert into.state == 1
        assert virtual.pin(27)['state'] is True       # (its worker's own view, in status)
        into.edges = 'both'
        into.when_changed = record
        out.state = 0
        wait_for(lambda: edges == [0], message='the fall of the other end as an edge')
        assert into.state == 0
    finally:
        out.close()
        into.close()


def test_a_read_behind_the_release_of_a_wired_output_sees_the_wire_let_go(virtual):
    """§5: a read waits for the connection's release; a wired pin's release changes its net."""
    import json
    import socket
    sock = socket.create_connection((virtual.host, virtual.port), timeout=10)
    reader = sock.makefile('rb')

    def send(*messages):
        sock.sendall(b''.join(json.dumps(m).encode() + b'\n' for m in messages))

    def answer(id):
        while True:
            reply = json.loads(reader.readline())
            if reply.get('id') == id:
                return reply
    try:
        send({'id': 1, 'op': 'hello', 'protocol': 1})
        assert answer(1)['ok']
        for round in range(20):
            base = 10 + round * 10
            send({'id': base, 'op': 'claim', 'pin': 27},
                 {'id': base + 1, 'op': 'setup', 'pin': 27, 'function': 'input', 'pull': 'down'},
                 {'id': base + 2, 'op': 'claim', 'pin': 17},
                 {'id': base + 3, 'op': 'setup', 'pin': 17, 'function': 'output', 'state': 1},
                 {'id': base + 4, 'op': 'read', 'pin': 27})
            assert answer(base + 4)['state'] is True
            # the release and the read in one go, not waiting for the release's answer
            send({'id': base + 5, 'op': 'release', 'pin': 17},
                 {'id': base + 6, 'op': 'read', 'pin': 27},
                 {'id': base + 7, 'op': 'release', 'pin': 27})
            assert answer(base + 6)['state'] is False, round
            assert answer(base + 7)['ok']
    finally:
        sock.close()


def test_subscribing_late_to_a_wave_brings_no_old_edges(virtual, vf):
    import time
    out, into = vf.pin(17), vf.pin(27)
    edges = []

    def record(ticks, state):
        edges.append(ticks)
    try:
        into.input_with_pull('down')
        out.function = 'output'
        out.frequency = 50
        out.state = 0.5
        into.state                                    # the wave has reached the input
        wait_for(lambda: virtual.pin(27)['history'][-1]['t'] + 0.2 < virtual.status(0)['monotonic'],
                 message='the wave to run unobserved for 0.2 s')
        into.edges = 'both'
        subscribed = time.monotonic()
        into.when_changed = record
        wait_for(lambda: len(edges) >= 6, message='6 edges')
        assert min(edges) > subscribed - 0.005, (min(edges), subscribed)
    finally:
        out.close()
        into.close()


def test_nets_are_worked_out_before_anything_changes():
    """A fresh server: GPIO2's fixed pull-up is on its wire before any pin is claimed."""
    proc = ServerProcess('--mock-wire', '2:20')
    try:
        (wire,) = proc.status(0)['circuit']['nets']
        assert wire['level'] == 1 and wire['signal'] == '1'
        factory = proc.factory()
        try:
            pin = factory.pin(20)
            pin.function = 'input'
            assert pin.state == 1
            assert proc.pin(20)['state'] is True
        finally:
            factory.close()
    finally:
        proc.stop()


# The protocol and the command line ---------------------------------------------------------


def test_the_factory_sets_parts_and_drives_inputs(virtual, vf):
    """RemoteIOFactory.set_part and .drive: what a test of one's own gpiozero code needs."""
    button = Button(12, pin_factory=vf)
    inp = vf.pin(15)
    try:
        vf.set_part('plain', 1)
        assert button.is_pressed                      # a read after it sees it
        vf.set_part('plain', 0)
        assert not button.is_pressed
        inp.input_with_pull('down')
        vf.drive('GPIO15', 1)
        assert inp.state == 1
        vf.drive(15, None)
        assert inp.state == 0
    finally:
        button.close()
        inp.close()


def test_part_requests_are_checked(virtual, server):
    control = virtual.control
    with pytest.raises(RemoteIOProtocolError, match='no simulated part named .*button4'):
        control.request('part', name='nothing', value=1)
    for name, value in (('button4', 0.5), ('button4', 'on'), ('hcsr04_23', -1),
                        ('ldr18', 2), ('pot3', None), ('pir25', [1])):
        with pytest.raises(RemoteIOProtocolError):
            control.request('part', name=name, value=value)
    plain = Connection(server.host, server.port)      # a mock server without parts
    try:
        with pytest.raises(RemoteIOProtocolError, match=r'none \(--mock-part\)'):
            plain.request('part', name='button4', value=1)
    finally:
        plain.close()
    set_part(virtual, 'pir25', 0)                     # and it serves on


def test_remoteio_part_and_status_show_the_circuit(virtual):
    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'remoteio_factory.cli', *args,
                               '--port', str(virtual.port)],
                              capture_output=True, text=True, timeout=30)
    done = cli('part', 'pir25', 'on')
    assert done.returncode == 0, done.stderr
    status = cli('status')
    assert status.returncode == 0, status.stderr
    assert 'virtual circuit:' in status.stdout
    assert textwrap.dedent('pir25').strip() in status.stdout and 'motion=1' in status.stdout
    assert 'GPIO5+GPIO6+GPIO13' in status.stdout
    bad = cli('part', 'nothing', '1')
    assert bad.returncode == 1 and 'no simulated part' in bad.stderr
    set_part(virtual, 'pir25', 0)


def test_parts_and_wires_are_refused_off_the_mock_backend_and_when_wrong():
    for args, message in (
            (['--mock-part', 'button'], 'button:PIN'),
            (['--mock-part', 'laser:4'], 'KIND one of'),
            (['--mock-part', 'hcsr04:4:4'], 'different'),
            (['--mock-part', 'button:4:colour=red'], 'takes no colour'),
            (['--mock-wire', '4'], 'two or more'),
            (['--mock-part', 'pot:channel=0'], 'no simulated ADC'),
            (['--mock-part', 'button:99'], 'not a GPIO of this board'),
            (['--backend', 'lgpio', '--mock-part', 'button:4'], 'mock only'),
    ):
        result = subprocess.run([sys.executable, '-m', 'remoteio_server', '--host', '127.0.0.1',
                                 '--port', '0', *(['--backend', 'mock'] if '--backend' not in args
                                                  else []), *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)


# Hostile clients and faults --------------------------------------------------------------


def test_a_flood_of_shorts_costs_an_impulse_nothing_and_the_log_little(fresh_server):
    """
    Four clients toggle a button against an output that runs a 100 ms impulse on the
    same wire (a short each time they disagree): the impulse keeps its length, every
    request is answered, and the log gets a few warnings, not one per short.
    """
    import socket
    import threading

    from remoteio_factory import RemoteServer
    from remoteio_factory.protocol import encode
    server = fresh_server('--mock-wire', '21:22', '--mock-part', 'button:22:name=flood')
    floods = [socket.create_connection((server.host, server.port)) for _ in range(4)]
    answers = [0] * len(floods)

    def drain(index, sock):
        sock.settimeout(30)
        buffer = b''
        while answers[index] < 2501:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
            answers[index] += buffer.count(b'\n')
            buffer = buffer[buffer.rfind(b'\n') + 1:]

    burst = b''.join(encode({'id': i, 'op': 'part', 'name': 'flood', 'value': i % 2})
                     for i in range(1, 2501))
    remote = RemoteServer('127.0.0.1', server.port)
    readers = [threading.Thread(target=drain, args=(i, sock), daemon=True)
               for i, sock in enumerate(floods)]
    try:
        for sock, reader in zip(floods, readers):
            sock.sendall(encode({'id': 0, 'op': 'hello', 'protocol': 1}))
            reader.start()
        handle = remote.pin(21, 'g').on(time_ms=100)
        senders = [threading.Thread(target=sock.sendall, args=(burst,)) for sock in floods]
        for sender in senders:
            sender.start()
        assert handle.wait(30) == 'completed'
        for sender in senders + readers:
            sender.join(30)
        assert answers == [2501] * len(floods)             # hello + every part answered
        history = server.pin(21)['history']
        changes = [(e['t'], e['state']) for e in history if 'state' in e]
        rise = next(t for t, state in changes if state == 1)
        fall = next(t for t, state in changes if state == 0 and t > rise)
        assert abs(fall - rise - 0.100) < 0.010, fall - rise
        shorts = [line for line in server.stderr_lines if 'short circuit on GPIO21+GPIO22' in line]
        assert 1 <= len(shorts) <= 5, shorts
    finally:
        for sock in floods:
            sock.close()
        remote.close()


def test_a_killed_worker_lets_go_of_the_wire(virtual, vf):
    import os
    import signal
    led = LED(19, pin_factory=vf)
    button = Button(26, pull_up=False, pin_factory=vf)
    try:
        led.on()
        assert button.is_pressed
        os.kill(virtual.pin(19)['worker_pid'], signal.SIGKILL)
        # GPIO19 is no longer driven (its pin is freed as a worker that died): the
        # pull-down at the other end decides
        wait_for(lambda: not button.is_pressed, message='the pull-down to win')
        assert net(virtual, 19)['level'] == 0
    finally:
        button.close()
        try:
            led.close()
        except Exception:
            pass        # (its pin died with its worker: the close may say so)
