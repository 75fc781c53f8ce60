"""
The emulated GPIO chip itself (``emulation/gpiochip.c`` and ``.py``), which
the lgpio and rpigpio rigs stand on: what a program sees through the GPIO
character device's uAPI v2 (``fcntl.ioctl`` with ``struct``-packed requests,
and the real ``lgpio`` module), in subprocesses with the emulation preloaded,
against what the tests' side sees of the same chip.
"""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import wait_for
from emulation import gpiochip
from emulation.gpiochip import EmulatedPi, EmulationUnavailable

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'),
                                reason='the GPIO character device is Linux only')

#: What every program below starts with: the uAPI v2 structs, packed by hand.
PRELUDE = r'''
import ctypes, errno, fcntl, os, select, signal, stat, struct, sys, threading, time

def _ioc(direction, nr, size):
    return (direction << 30) | (size << 16) | (0xB4 << 8) | nr

CHIPINFO, LINEINFO, GET_LINE = _ioc(2, 0x01, 68), _ioc(3, 0x05, 256), _ioc(3, 0x07, 592)
SET_CONFIG, GET_VALUES, SET_VALUES = _ioc(3, 0x0D, 272), _ioc(3, 0x0E, 16), _ioc(3, 0x0F, 16)
USED, ACTIVE_LOW, INPUT, OUTPUT, RISING, FALLING = 1, 2, 4, 8, 16, 32
PULL_UP, PULL_DOWN, BIAS_DISABLED, REALTIME = 256, 512, 1024, 2048
EVENT = struct.Struct('QIIII24x')      # timestamp_ns, id, offset, seqno, line_seqno

def say(*words):
    print(*words, flush=True)

def input():
    """The next line the test tells; '' at the end."""
    return sys.stdin.readline().rstrip('\n')

def chip_info(chip):
    buf = bytearray(68)
    fcntl.ioctl(chip, CHIPINFO, buf)
    name, label, lines = struct.unpack('32s32sI', buf)
    return name.rstrip(b'\0').decode(), label.rstrip(b'\0').decode(), lines

def line_info(chip, offset):
    buf = bytearray(256)
    struct.pack_into('I', buf, 64, offset)
    fcntl.ioctl(chip, LINEINFO, buf)
    name, consumer, _, num_attrs, flags = struct.unpack_from('32s32sIIQ', buf)
    return {'name': name.rstrip(b'\0').decode(), 'consumer': consumer.rstrip(b'\0').decode(),
            'flags': flags, 'num_attrs': num_attrs}

def config(flags, values=None, count=1):
    buf = bytearray(272)
    struct.pack_into('Q', buf, 0, flags)
    if values is not None:             # one attribute: the output values of every line
        struct.pack_into('I', buf, 8, 1)
        struct.pack_into('IIQQ', buf, 32, 2, 0, values, (1 << count) - 1)
    return buf

def request(chip, offsets, flags, values=None, consumer=b'emu-test', buffer_size=0):
    buf = bytearray(592)
    struct.pack_into('64I', buf, 0, *offsets, *[0] * (64 - len(offsets)))
    buf[256:256 + len(consumer)] = consumer
    buf[288:560] = config(flags, values, len(offsets))
    struct.pack_into('II', buf, 560, len(offsets), buffer_size)
    fcntl.ioctl(chip, GET_LINE, buf)
    return struct.unpack_from('i', buf, 588)[0]

def get_values(fd, mask=1):
    buf = bytearray(struct.pack('QQ', 0, mask))
    fcntl.ioctl(fd, GET_VALUES, buf)
    return struct.unpack('QQ', buf)[0]

def set_values(fd, bits, mask=1):
    fcntl.ioctl(fd, SET_VALUES, bytearray(struct.pack('QQ', bits, mask)))

def events(fd, timeout=0.5):
    """Every event queued on request *fd* (read without blocking)."""
    got = []
    while select.select([fd], [], [], timeout)[0]:
        data = os.read(fd, EVENT.size * 1024)
        got += [EVENT.unpack_from(data, i) for i in range(0, len(data), EVENT.size)]
        timeout = 0.05
    return got

# the emulation's own functions, from the preloaded library
emu = ctypes.CDLL(None)
chip = os.open('/dev/gpiochip%d' % int(os.environ.get('EMU_CHIP', '0')), os.O_RDWR | os.O_CLOEXEC)
'''


