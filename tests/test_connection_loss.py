"""
Losing the server never leaves a script hanging: unmodified gpiozero scripts
in subprocesses against a server that is killed (``kill -9``), restarted, or
whose lease the client lets lapse.

By default the client reconnects and restores its pins; if the server has not
come back within ``REMOTEIO_RECONNECT_TIMEOUT`` seconds, every blocked call
raises ``RemoteIOConnectionError``, the main thread gets it too (wherever it
is blocked), and the script exits non-zero with one clear message.
``REMOTEIO_RECONNECT=0`` makes a loss fatal at once.
"""

import os
import signal
import threading
import time

import pytest

from conftest import start_script, wait_for

BOUND = 2                          # REMOTEIO_RECONNECT_TIMEOUT of the scripts that give up

# Where the main thread of a script blocks; each must end when the connection is lost for good.
BLOCKERS = {
    'signal.pause': 'signal.pause()',
    'Event.wait': 'threading.Event().wait()',
    'wait_for_press': 'button.wait_for_press()',
    'time.sleep': 'time.sleep(600)',
}

BLOCKED_SCRIPT = """
    import signal, sys, threading, time
    from gpiozero import LED, Button
    from remoteio_factory import RemoteIOConnectionError
    led = LED(17)
    led.blink(0.02, 0.02)                 # gpiozero's blink thread writes all along
    button = Button(27)

    def reader():                         # another thread blocked in calls on the factory
        try:
            while True:
                button.value
        except RemoteIOConnectionError as exc:
            print('reader:', type(exc).__name__, flush=True)
    # Not a daemon: the interpreter waits for it at exit, so its line is printed even when
    # the main thread gets the error first (a daemon thread is stopped wherever it is then);
    # if its call were never woken, the script would not exit and the test would fail.
    threading.Thread(target=reader).start()
    print('ready', flush=True)
    {blocker}
    print('the blocking call returned', flush=True)
"""


