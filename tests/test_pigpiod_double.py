"""
The pigpiod double (tests/emulation/pigpiod.py) against the real clients: the
``pigpio`` library's ``pigpio.pi`` and gpiozero's ``PiGPIOFactory`` on top of
it, unmodified, over real sockets on 127.0.0.1.
"""

import socket
import struct
import threading

import pytest

pigpio = pytest.importorskip('pigpio')
from gpiozero import LED, PWMLED, Button  # noqa: E402
from gpiozero.pins.pigpio import PiGPIOFactory  # noqa: E402

from emulation.pigpiod import PigpiodDouble  # noqa: E402

TIMEOUT = 5.0


@pytest.fixture
def pigpiod():
    double = PigpiodDouble()
    double.start()
    yield double
    double.stop()


@pytest.fixture
def pi(pigpiod):
    client = pigpio.pi('127.0.0.1', pigpiod.port, show_errors=False)
    assert client.connected
    yield client
    client.stop()


@pytest.fixture
def factory(pigpiod):
    pin_factory = PiGPIOFactory(host='127.0.0.1', port=pigpiod.port)
    yield pin_factory
    pin_factory.close()


@pytest.fixture
def raw(pigpiod):
    sock = socket.create_connection(('127.0.0.1', pigpiod.port), timeout=TIMEOUT)
    yield sock
    sock.close()


def recv_exactly(sock, count):
    data = b''
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, 'the double closed the connection'
        data += chunk
    return data


def command(sock, cmd, p1=0, p2=0):
    """One command on a raw socket; the reply must echo cmd, p1 and p2."""
    sock.sendall(struct.pack('<IIII', cmd, p1, p2, 0))
    echo_cmd, echo_p1, echo_p2, result = struct.unpack('<IIIi', recv_exactly(sock, 16))
    assert (echo_cmd, echo_p1, echo_p2) == (cmd, p1, p2)
    return result


class Recorder:
    """A pigpio callback that records (gpio, level, tick) and signals each call."""

    def __init__(self):
        self.calls = []
        self.changed = threading.Condition()

    def __call__(self, gpio, level, tick):
        with self.changed:
            self.calls.append((gpio, level, tick))
            self.changed.notify_all()

    def wait(self, count):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, TIMEOUT), self.calls
            return list(self.calls)


# -- the protocol, command by command -----------------------------------------

@pytest.mark.parametrize('cmd, p1, p2, expected', [
    (3, 54, 0, pigpio.PI_BAD_GPIO),            # READ GPIO 54
    (1, 54, 0, pigpio.PI_BAD_GPIO),            # MODEG GPIO 54
    (0, 17, 8, pigpio.PI_BAD_MODE),            # MODES bad mode
    (0, 0, 1, pigpio.PI_NOT_PERMITTED),        # MODES on GPIO 0: not in a Pi 3B's update mask
    (2, 17, 3, pigpio.PI_BAD_PUD),             # PUD 3
    (4, 17, 2, pigpio.PI_BAD_LEVEL),           # WRITE 2
    (5, 54, 0, pigpio.PI_BAD_USER_GPIO),       # PWM on GPIO 54
    (5, 32, 0, pigpio.PI_NOT_PERMITTED),       # PWM on GPIO 32: the mask is checked first
    (83, 32, 0, pigpio.PI_BAD_USER_GPIO),      # GDC on GPIO 32 (no mask for reads)
    (5, 17, 256, pigpio.PI_BAD_DUTYCYCLE),     # PWM above the default range 255
    (83, 17, 0, pigpio.PI_NOT_PWM_GPIO),       # GDC on a GPIO not running PWM
    (6, 18, 24, pigpio.PI_BAD_DUTYRANGE),      # PRS below 25
    (6, 18, 40001, pigpio.PI_BAD_DUTYRANGE),   # PRS above 40000
    (22, 18, 0, 255),                          # PRG: default range
    (23, 18, 0, 800),                          # PFG: default frequency
    (24, 18, 0, 250),                          # PRRG: default real range
    (97, 4, 300001, pigpio.PI_BAD_FILTER),     # FG above 300000 us
    (97, 32, 0, pigpio.PI_BAD_USER_GPIO),      # FG on GPIO 32
    (9, 4, 60001, pigpio.PI_BAD_WDOG_TIMEOUT),  # WDOG above 60 s
    (19, 5, 0, pigpio.PI_BAD_HANDLE),          # NB on a handle nobody opened
    (21, 32, 0, pigpio.PI_BAD_HANDLE),         # NC on handle 32
    (17, 0, 0, 0xA02082),                      # HWVER: a Pi 3B
    (26, 0, 0, 79),                            # PIGPV
    (200, 1, 2, pigpio.PI_UNKNOWN_COMMAND),    # no such command
    (75, 0, 0, pigpio.PI_UNKNOWN_COMMAND),     # SPIX: not emulated
])
def test_commands_answer_with_the_daemons_codes(raw, cmd, p1, p2, expected):
    assert command(raw, cmd, p1, p2) == expected


