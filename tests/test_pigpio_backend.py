"""
The pigpio backend's own pitfalls, on the pigpiod double: pigpio learns
levels only from the daemon's reports, so a level change before anything
watched the pin must not cost the first edge; the daemon's glitch filter
outlives a pin, so a released pin's bounce must not be inherited; and
``--backend auto`` looks for this machine's daemon, never PIGPIO_ADDR's.
"""

import os
import threading

from gpiozero import Button, LED

from conftest import ServerProcess
from rigs import start_rig


def test_the_first_press_after_the_pull_changed_arrives():
    rig = start_rig('pigpio')
    try:
        factory = rig.server.factory()
        # GPIO20 is pulled down at reset and not driven: the Button's pull-up raises
        # it before anything watches it
        button = Button(20, pin_factory=factory)
        assert button.pin.state == 1 and rig.level(20) == 1
        pressed = threading.Event()
        button.when_pressed = pressed.set
        rig.drive(20, 0)
        assert pressed.wait(5), 'the first press was lost'
        factory.close()
    finally:
        rig.close()


def test_the_next_client_does_not_inherit_the_glitch_filter():
    rig = start_rig('pigpio')
    try:
        first = rig.server.factory()
        button = Button(5, pin_factory=first, bounce_time=0.3)
        assert rig.daemon.glitch_filter(5) == 300000
        button.close()
        rig.server.wait_free(5)
        first.close()
        assert rig.daemon.glitch_filter(5) == 0, 'the filter outlived the pin'
    finally:
        rig.close()


def test_auto_never_drives_the_daemon_pigpio_addr_names(tmp_path):
    """PIGPIO_ADDR names a remote Pi on a client machine; auto must not drive its pins."""
    from emulation.pigpiod import PigpiodDouble
    remote = PigpiodDouble(host='127.0.0.2')       # "another machine" on loopback
    remote.start()
    try:
        env = dict(os.environ, PIGPIO_ADDR='127.0.0.2', PIGPIO_PORT=str(remote.port),
                   LG_WD=str(tmp_path))
        server = ServerProcess(backend='auto', env=env)
        try:
            assert server.status()['backend'] == 'mock'
            factory = server.factory()
            LED(17, pin_factory=factory).on()
            factory.close()
        finally:
            server.stop()
        assert remote.mode(17) == 0 and remote.level(17) == 0
    finally:
        remote.stop()
