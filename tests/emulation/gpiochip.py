"""
The emulated GPIO chip (``gpiochip.c``) from the tests' side: build it, create
a chip for a chosen board, and drive, wire and inspect its lines.

A server started with :meth:`EmulatedPi.env` runs gpiozero's real
``LGPIOFactory`` (or ``RPiGPIOFactory`` over rpi-lgpio) on the real ``lgpio``
library, whose ``open``/``ioctl``/``close`` calls on ``/dev/gpiochipN`` reach
the emulation instead of a kernel (every other ``/dev/gpiochip*`` does not
exist for it); reads of ``/proc/device-tree`` give the board this object
chose. Each :class:`EmulatedPi` has its own copy of the library in its
directory: the processes it starts preload that copy, and the test process
loads it with ctypes (no LD_PRELOAD) to drive inputs and read levels from the
shared state, so several chips in one test process stay apart.
"""

import ctypes
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import threading
import time

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'gpiochip.c')

GPIO_V2_LINE_FLAG_USED = 1 << 0
GPIO_V2_LINE_FLAG_ACTIVE_LOW = 1 << 1
GPIO_V2_LINE_FLAG_INPUT = 1 << 2
GPIO_V2_LINE_FLAG_OUTPUT = 1 << 3
GPIO_V2_LINE_FLAG_EDGE_RISING = 1 << 4
GPIO_V2_LINE_FLAG_EDGE_FALLING = 1 << 5
GPIO_V2_LINE_FLAG_BIAS_PULL_UP = 1 << 8
GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN = 1 << 9
GPIO_V2_LINE_FLAG_BIAS_DISABLED = 1 << 10

#: Boards the tests emulate: revision → (model string, gpiochip label, lines).
BOARDS = {
    'a02082': ('Raspberry Pi 3 Model B Rev 1.2', 'pinctrl-bcm2835', 54),
    'c03111': ('Raspberry Pi 4 Model B Rev 1.1', 'pinctrl-bcm2711', 58),
    'd04170': ('Raspberry Pi 5 Model B Rev 1.0', 'pinctrl-rp1', 54),
}

_build_lock = threading.Lock()

#: How the library is compiled; *sanitize* (for tests of the emulation) adds to it.
CFLAGS = ('-shared', '-fPIC', '-O2', '-Wall')
LIBS = ('-ldl', '-lpthread')


class EmulationUnavailable(RuntimeError):
    """The emulation cannot be built here (no C compiler or kernel headers)."""


def _cache_directory():
    """A directory of this user's to keep built libraries in, across test runs."""
    candidates = []
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    if os.path.isabs(base):
        candidates.append(os.path.join(base, 'remoteio-tests'))
    candidates.append(os.path.join(tempfile.gettempdir(), f'remoteio-tests-{os.geteuid()}'))
    for directory in candidates:
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            st = os.lstat(directory)
        except OSError:
            continue
        # (in a shared /tmp: only a real directory of ours that no one else can write to)
        if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                and not st.st_mode & 0o022 and os.access(directory, os.W_OK)):
            return directory
    raise EmulationUnavailable('no cache directory to build the emulated gpiochip in: '
                               + ', '.join(candidates))


def _prune(directory):
    """Remove libraries not used for a week (an older source's) and builds cut short."""
    now = time.time()
    for entry in os.scandir(directory):
        if entry.name.startswith('libgpiochip-emu-'):
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if age > (3600 if entry.name.endswith('.tmp') else 7 * 86400):
                    os.unlink(entry.path)
            except OSError:
                pass