@pytest.mark.parametrize('asked, frequency, real_range', [
    (100, 100, 2000), (1234, 1000, 200), (99999, 8000, 25), (1, 10, 20000),
    (875, 800, 250), (0, 10, 20000),
])
def test_pwm_frequencies_snap_to_the_5us_table(pi, asked, frequency, real_range):
    assert pi.set_PWM_frequency(18, asked) == frequency
    assert pi.get_PWM_frequency(18) == frequency
    assert pi.get_PWM_real_range(18) == real_range
    assert pi.set_PWM_range(18, 10000) == real_range


def test_pwm_range_rescales_a_running_dutycycle(pigpiod, pi):
    pi.set_PWM_dutycycle(18, 51)               # of 255
    assert pi.set_PWM_range(18, 1000) == 250
    assert pi.get_PWM_dutycycle(18) == 200     # 1000 * 51 // 255
    assert pigpiod.pwm(18) == (200, 1000, 800)
    pi.write(18, 0)                            # a write stops PWM
    assert pigpiod.pwm(18).dutycycle is None
    with pytest.raises(pigpio.error):
        pi.get_PWM_dutycycle(18)


def test_extensions_are_read_and_unknown_commands_still_answered(raw):
    raw.sendall(struct.pack('<IIII', 57, 0, 0, 3) + b'abc')     # I2CWD with 3 bytes
    assert struct.unpack('<IIIi', recv_exactly(raw, 16))[3] == pigpio.PI_UNKNOWN_COMMAND
    assert command(raw, 3, 2) == 1             # READ GPIO 2: still in step, pulled up


def test_banks_read_and_written(pigpiod, pi):
    pi.set_mode(5, pigpio.OUTPUT)
    pi.set_mode(6, pigpio.OUTPUT)
    assert pi.set_bank_1((1 << 5) | (1 << 6)) == 0
    assert pigpiod.level(5) == pigpiod.level(6) == 1
    assert pi.read_bank_1() & 0b1100000 == 0b1100000
    assert pi.clear_bank_1(1 << 6) == 0
    assert pigpiod.level(6) == 0
    with pytest.raises(pigpio.error):          # GPIO 0 is outside the update mask
        pi.set_bank_1(1)


# -- gpiozero's PiGPIOFactory ---------------------------------------------------

def test_led_on_off(pigpiod, factory):
    led = LED(17, pin_factory=factory)
    assert pigpiod.mode(17) == pigpio.OUTPUT
    assert pigpiod.level(17) == 0
    led.on()
    assert pigpiod.level(17) == 1
    assert led.is_lit
    led.off()
    assert pigpiod.level(17) == 0
    led.close()
    assert pigpiod.mode(17) == pigpio.INPUT


def test_pwmled_value_sets_the_dutycycle(pigpiod, factory):
    led = PWMLED(18, pin_factory=factory)
    assert pigpiod.pwm(18) == (0, 10000, 100)  # gpiozero: 100 Hz, range 10000
    led.value = 0.5
    assert pigpiod.pwm(18) == (5000, 10000, 100)
    assert pigpiod.level(18) == 1
    assert led.value == 0.5
    led.value = 1
    assert pigpiod.pwm(18).dutycycle == 10000
    led.value = 0
    assert pigpiod.level(18) == 0
    led.close()
    assert pigpiod.pwm(18).dutycycle is None
    assert pigpiod.mode(18) == pigpio.INPUT


