"""
Faults below the sessions: the zygote or a spare worker dies, a pin's worker
is cut short, a client floods a pin with requests, claims and releases race
status polls and drives. The answer to each is that every pin is still
released exactly once, switched off, and claimable again, and that the
owner's timing holds.
"""

import os
import signal
import socket
import threading

from gpiozero import LED, Button, InputDevice

from conftest import wait_for
from remoteio_factory import RemoteServer
from remoteio_factory.protocol import encode
from rigs import start_rig

TOLERANCE = 0.010


def children(pid):
    """The pids of *pid*'s child processes (from /proc)."""
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                with open(f'/proc/{entry}/stat') as f:
                    fields = f.read().rsplit(')', 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != 'Z':
                found.append(int(entry))
    return found


def zygote_of(server):
    (zygote,) = [p for p in children(server.pid)
                 if b'remoteio_server.zygote' in open(f'/proc/{p}/cmdline', 'rb').read()]
    return zygote


def spares_of(server):
    """The zygote's children that no claimed pin uses: the spare workers."""
    busy = {p.get('worker_pid') for p in server.status()['pins'] if p['status'] != 'free'}
    return [p for p in children(zygote_of(server)) if p not in busy]


def dead(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'Z'
    except OSError:
        return True


def kill_and_wait(pid):
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: dead(pid), message=f'process {pid} to die')


def test_a_killed_zygote_is_replaced(fresh_server):
    server = fresh_server('--spares', '0')            # every claim forks through the zygote
    factory = server.factory()
    try:
        first = LED(17, pin_factory=factory)
        first.on()
        old = zygote_of(server)
        kill_and_wait(old)
        second = LED(18, pin_factory=factory)         # needs a new zygote
        second.on()
        assert first.value == 1 and second.value == 1
        assert zygote_of(server) != old
    finally:
        factory.close()


def test_workers_share_the_board_description_the_zygote_prepared():
    """
    backends.prepare_board (run in the zygote before it forks) and build_factory (in a
    worker): the factory of the prepared board takes the prepared description, which
    the workers then share; one of another board keeps its own.
    """
    from remoteio_server import backends
    saved = backends._BOARD
    try:
        backends.prepare_board('a02082')
        same = backends.build_factory('mock', 'a02082')
        other = backends.build_factory('mock', 'a020d3')
        try:
            assert same.board_info is backends._BOARD
            assert same.pin(17).info.name == 'GPIO17'
            assert other.board_info is not backends._BOARD
            assert other.board_info.revision == 'a020d3'
        finally:
            same.close()
            other.close()
    finally:
        backends._BOARD = saved


def test_a_dead_spare_is_never_handed_out(fresh_server):
    server = fresh_server('--spares', '2')
    wait_for(lambda: len(spares_of(server)) == 2, message='two spare workers')
    for pid in spares_of(server):
        kill_and_wait(pid)
    factory = server.factory()
    try:
        leds = [LED(gpio, pin_factory=factory) for gpio in (17, 18, 22)]
        for led in leds:
            led.on()
        assert [led.value for led in leds] == [1, 1, 1]
    finally:
        factory.close()


def test_a_worker_cut_short_switches_its_pin_off():
    """SIGTERM to a pin's worker (what the server sends one it must end): the output goes off."""
    rig = start_rig('lgpio')
    try:
        factory = rig.server.factory()
        led = LED(17, pin_factory=factory)
        led.on()
        assert led.value == 1 and rig.level(17) == 1
        pid = rig.server.pin(17)['worker_pid']
        os.kill(pid, signal.SIGTERM)
        # (lgpio makes a line an input by letting it go and requesting it again)
        wait_for(lambda: rig.pi.line(17)['direction'] == 'input' and not rig.pi.line(17)['used'],
                 message='the worker to return its line to an input and let go of it')
        rig.server.wait_free(17)
        led.close()                                    # (the client was told it lost the pin)
        other = rig.server.factory()
        again = LED(17, pin_factory=other)             # and the pin can be had again
        again.on()
        assert again.value == 1 and rig.level(17) == 1
        other.close()
        factory.close()
    finally:
        rig.close()


def test_each_lgpio_worker_has_a_directory_of_its_own(tmp_path):
    """
    lgpio makes its notification FIFOs in LG_WD and names them by handle numbers
    that count from 0 in every process: workers sharing the directory took each
    other's (a worker ending unlinked the FIFO a new one had just made, whose
    backend then failed to build: "can not open pathname"). Each worker now has
    a directory of its own inside LG_WD, removed when it ends; those of killed
    workers are swept.
    """
    workdir = tmp_path / 'lg'
    workdir.mkdir()
    rig = start_rig('lgpio', env=dict(os.environ, LG_WD=str(workdir)))
    try:
        factory = rig.server.factory()
        buttons = [Button(gpio, pin_factory=factory) for gpio in (4, 5, 6)]
        for button in buttons:
            button.when_pressed = lambda: None          # lgpio alerts: its FIFOs
        pids = [rig.server.pin(gpio)['worker_pid'] for gpio in (4, 5, 6)]
        assert not [p.name for p in workdir.iterdir() if p.name.startswith('.lgd-nfy')]
        for pid in pids:
            fifos = [p.name for p in (workdir / f'worker-{pid}').iterdir()]
            assert any(name.startswith('.lgd-nfy') for name in fifos), fifos
        os.kill(pids[0], signal.SIGKILL)                # leaves its directory behind
        rig.server.wait_free(4)
        buttons[1].close()                              # ends: removes its own
        rig.server.wait_free(5)
        assert not (workdir / f'worker-{pids[1]}').exists()
        for gpio in range(10, 14):                      # new workers sweep the dead one's
            led = LED(gpio, pin_factory=factory)
            led.on()
            assert led.value == 1 and rig.level(gpio) == 1
        assert not (workdir / f'worker-{pids[0]}').exists()
        factory.close()
    finally:
        rig.close()


def test_a_flood_at_a_pin_does_not_stretch_its_owners_task(server):
    """Other clients flood the pin's worker with drives while its owner's 100 ms impulse runs."""
    remote = RemoteServer('127.0.0.1', server.port)
    floods = [socket.create_connection((server.host, server.port)) for _ in range(4)]
    stop = threading.Event()

    def drain(sock):
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                if not sock.recv(65536):
                    return
            except socket.timeout:
                continue
            except OSError:
                return

    burst = b''.join(encode({'id': i, 'op': 'drive', 'pin': 19, 'state': i % 2})
                     for i in range(1, 5001))
    readers = [threading.Thread(target=drain, args=(sock,), daemon=True) for sock in floods]
    try:
        for sock, reader in zip(floods, readers):
            sock.sendall(encode({'id': 0, 'op': 'hello', 'protocol': 1}))
            reader.start()
        pin = remote.pin(19, 'g')
        handle = pin.on(time_ms=100)
        senders = [threading.Thread(target=sock.sendall, args=(burst,)) for sock in floods]
        for sender in senders:
            sender.start()
        assert handle.wait(30) == 'completed'
        for sender in senders:
            sender.join(30)
        history = server.pin(19)['history']
        start = next(i for i, e in enumerate(history) if e.get('function') == 'output')
        changes = [(e['t'], e['state']) for e in history[start:] if 'state' in e]
        rise = next(t for t, state in changes if state == 1)
        fall = next(t for t, state in changes if state == 0 and t > rise)
        assert abs(fall - rise - 0.100) < TOLERANCE, fall - rise
    finally:
        stop.set()
        for sock in floods:
            sock.close()
        remote.close()
        server.wait_free(19)


def test_claims_and_releases_racing_status_and_drives_never_wedge_a_pin(fresh_server):
    server = fresh_server()
    stop = threading.Event()
    errors = []

    def poll_status():
        while not stop.is_set():
            try:
                server.status(history=1000)
            except Exception as exc:           # noqa: BLE001 - collected, asserted below
                errors.append(exc)

    def drive():
        sock = socket.create_connection((server.host, server.port))
        sock.sendall(encode({'id': 0, 'op': 'hello', 'protocol': 1}))
        reader = sock.makefile('rb')
        n = 0
        while not stop.is_set():
            n += 1
            sock.sendall(encode({'id': n, 'op': 'drive', 'pin': 6, 'state': n % 2}))
            reader.readline()
        sock.close()

    threads = [threading.Thread(target=poll_status), threading.Thread(target=drive)]
    for thread in threads:
        thread.start()
    clients = [server.factory(), server.factory()]
    try:
        for cycle in range(150):
            # (an InputDevice: gpiozero's Button has a race of its own with an edge
            # arriving while it is being constructed, which this pin's drives provoke)
            device = InputDevice(6, pin_factory=clients[cycle % 2])
            device.close()
            server.wait_free(6)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        for client in clients:
            client.close()
    assert not errors, errors[:3]
    assert not [line for line in server.stderr_lines if 'ERROR' in line], server.stderr_lines[:5]


def test_status_floods_do_not_disturb_a_bystanders_timing(server):
    """Eight clients asking for 1000-entry histories over and over while a pin blinks."""
    remote = RemoteServer('127.0.0.1', server.port)
    stop = threading.Event()
    polls = []

    def poll():
        while not stop.is_set():
            server.status(history=1000)
            polls.append(1)

    pollers = [threading.Thread(target=poll) for _ in range(8)]
    try:
        pin = remote.pin(20, 'g')
        pin.blink(arg1=0.01, arg2=0.01, n=500).wait(30)   # 1000 transitions of history first
        for poller in pollers:
            poller.start()
        wait_for(lambda: len(polls) >= 8, message='the status floods to start')
        started = server.status(history=0)['monotonic']
        assert pin.on(time_ms=100).wait(10) == 'completed'
        assert pin.blink(arg1=0.02, arg2=0.02, n=10).wait(10) == 'completed'
        history = server.pin(20, history=1000)['history']
    finally:
        stop.set()
        for poller in pollers:
            poller.join(30)
        remote.close()
        server.wait_free(20)
    # after *started*: the impulse's rise and fall, then ten 20 ms blinks
    tail = [(e['t'], e['state']) for e in history if 'state' in e and e['t'] > started]
    assert [s for _, s in tail] == [1, 0] * 11, tail
    rise, fall = tail[0][0], tail[1][0]
    assert abs(fall - rise - 0.100) < TOLERANCE, fall - rise
    rises = [t for t, state in tail[2:] if state == 1]
    assert len(rises) == 10
    for k, t in enumerate(rises):
        assert abs(t - rises[0] - k * 0.040) < TOLERANCE, (k, t - rises[0])
    assert len(polls) >= 8