def finish(script, timeout):
    """Wait for *script* to exit (at most *timeout* s); return (returncode, stdout, stderr)."""
    out = []
    reader = threading.Thread(target=lambda: out.append(script.communicate()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        script.kill()
        reader.join(10)
        pytest.fail(f'the script did not exit within {timeout} s: {out}')
    stdout, stderr = out[0]
    return script.returncode, stdout, stderr


@pytest.mark.parametrize('blocker', sorted(BLOCKERS))
def test_a_script_blocked_anywhere_ends_when_the_server_does_not_come_back(fresh_server, blocker):
    server = fresh_server()
    script = start_script(server, BLOCKED_SCRIPT.format(blocker=BLOCKERS[blocker]),
                          env=server.env(REMOTEIO_RECONNECT_TIMEOUT=str(BOUND)))
    server.stop(sig=signal.SIGKILL)
    killed = time.monotonic()
    returncode, stdout, stderr = finish(script, BOUND + 20)
    elapsed = time.monotonic() - killed
    assert returncode != 0
    assert elapsed >= BOUND - 0.5, 'it gave up before the bound'
    assert 'reader: RemoteIOConnectionError' in stdout          # the other blocked call too
    assert 'the blocking call returned' not in stdout
    # One clear message: what happened, where, how long we waited, how to change it.
    assert stderr.count('Traceback') == 1, stderr
    assert 'Exception in thread' not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith('remoteio_factory.exc.RemoteIOConnectionError: '), stderr
    assert f'127.0.0.1:{server.port}' in last and f'within {BOUND} s' in last, last
    assert 'REMOTEIO_RECONNECT_TIMEOUT' in last and 'REMOTEIO_RECONNECT=0' in last, last


def test_without_reconnecting_a_loss_ends_the_script_at_once(fresh_server):
    server = fresh_server()
    script = start_script(server, BLOCKED_SCRIPT.format(blocker=BLOCKERS['signal.pause']),
                          env=server.env(REMOTEIO_RECONNECT='0'))
    server.stop(sig=signal.SIGKILL)
    killed = time.monotonic()
    returncode, stdout, stderr = finish(script, 20)
    assert returncode != 0 and time.monotonic() - killed < 10
    assert 'reader: RemoteIOConnectionError' in stdout
    assert stderr.count('Traceback') == 1 and 'Exception in thread' not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert f'127.0.0.1:{server.port}' in last and 'REMOTEIO_RECONNECT' in last, last


@pytest.mark.skipif(not hasattr(signal, 'pthread_kill'), reason='POSIX signals')
def test_a_signal_the_main_thread_missed_is_sent_again(fresh_server):
    """
    signal.pause() checks for signals only after its system call: one that arrives just
    before is handled by the C handler and pause() sleeps on. Here the main thread takes
    the first signal itself (sigwait, the signal blocked) as if pause() had missed it; the
    error must still reach it, from the signal sent again.
    """
    server = fresh_server()
    script = start_script(server, """
        import signal
        from gpiozero import LED
        from remoteio_factory import interrupt
        led = LED(17)
        ours = interrupt._signum
        signal.pthread_sigmask(signal.SIG_BLOCK, {ours})
        print('ready', flush=True)
        signal.sigwait({ours})                 # the first signal, swallowed
        print('swallowed', flush=True)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {ours})
        signal.pause()
        print('pause returned', flush=True)
    """, env=server.env(REMOTEIO_RECONNECT='0'))
    server.stop(sig=signal.SIGKILL)
    returncode, stdout, stderr = finish(script, 20)
    assert 'swallowed' in stdout and 'pause returned' not in stdout, stdout
    assert returncode != 0
    assert stderr.count('Traceback') == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith(
        'remoteio_factory.exc.RemoteIOConnectionError: '), stderr


def test_a_main_thread_waiting_in_a_call_gets_the_error_once(fresh_server):
    server = fresh_server()
    script = start_script(server, """
        import threading
        from gpiozero import Button
        from remoteio_factory import RemoteIOConnectionError
        button = Button(27)
        print('ready', flush=True)
        try:
            while True:
                button.value                      # the main thread waits in calls of ours
        except RemoteIOConnectionError as exc:
            print('caught', flush=True)
        threading.Event().wait(1)                 # a second error would end this early
        print('no second error', flush=True)
    """, env=server.env(REMOTEIO_RECONNECT_TIMEOUT=str(BOUND)))
    server.stop(sig=signal.SIGKILL)
    returncode, stdout, stderr = finish(script, BOUND + 20)
    assert stdout.split('\n')[:2] == ['caught', 'no second error'], (stdout, stderr)
    assert returncode == 0 and 'Traceback' not in stderr, stderr


def test_calls_waiting_for_the_connection_raise_at_the_bound(fresh_server):
    from gpiozero import LED
    from remoteio_factory import RemoteIOConnectionError
    server = fresh_server()
    # In this process: interrupt_main=False leaves pytest's main thread alone.
    factory = server.factory(reconnect_timeout=1, interrupt_main=False)
    try:
        led = LED(17, pin_factory=factory)
        led.on()
        server.stop(sig=signal.SIGKILL)
        wait_for(lambda: factory.reconnecting, 5, message='the factory to notice')
        started = time.monotonic()
        led.on()                                  # a write in the gap: dropped, no error
        with pytest.raises(RemoteIOConnectionError, match='did not come back within 1 s'):
            _ = led.value                         # waits for the reconnection, then gives up
        assert 0.2 < time.monotonic() - started < 6
        with pytest.raises(RemoteIOConnectionError, match='REMOTEIO_RECONNECT_TIMEOUT'):
            led.off()                             # and every later call raises it too
    finally:
        factory.close()


RESTORED_SCRIPT = """
    import sys, threading
    from gpiozero import LED, PWMLED, Button
    led = LED(17)                              # wired to GPIO27 (--mock-wire 17:27)
    lamp = PWMLED(18, frequency=500)
    button = Button(27, pull_up=False)
    presses = []
    button.when_pressed = lambda: presses.append(1)
    led.on()
    assert button.wait_for_press(10)
    led.off()
    assert button.wait_for_release(10)
    lamp.value = 0.3
    print('ready', flush=True)
    sys.stdin.readline()                       # meanwhile the server dies and comes back
    led.on()
    print('pressed', button.wait_for_press(10), len(presses), flush=True)
    print('lamp', lamp.value, flush=True)
"""


def test_a_server_restarted_within_the_bound_gets_the_pins_back(fresh_server):
    first = fresh_server('--mock-wire', '17:27')
    port = first.port
    script = start_script(first, RESTORED_SCRIPT,
                          env=first.env(REMOTEIO_RECONNECT_TIMEOUT='30'))
    try:
        first.stop(sig=signal.SIGKILL)
        second = fresh_server('--mock-wire', '17:27', '--port', str(port))

        def restored():
            pins = {p['gpio']: p for p in second.status()['pins'] if p['status'] == 'claimed'}
            return len(pins) == 3 and pins
        pins = wait_for(restored, 30, interval=0.1, message='the pins to be restored')
        assert pins[17]['function'] == 'output' and pins[17]['state'] is False
        assert pins[18]['frequency'] == 500.0 and pins[18]['state'] == pytest.approx(0.3)
        assert pins[27]['function'] == 'input'
        script.stdin.write('go\n')
        script.stdin.flush()
        returncode, stdout, stderr = finish(script, 30)
    finally:
        if script.poll() is None:
            script.kill()
    assert returncode == 0, stderr
    assert stdout.splitlines() == ['pressed True 2', 'lamp 0.3'], stdout
    assert 'Traceback' not in stderr, stderr
    lost = [line for line in stderr.splitlines() if 'lost the connection' in line]
    back = [line for line in stderr.splitlines() if 'reconnected' in line]
    assert len(lost) == 1 and len(back) == 1, stderr
    assert 'GPIO17' in back[0] and 'GPIO18' in back[0] and 'GPIO27' in back[0], back


@pytest.mark.skipif(not hasattr(signal, 'SIGSTOP'), reason='needs SIGSTOP')
def test_a_client_whose_lease_lapsed_reconnects_and_carries_on(fresh_server):
    server = fresh_server()
    script = start_script(server, """
        import sys
        from gpiozero import LED
        led = LED(17)
        led.on()
        print('ready', flush=True)
        sys.stdin.readline()
        print(led.value, flush=True)
    """)
    try:
        os.kill(script.pid, signal.SIGSTOP)                  # frozen: no heartbeats
        try:
            server.wait_free(17, timeout=20)                  # the lease ran out
        finally:
            os.kill(script.pid, signal.SIGCONT)
        wait_for(lambda: (server.pin(17) or {}).get('status') == 'claimed'
                 and server.pin(17)['state'] is True, 20, interval=0.05,
                 message='the pin to be claimed again and restored')
        script.stdin.write('go\n')
        script.stdin.flush()
        returncode, stdout, stderr = finish(script, 30)
    finally:
        if script.poll() is None:
            script.kill()
    assert returncode == 0, stderr
    assert stdout.strip() == '1'
    assert 'lease' in stderr and 'reconnected' in stderr, stderr