def test_button_with_pull_up_fires_on_the_right_edges(pigpiod, factory):
    button = Button(4, pin_factory=factory)    # pull_up=True
    assert pigpiod.pull(4) == pigpio.PUD_UP
    assert pigpiod.level(4) == 1
    assert not button.is_pressed
    pressed, released = threading.Event(), threading.Event()
    button.when_pressed = pressed.set
    button.when_released = released.set
    pigpiod.drive(4, 0)                        # the switch shorts GPIO 4 to ground
    assert pressed.wait(TIMEOUT)
    assert not released.is_set()
    assert button.is_pressed
    pigpiod.drive(4, None)                     # let go: the pull-up wins again
    assert released.wait(TIMEOUT)
    assert pigpiod.level(4) == 1
    assert not button.is_pressed
    button.close()


def test_button_bounce_time_sets_the_glitch_filter(pigpiod, factory):
    button = Button(4, bounce_time=0.1, pin_factory=factory)
    assert pigpiod.glitch_filter(4) == 100000
    button.close()


def test_factory_reads_the_board_and_ticks(pigpiod, factory):
    assert factory.board_info.model == '3B'
    assert 0 <= factory.ticks() < 2 ** 32


# -- pigpio's callbacks (the notification socket) ---------------------------------

def test_callback_receives_the_right_levels_and_ticks(pigpiod, pi):
    pi.set_pull_up_down(4, pigpio.PUD_UP)
    either, falling = Recorder(), Recorder()
    pi.callback(4, pigpio.EITHER_EDGE, either)
    pi.callback(4, pigpio.FALLING_EDGE, falling)
    low = pigpiod.drive(4, 0)
    high = pigpiod.drive(4, 1)
    assert either.wait(2) == [(4, 0, low), (4, 1, high)]
    assert falling.wait(1) == [(4, 0, low)]


def test_callback_sees_the_clients_own_writes(pi):
    seen = Recorder()
    pi.callback(17, pigpio.RISING_EDGE, seen)
    pi.write(17, 1)
    assert [level for _, level, _ in seen.wait(1)] == [1]


# GPIO 17 and 22 start pulled down. (The pigpio client compares each report
# with the bank it read when it connected, so a test that changes an input's
# pull before it monitors the input would hide the next edge from it.)

def test_unmonitored_changes_are_not_reported(pigpiod, pi):
    seen = Recorder()
    pi.callback(17, pigpio.EITHER_EDGE, seen)
    pigpiod.drive(22, 1)                       # nobody watches GPIO 22
    tick = pigpiod.drive(17, 1)
    assert seen.wait(1) == [(17, 1, tick)]     # the first report is GPIO 17's


def test_watchdog_reports_a_timeout(pi):
    seen = Recorder()
    pi.callback(4, pigpio.EITHER_EDGE, seen)
    pi.set_watchdog(4, 20)
    assert seen.wait(1)[0][:2] == (4, pigpio.TIMEOUT)
    pi.set_watchdog(4, 0)


def test_the_33rd_notification_handle_fails(pigpiod):
    clients = []
    try:
        for _ in range(32):
            clients.append(pigpio.pi('127.0.0.1', pigpiod.port, show_errors=False))
        assert all(client.connected for client in clients)
        assert pigpiod.handles_in_use() == 32
        extra = pigpio.pi('127.0.0.1', pigpiod.port, show_errors=False)
        assert not extra.connected             # its NOIB got PI_NO_HANDLE
        with socket.create_connection(('127.0.0.1', pigpiod.port), timeout=TIMEOUT) as sock:
            assert command(sock, 99) == pigpio.PI_NO_HANDLE
        clients.pop().stop()                   # closing a client frees its handle
        assert pigpiod.wait_for(lambda: pigpiod.handles_in_use() == 31, TIMEOUT)
        clients.append(pigpio.pi('127.0.0.1', pigpiod.port, show_errors=False))
        assert clients[-1].connected
    finally:
        for client in clients:
            client.stop()
    assert pigpiod.wait_for(lambda: pigpiod.handles_in_use() == 0, TIMEOUT)