def build(sanitize=None):
    """
    Compile ``gpiochip.c``; return the shared library's path.

    The library is kept in a cache directory under a name made of a hash of
    the source, the compiler and its flags, and reused while they stay the
    same; two processes building at once each compile to a name of their
    own and rename it into place. *sanitize*: e.g. ``'address'``, for a
    ``-fsanitize=`` build (preload the sanitizer's runtime before it).
    """
    compiler = shutil.which('cc') or shutil.which('gcc')
    if compiler is None:
        raise EmulationUnavailable('no C compiler (cc) to build the emulated gpiochip')
    flags = list(CFLAGS)
    if sanitize:
        flags += [f'-fsanitize={sanitize}', '-fno-omit-frame-pointer', '-g']
    with open(SOURCE, 'rb') as f:
        source = f.read()
    key = hashlib.sha256(source + repr((compiler, flags, LIBS)).encode()).hexdigest()[:20]
    name = f'libgpiochip-emu-{key}.so'
    with _build_lock:
        directory = _cache_directory()
        path = os.path.join(directory, name)
        try:
            os.utime(path)                      # in use: kept by _prune
            return path
        except FileNotFoundError:
            pass
        _prune(directory)
        fd, temporary = tempfile.mkstemp(prefix=f'{name}.', suffix='.tmp', dir=directory)
        os.close(fd)
        try:
            result = subprocess.run([compiler, *flags, '-o', temporary, SOURCE, *LIBS],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise EmulationUnavailable(f'cannot build the emulated gpiochip:\n{result.stderr}')
            os.chmod(temporary, 0o755)
            os.replace(temporary, path)         # atomic: a reader sees all of it or nothing
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        return path


class EmulatedPi:
    """
    A Raspberry Pi's GPIO chip and device tree, emulated in a directory.

    *revision* is the board's revision code (hex), one of :data:`BOARDS`;
    *chip* the number of the ``/dev/gpiochipN`` it appears as.
    """

    def __init__(self, revision='d04170', directory=None, chip=0):
        model, label, lines = BOARDS[revision]
        self.revision = revision
        self.model = model
        self.lines = lines
        library = build()
        self.directory = directory or tempfile.mkdtemp(prefix='gpiochip-emu-')
        os.chmod(self.directory, 0o777)     # the server may run as an unprivileged user
        # a copy of the library of this chip's own: its globals (the chip) are this Pi's
        self.library_path = os.path.join(self.directory, 'libgpiochip-emu.so')
        shutil.copyfile(library, self.library_path)
        os.chmod(self.library_path, 0o755)  # (a server run as another user preloads it)
        tree = os.path.join(self.directory, 'device-tree')
        os.makedirs(os.path.join(tree, 'system'), exist_ok=True)
        with open(os.path.join(tree, 'model'), 'wb') as f:
            f.write(model.encode() + b'\0')
        with open(os.path.join(tree, 'system', 'linux,revision'), 'wb') as f:
            f.write(struct.pack('>I', int(revision, 16)))
        for root, dirs, files in os.walk(tree):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        self._lib = ctypes.CDLL(self.library_path)
        self._lib.gpioemu_create.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                                             ctypes.c_char_p, ctypes.c_uint64]
        self._lib.gpioemu_line.argtypes = [
            ctypes.c_int, ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int),
            ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
            ctypes.c_char_p, ctypes.c_size_t]
        self._lib.gpioemu_dropped.restype = ctypes.c_longlong
        self.chip = chip
        # GPIO2 and GPIO3 (I2C) have 1.8 kΩ pull-ups on every 40-pin Pi
        self._check(self._lib.gpioemu_create(self.directory.encode(), lines, chip, label.encode(),
                                             (1 << 2) | (1 << 3)))

    @staticmethod
    def _check(rc):
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc))
        return rc

    def env(self, base=None):
        """Environment for a process that should see this Pi: the server."""
        env = dict(os.environ if base is None else base)
        preload = env.get('LD_PRELOAD')
        env['LD_PRELOAD'] = self.library_path + (f':{preload}' if preload else '')
        env['GPIOCHIP_EMU_DIR'] = self.directory
        return env

    # Driving the pins from outside ------------------------------------------------

    def drive(self, gpio, level):
        """Drive input *gpio* to *level* (0/1, or None to let go), as a button would."""
        self._check(self._lib.gpioemu_drive(gpio, -1 if level is None else int(bool(level))))

    def wire(self, gpio, source):
        """A jumper wire: input *gpio* follows output *source* (None: unplug)."""
        self._check(self._lib.gpioemu_wire(gpio, -1 if source is None else source))

    # Looking at them ------------------------------------------------------------------

    def level(self, gpio):
        """The physical level of *gpio* now."""
        return self._check(self._lib.gpioemu_level(gpio))

    def line(self, gpio):
        """What the kernel says of *gpio*: a dict of direction, bias, edges, user and counters."""
        flags, value = ctypes.c_uint64(), ctypes.c_int()
        events, requests = ctypes.c_uint64(), ctypes.c_uint64()
        consumer = ctypes.create_string_buffer(32)
        self._check(self._lib.gpioemu_line(gpio, ctypes.byref(flags), ctypes.byref(value),
                                           ctypes.byref(events), ctypes.byref(requests),
                                           consumer, 32))
        f = flags.value
        return {
            'used': bool(f & GPIO_V2_LINE_FLAG_USED),
            'consumer': consumer.value.decode(),
            'direction': 'output' if f & GPIO_V2_LINE_FLAG_OUTPUT else 'input',
            'bias': ('up' if f & GPIO_V2_LINE_FLAG_BIAS_PULL_UP else
                     'down' if f & GPIO_V2_LINE_FLAG_BIAS_PULL_DOWN else
                     'disabled' if f & GPIO_V2_LINE_FLAG_BIAS_DISABLED else 'as-is'),
            'edges': ('both' if f & GPIO_V2_LINE_FLAG_EDGE_RISING and f & GPIO_V2_LINE_FLAG_EDGE_FALLING
                      else 'rising' if f & GPIO_V2_LINE_FLAG_EDGE_RISING
                      else 'falling' if f & GPIO_V2_LINE_FLAG_EDGE_FALLING else 'none'),
            'value': value.value,
            'events': events.value,
            'requests': requests.value,
        }

    def dropped(self, gpio):
        """Events dropped (the oldest, from a full buffer) by requests whose first line is *gpio*."""
        return self._check(self._lib.gpioemu_dropped(gpio))

    def close(self):
        self._lib.gpioemu_detach()          # later calls fail (ENOENT) instead of touching it
        shutil.rmtree(self.directory, ignore_errors=True)