@pytest.fixture
def pi():
    try:
        board = EmulatedPi('d04170')
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    yield board
    board.close()


def _env(pi, extra=None):
    env = pi.env()
    env['EMU_CHIP'] = str(pi.chip)
    env['LG_WD'] = pi.directory        # lgpio's notification FIFOs: not in the tests' directory
    env.update(extra or {})
    return env


def run(pi, code, env=None, timeout=60, check=True):
    """Run *code* (after the prelude) with *pi* preloaded; its stdout."""
    result = subprocess.run([sys.executable, '-c', PRELUDE + textwrap.dedent(code)],
                            env=env or _env(pi), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr
    return result


class Program:
    """A program (after the prelude) running with *pi* preloaded, told what to do on stdin."""

    def __init__(self, pi, code, env=None):
        self.process = subprocess.Popen(
            [sys.executable, '-c', PRELUDE + textwrap.dedent(code)], env=env or _env(pi),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def expect(self, word):
        line = self.process.stdout.readline().strip()
        if not line.startswith(word):
            self.process.kill()
            raise AssertionError(f'expected {word!r}, got {line!r}: {self.process.stderr.read()}')
        return line[len(word):].strip()

    def tell(self, line=''):
        self.process.stdin.write(line + '\n')
        self.process.stdin.flush()

    def finish(self):
        self.process.stdin.close()
        assert self.process.wait(30) == 0, self.process.stderr.read()

    def kill(self):
        self.process.kill()
        self.process.wait(30)


# ---------------------------------------------------------------- the basics


def test_chip_info_and_line_info(pi):
    out = run(pi, '''
        say('chip', *chip_info(chip))
        info = line_info(chip, 17)
        say('free', info['name'], info['flags'], repr(info['consumer']))
        out = request(chip, [17], OUTPUT, values=1, consumer=b'blinker')
        inp = request(chip, [4, 5], INPUT | PULL_UP | RISING | FALLING, consumer=b'buttons')
        for line in (17, 4, 5):
            info = line_info(chip, line)
            say('line', line, info['flags'], info['consumer'])
        try:
            line_info(chip, 54)
        except OSError as exc:
            say('beyond', errno.errorcode[exc.errno])
    ''').stdout.splitlines()
    assert out[0] == 'chip gpiochip0 pinctrl-rp1 54'
    assert out[1] == "free GPIO17 4 ''"                          # INPUT, not USED
    assert out[2] == f'line 17 {1 | 8} blinker'                  # USED | OUTPUT
    flags = 1 | 4 | 256 | 16 | 32                                # USED | INPUT | PULL_UP | edges
    assert out[3] == f'line 4 {flags} buttons' and out[4] == f'line 5 {flags} buttons'
    assert out[5] == 'beyond EINVAL'
    # the requests ended with the program: free, as the tests' side sees too
    line = pi.line(17)
    assert not line['used'] and line['consumer'] == '' and line['direction'] == 'output'
    assert pi.line(4)['bias'] == 'up' and pi.line(4)['edges'] == 'none'


def test_an_output_is_seen_from_the_tests_side(pi):
    program = Program(pi, '''
        fd = request(chip, [17, 18], OUTPUT, values=0b01)
        say('requested')
        input()
        set_values(fd, 0b10, mask=0b11)
        say('set', get_values(fd, 0b11))
        input()
        os.close(fd)
        say('closed')
        inp = request(chip, [22], INPUT)
        try:
            set_values(inp, 1)
        except OSError as exc:
            say('input', errno.errorcode[exc.errno])
    ''')
    program.expect('requested')
    assert (pi.level(17), pi.level(18)) == (1, 0)
    assert pi.line(17)['direction'] == 'output' and pi.line(17)['used']
    program.tell()
    assert program.expect('set') == '2'
    assert (pi.level(17), pi.level(18)) == (0, 1)
    program.tell()
    program.expect('closed')
    assert not pi.line(17)['used'] and pi.level(18) == 1      # a freed output keeps its level
    assert program.expect('input') == 'EPERM'
    program.finish()


def test_a_held_line_is_busy_for_another_process_and_this_one(pi):
    holder = Program(pi, '''
        fd = request(chip, [17], OUTPUT)
        say('holding')
        try:
            request(chip, [16, 17], OUTPUT)
        except OSError as exc:
            say('again', errno.errorcode[exc.errno])
        input()
    ''')
    holder.expect('holding')
    assert holder.expect('again') == 'EBUSY'
    out = run(pi, '''
        try:
            request(chip, [17], INPUT)
        except OSError as exc:
            say(errno.errorcode[exc.errno])
        fd = request(chip, [16], OUTPUT)      # the other line of the failed request is free
        say('free')
    ''').stdout.split()
    assert out == ['EBUSY', 'free']
    holder.finish()


def test_a_line_is_released_on_close_on_sigkill_and_only_by_the_last_fd(pi):
    program = Program(pi, '''
        fd = request(chip, [17], OUTPUT, values=1)
        pid = os.fork()
        if pid == 0:                  # a child closes its copy: the request goes on
            os.close(fd)
            os._exit(0)
        os.waitpid(pid, 0)
        say('forked')
        input()
        os.close(fd)
        say('closed')
        input()
        fd = request(chip, [17], OUTPUT)
        say('again')
        input()
    ''')
    program.expect('forked')
    assert pi.line(17)['used']
    assert 'EBUSY' in run(pi, '''
        try:
            request(chip, [17], INPUT)
        except OSError as exc:
            say(errno.errorcode[exc.errno])
    ''').stdout
    program.tell()
    program.expect('closed')
    assert not pi.line(17)['used']
    program.tell()
    program.expect('again')
    assert pi.line(17)['used']
    program.kill()                    # SIGKILL: the kernel ends the request with the process
    assert not pi.line(17)['used']
    run(pi, 'request(chip, [17], INPUT)')


def test_edge_events_carry_monotonic_timestamps_and_seqnos(pi):
    program = Program(pi, '''
        one = request(chip, [4], INPUT | RISING | FALLING)
        both = request(chip, [5, 6], INPUT | RISING | FALLING)
        wall = request(chip, [7], INPUT | RISING | REALTIME)
        say('requested', time.monotonic_ns())
        input()
        say('now', time.monotonic_ns(), time.time_ns())
        for name, fd in (('one', one), ('both', both), ('wall', wall)):
            say(name, *[','.join(map(str, e)) for e in events(fd)])
    ''')
    start = int(program.expect('requested'))
    for level in (1, 0, 1, 0):
        pi.drive(4, level)
    for line, level in ((5, 1), (6, 1), (5, 0), (6, 0), (5, 1)):
        pi.drive(line, level)
    for level in (1, 0, 1):
        pi.drive(7, level)
    program.tell()
    monotonic, realtime = map(int, program.expect('now').split())

    def parse(word):
        return [tuple(map(int, e.split(','))) for e in program.expect(word).split()]

    one, both, wall = parse('one'), parse('both'), parse('wall')
    program.finish()
    # a one-line request: seqno is the line's; ids alternate rising (1) and falling (2)
    assert [(e[1], e[2], e[3], e[4]) for e in one] == [
        (1, 4, 1, 1), (2, 4, 2, 2), (1, 4, 3, 3), (2, 4, 4, 4)]
    stamps = [e[0] for e in one]
    assert stamps == sorted(stamps) and start <= stamps[0] and stamps[-1] <= monotonic
    # two lines: seqno counts the request's events, line_seqno each line's
    assert [(e[2], e[3], e[4]) for e in both] == [
        (5, 1, 1), (6, 2, 1), (5, 3, 2), (6, 4, 2), (5, 5, 3)]
    # rising only, on the realtime clock
    assert [(e[1], e[3]) for e in wall] == [(1, 1), (1, 2)]
    assert abs(wall[-1][0] - realtime) < 10 * 10**9 and wall[-1][0] > monotonic
    assert pi.line(4)['events'] == 4


def test_drive_and_wire(pi):
    program = Program(pi, '''
        out = request(chip, [17], OUTPUT)
        inp = request(chip, [27], INPUT | RISING | FALLING)
        say('requested')
        while input() == 'set':
            set_values(out, int(input()))
            say('value', get_values(inp), len(events(inp, 0.2)))
    ''')
    program.expect('requested')
    pi.wire(27, 17)                   # a jumper from GPIO17 to GPIO27
    for level in (1, 0, 1):
        program.tell('set')
        program.tell(str(level))
        assert program.expect('value') == f'{level} 1'
        assert pi.level(27) == level
    pi.drive(27, 0)                   # a level driven from outside wins over the wire
    assert pi.level(27) == 0
    pi.drive(27, None)
    assert pi.level(27) == 1
    pi.wire(27, None)                 # unplugged, no bias: it floats at its last level
    assert pi.level(27) == 1
    program.tell('end')
    program.finish()
    assert pi.level(2) == 1 and pi.level(3) == 1        # the board's I2C pull-ups


def test_the_device_tree_is_the_emulated_boards(pi):
    out = run(pi, '''
        say(open('/proc/device-tree/model', 'rb').read().rstrip(b'\\0').decode())
        with open('/sys/firmware/devicetree/base/system/linux,revision', 'rb') as f:
            say('%x' % struct.unpack('>I', f.read())[0])
        say(os.path.exists('/proc/device-tree/model'),
            os.path.exists('/sys/firmware/devicetree/base/system/linux,revision'))
    ''').stdout.splitlines()
    assert out == [pi.model, pi.revision, 'True True']


# ---------------------------------------------------------------- the defects a review found


def test_only_the_emulated_gpiochip_exists():
    """Every /dev/gpiochip* is intercepted: the emulated one exists (for os.stat,
    os.lstat, os.access, fstatat, statx) and opens; the others do not."""
    try:
        pi = EmulatedPi('d04170', chip=4)
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    try:
        out = run(pi, '''
            st = os.stat('/dev/gpiochip4')
            say('stat', stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev))
            st = os.lstat('/dev/gpiochip4')
            say('lstat', stat.S_ISCHR(st.st_mode))
            dev = os.open('/dev', os.O_RDONLY | os.O_DIRECTORY)
            say('fstatat', stat.S_ISCHR(os.stat('/dev/gpiochip4', dir_fd=dev).st_mode),
                os.access('/dev/gpiochip4', os.R_OK | os.W_OK, dir_fd=dev))
            buf = ctypes.create_string_buffer(256)   # struct statx: stx_mode at 28, rdev at 128
            emu.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                                  ctypes.c_char_p]
            rc = emu.statx(-100, b'/dev/gpiochip4', 0, 0xfff, buf)
            mode, = struct.unpack_from('H', buf, 28)
            major, minor = struct.unpack_from('II', buf, 128)
            say('statx', rc, stat.S_ISCHR(mode), major, minor)
            say('access', os.access('/dev/gpiochip4', os.R_OK | os.W_OK),
                os.path.exists('/dev/gpiochip4'))
            say('chip', *chip_info(chip))
            for path in ('/dev/gpiochip0', '/dev/gpiochip9', '/dev/gpiochip'):
                try:
                    os.open(path, os.O_RDWR)
                    say('opened', path)
                except OSError as exc:
                    say('open', path, errno.errorcode[exc.errno])
                say('exists', path, os.path.exists(path), os.path.lexists(path),
                    os.access(path, os.F_OK), os.access(path, os.F_OK, dir_fd=dev))
            say('statx', emu.statx(-100, b'/dev/gpiochip0', 0, 0xfff, buf), ctypes.get_errno())
        ''').stdout.splitlines()
    finally:
        pi.close()
    assert out[:6] == ['stat True 254 4', 'lstat True', 'fstatat True True', 'statx 0 True 254 4',
                       'access True True', 'chip gpiochip4 pinctrl-rp1 54']
    for i, path in enumerate(('/dev/gpiochip0', '/dev/gpiochip9', '/dev/gpiochip')):
        assert out[6 + 2 * i] == f'open {path} ENOENT'
        assert out[7 + 2 * i] == f'exists {path} False False False False'
    assert out[12].startswith('statx -1')


def test_gpiozero_finds_a_pi5s_chip_where_it_looks():
    """gpiozero 2.0's LGPIOFactory opens /dev/gpiochip4 on a Pi 5 if os.path.exists says so."""
    try:
        pi = EmulatedPi('d04170', chip=4)
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    try:
        program = Program(pi, '''
            from gpiozero import LED
            from gpiozero.pins.lgpio import LGPIOFactory
            factory = LGPIOFactory()
            led = LED(17, pin_factory=factory)
            led.on()
            say('on', factory._chip if hasattr(factory, '_chip') else '')
            input()
            led.close()
            factory.close()
        ''')
        program.expect('on')
        assert pi.level(17) == 1 and pi.line(17)['consumer'] == 'lg'
        program.finish()
    finally:
        pi.close()


def test_no_gpiochip_call_reaches_the_kernel(pi, tmp_path):
    """Under strace: not one open/stat/access of a /dev/gpiochip* is a system call."""
    import shutil
    strace = shutil.which('strace')
    if strace is None:
        pytest.skip('no strace')
    trace = tmp_path / 'trace'
    code = PRELUDE + textwrap.dedent('''
        for path in ('/dev/gpiochip0', '/dev/gpiochip4', '/dev/gpiochip9'):
            os.path.exists(path); os.access(path, os.R_OK)
            try:
                os.close(os.open(path, os.O_RDWR))
            except OSError:
                pass
        import lgpio
        handle = lgpio.gpiochip_open(0)
        lgpio.gpio_claim_output(handle, 17, 1)
        say(lgpio.gpio_read(handle, 17))
        try:
            lgpio.gpiochip_open(4)
        except lgpio.error as exc:
            say('chip4', exc)
    ''')
    result = subprocess.run([strace, '-f', '-qq', '-e', 'trace=%file', '-o', str(trace),
                             sys.executable, '-c', code], env=_env(pi), capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0 and 'ptrace' in result.stderr:
        pytest.skip(f'strace cannot trace here: {result.stderr.strip()}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == '1'
    assert 'chip4' in result.stdout
    calls = trace.read_text()
    assert 'execve' in calls
    assert [line for line in calls.splitlines() if '/dev/gpiochip' in line] == []


def test_a_close_waits_for_an_ioctl_using_the_line():
    """lgpio's PWM thread sets values while the main thread frees the line: the
    close must not free what the ioctl still uses (it waits for it)."""
    try:
        pi = EmulatedPi('d04170')
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    try:
        out = run(pi, _IOCTL_VS_CLOSE, env=_env(pi, {'GPIOCHIP_EMU_TEST_IOCTL_DELAY_US': '1000000'}))
    finally:
        pi.close()
    rc, took = out.stdout.split()
    assert rc == '0'                       # the ioctl, begun before the close, completed
    assert float(took) >= 0.5              # and the close waited for it


_IOCTL_VS_CLOSE = '''
    libc = ctypes.CDLL(None, use_errno=True)    # (ctypes lets go of the GIL: real threads)
    libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    libc.close.argtypes = [ctypes.c_int]
    fd = request(chip, [18], OUTPUT)
    values = ctypes.create_string_buffer(struct.pack('QQ', 1, 1), 16)
    results = []
    thread = threading.Thread(target=lambda: results.append(libc.ioctl(fd, SET_VALUES, values)))
    thread.start()
    time.sleep(0.2)                             # the ioctl is under way (and sleeps in it)
    start = time.monotonic()
    libc.close(fd)
    took = time.monotonic() - start
    thread.join()
    say(results[0], took)
'''


def test_no_use_after_free_between_ioctl_and_close_under_asan():
    """The same race, with the emulation built with AddressSanitizer."""
    try:
        library = gpiochip.build(sanitize='address')
    except EmulationUnavailable as exc:
        pytest.skip(f'no AddressSanitizer build: {exc}')
    runtime = subprocess.run(['cc', '-print-file-name=libasan.so'], capture_output=True,
                             text=True).stdout.strip()
    if not os.path.isabs(runtime) or not os.path.exists(runtime):
        pytest.skip('no AddressSanitizer runtime')
    pi = EmulatedPi('d04170')
    try:
        env = _env(pi, {'GPIOCHIP_EMU_TEST_IOCTL_DELAY_US': '1000000',
                        'ASAN_OPTIONS': 'detect_leaks=0:verify_asan_link_order=0'})
        env['LD_PRELOAD'] = f'{runtime}:{library}'
        result = run(pi, _IOCTL_VS_CLOSE, env=env, check=False)
    finally:
        pi.close()
    assert 'AddressSanitizer' not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == '0'


def test_looking_at_a_line_never_makes_a_request_of_it_fail(pi):
    """Line info (another process's) while a line is freed and requested again,
    as gpiozero's _set_pull and rpi-lgpio's setup do: never a spurious EBUSY."""
    looker = Program(pi, '''
        say('looking')
        count = 0
        while not select.select([sys.stdin], [], [], 0)[0]:
            line_info(chip, 5)
            count += 1
        say('looked', count)
    ''')
    looker.expect('looking')
    out = run(pi, '''
        busy = 0
        deadline = time.monotonic() + 1.5
        cycles = 0
        while time.monotonic() < deadline:
            try:
                os.close(request(chip, [5], INPUT | PULL_UP))
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise
                busy += 1
            cycles += 1
        say(busy, cycles)
    ''').stdout.split()
    looker.tell()
    looked = int(looker.expect('looked'))
    looker.finish()
    busy, cycles = map(int, out)
    assert looked > 1000 and cycles > 1000
    assert busy == 0, f'{busy} of {cycles} requests failed with EBUSY'


def test_two_chips_in_one_process_are_independent():
    try:
        a = EmulatedPi('d04170')
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    b = EmulatedPi('c03111')
    try:
        a.drive(4, 1)
        b.drive(4, 0)
        assert (a.level(4), b.level(4)) == (1, 0)
        a.drive(4, 0)
        b.drive(4, 1)
        assert (a.level(4), b.level(4)) == (0, 1)
        program = Program(a, '''
            fd = request(chip, [17], OUTPUT, values=1)
            say('on', *chip_info(chip))
            input()
        ''')
        assert program.expect('on') == 'gpiochip0 pinctrl-rp1 54'
        assert a.level(17) == 1 and a.line(17)['used']
        assert b.level(17) == 0 and not b.line(17)['used']
        out = run(b, 'say(*chip_info(chip)); request(chip, [17], OUTPUT)').stdout.split()
        assert out == ['gpiochip0', 'pinctrl-bcm2711', '58']
        assert b.line(17)['requests'] == 1 and a.line(17)['requests'] == 1
        program.finish()
        assert a.library_path != b.library_path       # each its own copy of the library
    finally:
        a.close()
        b.close()


def test_a_full_event_buffer_drops_the_oldest(pi):
    """The kernel keeps event_buffer_size events (16 per line by default, a
    power of two) per request and drops the oldest on overflow."""
    program = Program(pi, '''
        default = request(chip, [4], INPUT | RISING | FALLING)
        pair = request(chip, [5, 6], INPUT | RISING | FALLING)
        small = request(chip, [7], INPUT | RISING | FALLING, buffer_size=5)
        say('requested')
        input()
        for name, fd in (('default', default), ('pair', pair), ('small', small)):
            say(name, *[e[3] for e in events(fd)])
    ''')
    program.expect('requested')
    for line in (4, 5, 7):
        for i in range(40):
            pi.drive(line, (i + 1) % 2)
    program.tell()
    assert program.expect('default').split() == [str(n) for n in range(25, 41)]   # 16, newest
    assert program.expect('pair').split() == [str(n) for n in range(9, 41)]       # 32
    assert program.expect('small').split() == [str(n) for n in range(33, 41)]     # 5 → 8
    program.finish()
    assert pi.dropped(4) == 24 and pi.dropped(5) == 8 and pi.dropped(7) == 32
    assert pi.line(4)['events'] == 40


def test_the_request_fd_blocks_like_the_kernels(pi):
    program = Program(pi, '''
        fd = request(chip, [4], INPUT | RISING | FALLING)
        say('blocking', not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
        got = []
        reader = threading.Thread(target=lambda: got.append(os.read(fd, EVENT.size)))
        reader.start()
        time.sleep(0.3)
        say('waiting', not got)
        reader.join(10)
        say('read', EVENT.unpack(got[0])[1:])
    ''')
    assert program.expect('blocking') == 'True'
    assert program.expect('waiting') == 'True'            # a read of no event waits for one
    pi.drive(4, 1)
    assert program.expect('read') == '(1, 4, 1, 1)'
    program.finish()


def test_lgpio_alerts_still_arrive(pi):
    """lgpio ppolls the (blocking) request fds before reading them."""
    program = Program(pi, '''
        import lgpio
        handle = lgpio.gpiochip_open(0)
        seen = []
        lgpio.gpio_claim_alert(handle, 4, lgpio.BOTH_EDGES, lgpio.SET_PULL_UP)
        callback = lgpio.callback(handle, 4, lgpio.BOTH_EDGES, lambda c, g, l, t: seen.append(l))
        say('ready')
        input()
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        say('seen', *seen)
        callback.cancel()
        lgpio.gpio_free(handle, 4)
        lgpio.gpiochip_close(handle)
    ''')
    program.expect('ready')
    for level in (0, 1, 0):
        pi.drive(4, level)
    program.tell()
    assert program.expect('seen').split() == ['0', '1', '0']
    program.finish()


def test_open_reads_a_mode_only_when_it_takes_one(pi, tmp_path):
    wants = pi._lib.gpioemu_wants_mode
    assert not wants(os.O_RDONLY | os.O_DIRECTORY)       # O_DIRECTORY is part of O_TMPFILE
    assert wants(os.O_RDWR | os.O_TMPFILE) and wants(os.O_WRONLY | os.O_CREAT)
    assert not wants(os.O_RDWR)
    out = run(pi, f'''
        os.umask(0)
        os.close(os.open({str(tmp_path)!r}, os.O_RDONLY | os.O_DIRECTORY))
        fd = os.open({str(tmp_path)!r}, os.O_RDWR | os.O_TMPFILE, 0o640)
        say(oct(os.fstat(fd).st_mode & 0o777))
        fd = os.open({str(tmp_path / 'made')!r}, os.O_RDWR | os.O_CREAT, 0o604)
        say(oct(os.fstat(fd).st_mode & 0o777))
    ''').stdout.split()
    assert out == ['0o640', '0o604']


def test_request_fds_past_4096(pi):
    program = Program(pi, '''
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 6000:
            say('skip', hard)
            sys.exit(0)
        resource.setrlimit(resource.RLIMIT_NOFILE, (6000, hard))
        filler = []
        while not filler or filler[-1] < 4500:
            filler.append(os.open('/dev/null', os.O_RDONLY))
        high = os.open('/dev/gpiochip0', os.O_RDWR)
        fd = request(high, [17], OUTPUT, values=1)
        say('fds', high, fd, get_values(fd))
        input()
        os.close(fd)
        say('closed')
    ''')
    line = program.process.stdout.readline().split()
    if line and line[0] == 'skip':
        pytest.skip(f'RLIMIT_NOFILE hard limit {line[1]}')
    assert line and line[0] == 'fds', program.process.stderr.read()
    high, fd, value = map(int, line[1:])
    assert high > 4096 and fd > 4096 and value == 1
    assert pi.level(17) == 1 and pi.line(17)['used']
    program.tell()
    program.expect('closed')
    assert not pi.line(17)['used']
    program.finish()


def test_no_events_are_written_for_a_dead_holder(pi):
    program = Program(pi, '''
        fd = request(chip, [6], INPUT | RISING | FALLING)
        say('requested')
        input()
    ''')
    program.expect('requested')
    pi.drive(6, 1)
    wait_for(lambda: pi.line(6)['events'] == 1, message='the first event')
    program.kill()
    for level in (0, 1, 0, 1):        # nobody holds it: nothing to write, nowhere
        pi.drive(6, level)
    line = pi.line(6)
    assert line['events'] == 1 and not line['used'] and line['edges'] == 'none'
    # and the next holder starts with an empty buffer and fresh seqnos
    program = Program(pi, '''
        fd = request(chip, [6], INPUT | RISING | FALLING)
        say('requested')
        input()
        say('events', *[(e[1], e[3]) for e in events(fd)])
    ''')
    program.expect('requested')
    pi.drive(6, 0)
    program.tell()
    assert program.expect('events') == '(2, 1)'
    program.finish()


def test_build_is_cached_by_source_and_safe_to_run_at_once(tmp_path):
    if sys.platform != 'linux':
        pytest.skip('linux')
    before = {n for n in os.listdir(gpiochip.tempfile.gettempdir())
              if n.startswith('gpiochip-emu-build-')}
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / 'cache'))
    code = 'from emulation.gpiochip import build; print(build())'
    tests = os.path.dirname(os.path.abspath(__file__))
    builders = [subprocess.Popen([sys.executable, '-c', code], env=env, cwd=tests,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(3)]
    paths = []
    for builder in builders:
        out, err = builder.communicate(timeout=120)
        if builder.returncode != 0 and 'EmulationUnavailable' in err:
            pytest.skip(err.strip().splitlines()[-1])
        assert builder.returncode == 0, err
        paths.append(out.strip())
    assert len(set(paths)) == 1
    (path,) = set(paths)
    assert os.path.dirname(path) == str(tmp_path / 'cache' / 'remoteio-tests')
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]    # no temporaries left
    ctypes.CDLL(path).gpioemu_wants_mode          # a whole library
    inode = os.stat(path).st_ino
    again = subprocess.run([sys.executable, '-c', code], env=env, cwd=tests, capture_output=True,
                           text=True, timeout=120)
    assert again.stdout.strip() == path and os.stat(path).st_ino == inode     # reused
    after = {n for n in os.listdir(gpiochip.tempfile.gettempdir())
             if n.startswith('gpiochip-emu-build-')}
    assert after <= before


def test_a_closed_pi_leaves_nothing_and_refuses_calls():
    try:
        pi = EmulatedPi('a02082')
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    directory = pi.directory
    assert os.path.exists(os.path.join(directory, 'libgpiochip-emu.so'))
    pi.close()
    assert not os.path.exists(directory)
    with pytest.raises(OSError):
        pi.level(17)


def test_statx_and_stat_agree_on_other_paths(pi, tmp_path):
    """Paths that are not the chip's pass through untouched."""
    (tmp_path / 'file').write_bytes(b'x' * 10)
    out = run(pi, f'''
        st = os.stat({str(tmp_path / 'file')!r})
        say(stat.S_ISREG(st.st_mode), st.st_size, os.path.exists('/nonexistent/gpiochip0'))
    ''').stdout.split()
    assert out == ['True', '10', 'False']