def test_notify_close_frees_the_handle_and_answers(raw, pigpiod):
    handle = command(raw, 99)                  # NOIB: this socket now gets reports
    assert handle == 0
    assert pigpiod.handles_in_use() == 1
    assert command(raw, 21, handle) == 0       # NC, answered on the same socket
    assert pigpiod.handles_in_use() == 0
    assert command(raw, 19, handle, 1 << 4) == pigpio.PI_BAD_HANDLE


def test_reports_on_a_raw_notification_socket(raw, pigpiod, pi):
    handle = command(raw, 99)
    assert pi.notify_begin(handle, 1 << 17) == 0
    tick = pigpiod.drive(17, 1)
    seqno, flags, report_tick, level = struct.unpack('<HHII', recv_exactly(raw, 12))
    assert (seqno, flags, report_tick) == (0, 0, tick)
    assert level == pi.read_bank_1()
    assert level >> 17 & 1
    pigpiod.drive(17, 0)
    assert struct.unpack('<HHII', recv_exactly(raw, 12))[:2] == (1, 0)


# -- the glitch filter -----------------------------------------------------------

def test_glitch_filter_suppresses_a_short_pulse(pigpiod, pi):
    steady = 100000                            # 0.1 s
    assert pi.set_glitch_filter(17, steady) == 0
    seen = Recorder()
    pi.callback(17, pigpio.EITHER_EDGE, seen)
    start = pigpiod.drive(17, 1)
    end = pigpiod.drive(17, 0)                 # a pulse some microseconds long
    if (end - start) % 2 ** 32 >= steady:
        pytest.skip('the machine stalled for longer than the filter time')
    assert pi.read(17) == 0
    stable = pigpiod.drive(17, 1)              # and this one stays
    assert pi.read(17) == 1                    # READ is not filtered
    # Reports are in order: had the pulse been reported, it would come first.
    # The stable edge is timestamped steady us after it was first seen.
    assert seen.wait(1) == [(17, 1, (stable + steady) % 2 ** 32)]


def test_glitch_filter_reports_each_stable_level(pigpiod, pi):
    pi.set_glitch_filter(17, 20000)
    seen = Recorder()
    pi.callback(17, pigpio.EITHER_EDGE, seen)
    high = pigpiod.drive(17, 1)
    seen.wait(1)
    low = pigpiod.drive(17, 0)
    assert seen.wait(2) == [(17, 1, (high + 20000) % 2 ** 32),
                            (17, 0, (low + 20000) % 2 ** 32)]


# -- connections and life cycle --------------------------------------------------

def test_stopped_clients_close_their_connections(pigpiod):
    client = pigpio.pi('127.0.0.1', pigpiod.port, show_errors=False)
    assert pigpiod.connections() == 2          # command and notification sockets
    client.stop()
    assert pigpiod.wait_for(lambda: pigpiod.connections() == 0, TIMEOUT)
    assert pigpiod.handles_in_use() == 0


def test_connections_are_bounded():
    with PigpiodDouble(max_connections=2) as double:
        first = pigpio.pi('127.0.0.1', double.port, show_errors=False)
        second = pigpio.pi('127.0.0.1', double.port, show_errors=False)
        try:
            assert first.connected
            assert not second.connected
        finally:
            first.stop()
            assert double.wait_for(lambda: double.connections() == 0, TIMEOUT)


def test_stop_closes_everything_and_joins_its_threads():
    double = PigpiodDouble().start()
    sock = socket.create_connection(('127.0.0.1', double.port), timeout=TIMEOUT)
    assert command(sock, 16) >= 0              # TICK
    double.wait_for(lambda: double.connections() == 1, TIMEOUT)
    double.stop()
    assert sock.recv(16) == b''                # closed by the double
    sock.close()
    assert double.connections() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith('pigpiod-double')]
    with pytest.raises(OSError):
        socket.create_connection(('127.0.0.1', double.port), timeout=TIMEOUT)


def test_ticks_wrap_at_32_bits():
    with PigpiodDouble(tick_origin=2 ** 32 + 7) as double:
        with socket.create_connection(('127.0.0.1', double.port), timeout=TIMEOUT) as sock:
            tick = command(sock, 16) % 2 ** 32  # TICK
            assert 7 <= tick < 2 ** 31


def test_only_loopback_is_served():
    with pytest.raises(ValueError):
        PigpiodDouble(host='0.0.0.0')
