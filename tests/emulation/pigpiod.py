"""
A pigpiod double: a small server speaking the pigpio daemon's socket protocol,
so that the real ``pigpio`` client library (PyPI ``pigpio`` 1.78) and
gpiozero's real ``PiGPIOFactory`` run unmodified against simulated pins.

What it emulates (pigpio 79 semantics, read from ``pigpio.c``):

* The command socket: 16-byte requests ``<IIII`` (cmd, p1, p2, p3) where p3 is
  the length of extension bytes that follow; 16-byte replies echoing cmd, p1,
  p2 with the (signed) result in the fourth word. An extension of 64 KiB or
  more makes the daemon drop the connection, and so does the double.
* The commands gpiozero and the pigpio client use for GPIO, with the daemon's
  checks, in the daemon's order, and its return codes (see ``COMMANDS``):
  MODES MODEG PUD READ WRITE PWM PRS PFS WDOG BR1 BR2 BC1 BC2 BS1 BS2 TICK
  HWVER NB NP NC PRG PFG PRRG PIGPV GDC FG NOIB. Writes are limited to the
  daemon's default update mask for the board (Pi 3B: GPIO 2-27; others answer
  PI_NOT_PERMITTED). Any other command answers PI_UNKNOWN_COMMAND (-88).
* Software PWM bookkeeping: per-GPIO dutycycle, range (default 255, 25..40000,
  a dutycycle rescaled when the range changes), frequency snapped to the
  daemon's table for the default 5 us sample rate (8000 4000 2000 1600 1000
  800 500 400 320 250 200 160 100 80 50 40 20 10 Hz, default 800) and the
  matching real range (25 .. 20000).
* In-band notifications: a connection sends NOIB and gets one of 32 handles
  (PI_NO_HANDLE when all are in use; a second NOIB on the same socket frees
  its earlier handle, as the daemon does); NB/NP/NC on any socket begin,
  pause or close a handle; the socket then carries 12-byte reports ``<HHII``
  (seqno, flags, tick, level of GPIO 0-31). A report with flags 0 is sent for
  every change of a monitored GPIO's (filtered) level, watchdog reports carry
  NTFY_FLAGS_WDOG | gpio, and a handle that sent nothing for 60 s gets an
  NTFY_FLAGS_ALIVE keep-alive. Closing a socket frees its handle.
* The glitch filter (FG, 0..300000 us on GPIO 0-31), as ``alertGlitchFilter``
  does it: a level change is reported only once the level has been stable for
  the filter time, timestamped *steady* us after the change was first seen
  (pigpio.h: "Each (stable) edge will be timestamped steady microseconds
  after it was first detected"); shorter pulses are never reported. READ/BR1
  are not filtered. The decision depends only on the ticks of the changes, not
  on when a thread happens to run, so a test pulse microseconds long is
  suppressed by a 0.3 s filter deterministically.
* Ticks: 32-bit microseconds since the double started (plus ``tick_origin``,
  handy to test wrap-around), wrapping like the daemon's.

The simulated pin bank: 54 GPIOs, each with a mode (0 input, 1 output, 2..7
ALT functions; all start as inputs), a pull (0 off, 1 down, 2 up; they start
with the BCM2835 reset pulls: up on 0-8, down on 9-27, off above), an output
latch, PWM state and an external drive (None, or 0/1 set by a test). The
level of a GPIO:

* output: with PWM running at an effective dutycycle above 0 (dutycycle *
  real range // range, as the daemon computes it), 1 -- the double does not
  toggle the pin, so a monitored PWM pin does not flood its handles with
  edges as a real one would; otherwise the output latch;
* input (or ALT): the external drive if a test drives it; else GPIO 2 and 3
  read 1 (the Pi's 1k8 pull-ups beat any internal pull); else pull up 1,
  pull down 0, no pull: the level it had last (a floating pin keeps its
  charge).

What it does not emulate: hardware PWM and clocks (HP, HC), servo pulses
(SERVO, GPW), waves, scripts, bit-banged and hardware I2C/SPI/serial, files,
events (EVM, EVT), the noise filter (FN), pipe notifications (NO, which needs
/dev/pigpioN), pads, and the daemon's 5 us sampling (every change is seen,
however short). Deviations in what it does implement:

* NC frees the handle at once; the daemon marks it closing and frees it on
  its next alert cycle (about a millisecond later).
* The glitch filter and the watchdog run whether or not a handle monitors the
  GPIO (the daemon only runs them for monitored GPIOs); filtered reports and
  watchdog reports carry the exact deadline tick, not that of the next 5 us
  sample or 1 ms alert cycle.
* Connections are limited to ``max_connections`` (further ones are accepted
  and closed at once; the daemon has no limit), only loopback addresses are
  served, and a client that stops reading its reports is disconnected once
  ``OUTBOX_LIMIT`` messages are queued for it (the daemon's writes would
  block or fail instead).

Use::

    with PigpiodDouble() as pigpiod:          # or .start() ... .stop()
        factory = PiGPIOFactory(host='127.0.0.1', port=pigpiod.port)
        ...
        pigpiod.drive(4, 0)                    # a button pulls GPIO 4 low
        factory.close()                        # stop clients first: the
                                               # pigpio client's notification
                                               # thread spins if its daemon
                                               # goes away under it

Everything public is thread-safe; :meth:`wait_for` waits (on a condition, not
by polling) for a predicate over the double's state.

A trap that is the pigpio client's, not the double's: ``pigpio.pi`` reads
bank 1 (BR1) once when it connects and turns each report into edges by
comparing it with the previous one. A GPIO that changes while no callback
monitors it (say its pull is changed after connecting) sends no report, so
the client's idea of it stays stale and its next real edge may be missed.
Monitor first, or use a GPIO whose level is already right (GPIO 9-27 start
pulled down, 0-8 pulled up).
"""

import collections
import ipaddress
import queue
import socket
import struct
import threading
import time

__all__ = ['PigpiodDouble', 'PWMState']

# Command numbers (pigpio.py _PI_CMD_*, command.h).
CMD_MODES, CMD_MODEG, CMD_PUD, CMD_READ, CMD_WRITE = 0, 1, 2, 3, 4
CMD_PWM, CMD_PRS, CMD_PFS, CMD_WDOG = 5, 6, 7, 9
CMD_BR1, CMD_BR2, CMD_BC1, CMD_BC2, CMD_BS1, CMD_BS2 = 10, 11, 12, 13, 14, 15
CMD_TICK, CMD_HWVER, CMD_NB, CMD_NP, CMD_NC = 16, 17, 19, 20, 21
CMD_PRG, CMD_PFG, CMD_PRRG, CMD_PIGPV = 22, 23, 24, 26
CMD_GDC, CMD_FG, CMD_NOIB = 83, 97, 99

# Error codes (pigpio.py's table, pigpio.h).
PI_BAD_USER_GPIO = -2
PI_BAD_GPIO = -3
PI_BAD_MODE = -4
PI_BAD_LEVEL = -5
PI_BAD_PUD = -6
PI_BAD_DUTYCYCLE = -8
PI_BAD_WDOG_TIMEOUT = -15
PI_BAD_DUTYRANGE = -21
PI_NO_HANDLE = -24
PI_BAD_HANDLE = -25
PI_NOT_PERMITTED = -41
PI_SOME_PERMITTED = -42
PI_UNKNOWN_COMMAND = -88
PI_NOT_PWM_GPIO = -92
PI_BAD_FILTER = -125

NTFY_FLAGS_EVENT = 1 << 7
NTFY_FLAGS_ALIVE = 1 << 6
NTFY_FLAGS_WDOG = 1 << 5

INPUT, OUTPUT = 0, 1
PUD_OFF, PUD_DOWN, PUD_UP = 0, 1, 2

PIGPIO_VERSION = 79
MAX_GPIO = 53                       # PI_MAX_GPIO
MAX_USER_GPIO = 31                  # PI_MAX_USER_GPIO
NOTIFY_SLOTS = 32                   # PI_NOTIFY_SLOTS
MAX_STEADY = 300000                 # PI_MAX_STEADY (glitch filter, us)
MAX_WDOG_TIMEOUT = 60000            # PI_MAX_WDOG_TIMEOUT (ms)
MIN_RANGE, MAX_RANGE, DEFAULT_RANGE = 25, 40000, 255
CMD_MAX_EXTENSION = 1 << 16         # command.h: larger extensions drop the socket
KEEPALIVE_US = 60000000             # alertEmit: NTFY_FLAGS_ALIVE after 60 s of silence

# PWM frequencies for the default 5 us sample rate (pigpio.c: pwmFreq[i] =
# 1e6 / (PULSE_PER_CYCLE * clockMicros * pwmCycles[i]) + 0.5) and real ranges.
_PWM_CYCLES = (1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 40, 50, 80, 100, 160, 200, 400, 800)
PWM_FREQUENCIES = tuple(int(1000000.0 / (25 * 5 * c) + 0.5) for c in _PWM_CYCLES)
PWM_REAL_RANGES = (25, 50, 100, 125, 200, 250, 400, 500, 625, 800, 1000, 1250,
                   2000, 2500, 4000, 5000, 10000, 20000)
DEFAULT_PWM_INDEX = 5               # 800 Hz, real range 250

REVISION_PI_3B = 0xA02082
UPDATE_MASK_PI_3B = 0x0FFFFFFC      # PI_DEFAULT_UPDATE_MASK_PI3B: GPIO 2-27
PHYSICAL_PULL_UPS = (2, 3)          # the I2C pins' 1k8 resistors on every Pi
OUTBOX_LIMIT = 10000                # messages queued for one client before it is dropped

_REQUEST = struct.Struct('<IIII')
_REPORT = struct.Struct('<HHII')

PWMState = collections.namedtuple('PWMState', 'dutycycle range frequency')
PWMState.__doc__ = """\
A GPIO's PWM settings: *dutycycle* (None unless the GPIO is running PWM, as
GDC would say PI_NOT_PWM_GPIO), *range* and *frequency* (what PRG and PFG
answer)."""


def _default_pull(gpio):
    """The BCM2835's pull at reset (GPIO 28-53 vary by function: off here)."""
    if gpio <= 8:
        return PUD_UP
    if gpio <= 27:
        return PUD_DOWN
    return PUD_OFF


class _Gpio:
    """One simulated GPIO (gpioInfo[] plus the function-select, pull, latch
    and level registers of the real chip, plus the test's drive)."""

    def __init__(self, number):
        self.mode = INPUT
        self.pull = _default_pull(number)
        self.latch = 0             # GPSET/GPCLR output latch
        self.drive = None          # external drive from the test: None, 0 or 1
        self.level = 1 if number in PHYSICAL_PULL_UPS or self.pull == PUD_UP else 0
        self.pwm = False           # gpioInfo.is == GPIO_PWM
        self.width = 0             # PWM dutycycle
        self.range = DEFAULT_RANGE
        self.freq_index = DEFAULT_PWM_INDEX
        self.steady = 0            # glitch filter (us), 0 = off
        self.gf_reported = 0       # gfRBitV: the level the filter lets through
        self.gf_last = 0           # gfLBitV: the last level seen
        self.gf_changed = 0        # gfTick: when gf_last was first seen (us)
        self.wdog_us = 0           # watchdog timeout (us), 0 = off
        self.wdog_tick = 0         # last change or watchdog report (us)


class _Handle:
    """One notification slot (gpioNotify[]) bound to the socket that opened it."""

    def __init__(self, conn, now_us):
        self.conn = conn
        self.running = False       # PI_NOTIFY_RUNNING (else OPENED or PAUSED)
        self.bits = 0
        self.seqno = 0
        self.last_report_us = now_us


class _Connection:
    """A client socket: a reader thread runs its commands, a writer thread
    sends its replies and reports in the order they were queued."""

    def __init__(self, sock, number):
        self.sock = sock
        self.number = number
        self.outbox = queue.Queue(maxsize=OUTBOX_LIMIT)
        self.reader = None
        self.writer = threading.Thread(target=self._write_loop, daemon=True,
                                       name=f'pigpiod-double-writer-{number}')

    def send(self, data):
        try:
            self.outbox.put_nowait(data)
        except queue.Full:
            self.abort()

    def abort(self):
        """Wake the reader (and a blocked writer): the socket is shut down."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write_loop(self):
        failed = False
        while True:
            data = self.outbox.get()
            if data is None:
                return
            if failed:
                continue
            try:
                self.sock.sendall(data)
            except OSError:
                failed = True
                self.abort()


class PigpiodDouble:
    """A pigpiod speaking the real socket protocol over simulated pins.

    *host* must be a loopback address; *port* 0 picks a free port (read it
    from :attr:`port` after :meth:`start`). *revision* is what HWVER answers
    (default a Pi 3B), *update_mask* the GPIOs clients may change (default
    the daemon's for a Pi 3B: 2-27). At most *max_connections* sockets are
    served at a time (each pigpio.pi uses two). Ticks start at *tick_origin*
    (e.g. ``0xFFFFFFFF - 1000000`` to wrap a second after the start); a
    handle gets a keep-alive after *keepalive_us* of silence (None: never).
    """

    def __init__(self, host='127.0.0.1', port=0, *, revision=REVISION_PI_3B,
                 update_mask=UPDATE_MASK_PI_3B, max_connections=128, tick_origin=0,
                 keepalive_us=KEEPALIVE_US):
        if host == 'localhost':
            host = '127.0.0.1'
        if keepalive_us is not None and keepalive_us <= 0:
            raise ValueError('keepalive_us must be positive (or None: no keep-alives)')
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f'the pigpiod double only serves loopback, not {host!r}')
        self._host = host
        self._requested_port = port
        self._revision = revision
        self._update_mask = update_mask
        self._max_connections = max_connections
        self._keepalive_us = keepalive_us
        self._tick_origin = tick_origin
        self._t0_ns = time.monotonic_ns()
        self._cond = threading.Condition(threading.RLock())
        self._gpios = [_Gpio(n) for n in range(MAX_GPIO + 1)]
        self._handles = [None] * NOTIFY_SLOTS
        self._conns = {}
        self._next_conn = 0
        self._reported = self._bank1()   # reportedLevel: the last filtered sample
        self._listener = None
        self._threads = []
        self._stopping = False
        self.port = None

    # -- life cycle -------------------------------------------------------

    def start(self):
        """Listen, start serving, and return once clients can connect."""
        family = socket.AF_INET6 if ':' in self._host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self._host, self._requested_port))
        listener.listen(16)
        self._listener = listener
        self.port = listener.getsockname()[1]
        for target, name in ((self._accept_loop, 'accept'), (self._tick_loop, 'ticker')):
            thread = threading.Thread(target=target, daemon=True, name=f'pigpiod-double-{name}')
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout=5.0):
        """Close the listener and every connection, and join all threads."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            conns = list(self._conns.values())
            self._cond.notify_all()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        for conn in conns:
            conn.abort()
        for conn in conns:
            if conn.reader is not None:
                conn.reader.join(timeout)
        for thread in self._threads:
            thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- the test's side --------------------------------------------------

    def drive(self, gpio, level):
        """Drive *gpio* from outside (0 or 1), or stop driving it (None).
        Returns the tick at which the change happened."""
        self._check_gpio(gpio)
        if level is not None:
            level = int(level)
            if level not in (0, 1):
                raise ValueError(f'level must be 0, 1 or None, not {level!r}')
        with self._cond:
            now = self._now_us()
            self._advance(now)
            self._gpios[gpio].drive = level
            self._update(now)
            return now & 0xFFFFFFFF

    def level(self, gpio):
        """The level of *gpio* now (what READ answers)."""
        self._check_gpio(gpio)
        with self._cond:
            return self._gpios[gpio].level

    def mode(self, gpio):
        """The mode of *gpio*: 0 input, 1 output, 2..7 ALT5 ALT4 ALT0..ALT3."""
        self._check_gpio(gpio)
        with self._cond:
            return self._gpios[gpio].mode

    def pull(self, gpio):
        """The pull of *gpio*: 0 off, 1 down, 2 up."""
        self._check_gpio(gpio)
        with self._cond:
            return self._gpios[gpio].pull

    def pwm(self, gpio):
        """The PWM settings of *gpio* (0-31) as a :class:`PWMState`."""
        self._check_gpio(gpio, MAX_USER_GPIO)
        with self._cond:
            g = self._gpios[gpio]
            return PWMState(g.width if g.pwm else None, g.range,
                            PWM_FREQUENCIES[g.freq_index])

    def glitch_filter(self, gpio):
        """The glitch filter of *gpio* (0-31) in microseconds, 0 when off."""
        self._check_gpio(gpio, MAX_USER_GPIO)
        with self._cond:
            return self._gpios[gpio].steady

    def tick(self):
        """The current tick (what TICK answers)."""
        with self._cond:
            return self._now_us() & 0xFFFFFFFF

    def handles_in_use(self):
        """How many of the 32 notification handles are open."""
        with self._cond:
            return sum(h is not None for h in self._handles)

    def connections(self):
        """How many client sockets are open."""
        with self._cond:
            return len(self._conns)

    def wait_for(self, predicate, timeout=5.0):
        """Wait until ``predicate()`` (called with the double's lock held, so
        it may call the accessors above) is true; return its last value.
        Wakes on every change of pins, handles or connections."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    # -- sockets ----------------------------------------------------------

    def _accept_loop(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                if self._stopping or len(self._conns) >= self._max_connections:
                    sock.close()
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._next_conn += 1
                conn = _Connection(sock, self._next_conn)
                conn.reader = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                               name=f'pigpiod-double-reader-{conn.number}')
                self._conns[conn.number] = conn
                conn.writer.start()
                conn.reader.start()
                self._cond.notify_all()

    def _serve(self, conn):
        """Run one socket's commands until it closes (pthSocketThreadHandler)."""
        try:
            while True:
                request = self._recv_exactly(conn.sock, 16)
                if request is None:
                    break
                cmd, p1, p2, p3 = _REQUEST.unpack(request)
                ext = b''
                if p3:
                    if p3 >= CMD_MAX_EXTENSION:
                        break                      # the daemon drops the socket too
                    ext = self._recv_exactly(conn.sock, p3)
                    if ext is None:
                        break
                with self._cond:
                    now = self._now_us()
                    self._advance(now)
                    handler = self.COMMANDS.get(cmd)
                    if handler is None:
                        result = PI_UNKNOWN_COMMAND
                    else:
                        result = handler(self, conn, p1, p2, ext)
                    self._update(now)
                    conn.send(_REQUEST.pack(cmd, p1, p2, result & 0xFFFFFFFF))
        finally:
            with self._cond:
                self._close_handles_of(conn)
                self._conns.pop(conn.number, None)
                self._cond.notify_all()
            conn.abort()
            conn.outbox.put(None)
            conn.writer.join()
            conn.sock.close()

    @staticmethod
    def _recv_exactly(sock, count):
        data = bytearray()
        while len(data) < count:
            try:
                chunk = sock.recv(count - len(data))
            except OSError:
                return None
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    # -- pins, levels and reports (all called with the lock held) ------------

    def _now_us(self):
        return (time.monotonic_ns() - self._t0_ns) // 1000 + self._tick_origin

    @staticmethod
    def _check_gpio(gpio, highest=MAX_GPIO):
        if not isinstance(gpio, int) or not 0 <= gpio <= highest:
            raise ValueError(f'GPIO must be 0-{highest}, not {gpio!r}')

    def _permitted(self, gpio):
        """myPermit: GPIOs outside 0-53 pass here and fail their own check."""
        return gpio > MAX_GPIO or bool(self._update_mask >> gpio & 1)

    def _compute_level(self, number, g):
        if g.mode == OUTPUT:
            if g.pwm and g.width * PWM_REAL_RANGES[g.freq_index] // g.range > 0:
                return 1
            return g.latch
        if g.drive is not None:
            return g.drive
        if number in PHYSICAL_PULL_UPS:
            return 1
        if g.pull == PUD_UP:
            return 1
        if g.pull == PUD_DOWN:
            return 0
        return g.level                             # floating: keeps its last level

    def _bank1(self):
        return sum(g.level << n for n, g in enumerate(self._gpios[:MAX_USER_GPIO + 1]))

    def _filtered(self, raw):
        """*raw* with each glitch-filtered GPIO's bit replaced by the level
        its filter lets through."""
        for n, g in enumerate(self._gpios[:MAX_USER_GPIO + 1]):
            if g.steady:
                raw = (raw & ~(1 << n)) | (g.gf_reported << n)
        return raw

    def _update(self, now):
        """Something may have changed at *now* (us; the caller has emitted
        what fell due before it): recompute the levels and report a change
        as a sample."""
        for n, g in enumerate(self._gpios):
            g.level = self._compute_level(n, g)
        raw = self._bank1()
        for n, g in enumerate(self._gpios[:MAX_USER_GPIO + 1]):
            if g.steady and g.level != g.gf_last:
                g.gf_last = g.level               # restart the steady timer
                g.gf_changed = now
        self._sample(self._filtered(raw), now)
        self._cond.notify_all()

    def _sample(self, level, tick_us):
        """One (filtered) sample of bank 1, as alertEmit handles it."""
        changed = level ^ self._reported
        if not changed:
            return
        for n, g in enumerate(self._gpios[:MAX_USER_GPIO + 1]):
            if changed >> n & 1:
                g.wdog_tick = tick_us
        for handle in self._handles:
            if handle is not None and handle.running and handle.bits & changed:
                self._report(handle, 0, tick_us, level)
        self._reported = level

    def _report(self, handle, flags, tick_us, level):
        handle.conn.send(_REPORT.pack(handle.seqno & 0xFFFF, flags, tick_us & 0xFFFFFFFF,
                                      level & 0xFFFFFFFF))
        handle.seqno += 1
        handle.last_report_us = tick_us

    def _deadlines(self):
        """(deadline us, kind, index) of every timed event that is pending."""
        due = []
        for n, g in enumerate(self._gpios[:MAX_USER_GPIO + 1]):
            if g.steady and g.gf_last != g.gf_reported:
                due.append((g.gf_changed + g.steady, 'filter', n))
            if g.wdog_us:
                due.append((g.wdog_tick + g.wdog_us, 'watchdog', n))
        for slot, handle in enumerate(self._handles):
            if handle is not None and self._keepalive_us:
                due.append((handle.last_report_us + self._keepalive_us, 'alive', slot))
        return due

    def _advance(self, now):
        """Emit, in tick order, the filtered edges, watchdog timeouts and
        keep-alives that fell due up to *now*, each at its own deadline."""
        while True:
            due = [d for d in self._deadlines() if d[0] <= now]
            if not due:
                return
            tick = min(d[0] for d in due)
            at_tick = [d for d in due if d[0] == tick]
            filters = [n for _, kind, n in at_tick if kind == 'filter']
            for n in filters:
                g = self._gpios[n]
                g.gf_reported = g.gf_last         # stable for steady us
            if filters:
                self._sample(self._filtered(self._bank1()), tick)
            for _, kind, index in at_tick:
                if kind == 'watchdog':
                    self._gpios[index].wdog_tick = tick
                    for handle in self._handles:
                        if handle is not None and handle.running and handle.bits >> index & 1:
                            self._report(handle, NTFY_FLAGS_WDOG | index, tick, self._reported)
                elif kind == 'alive':
                    handle = self._handles[index]
                    if handle is not None and handle.last_report_us + self._keepalive_us <= tick:
                        self._report(handle, NTFY_FLAGS_ALIVE, tick, self._reported)

    def _tick_loop(self):
        """Wake at the next deadline (or any change) and emit what is due."""
        with self._cond:
            while not self._stopping:
                now = self._now_us()
                self._advance(now)
                deadlines = [d[0] for d in self._deadlines()]
                timeout = None if not deadlines else max(0, min(deadlines) - now) / 1e6
                self._cond.wait(timeout)

    def _close_handles_of(self, conn, keep=None):
        """closeOrphanedNotifications: free the handles opened on *conn*."""
        for slot, handle in enumerate(self._handles):
            if handle is not None and handle.conn is conn and slot != keep:
                self._handles[slot] = None

    def _switch_function_off(self, g):
        """switchFunctionOff: stop PWM (a running PWM leaves the pin low)."""
        if g.pwm:
            self._set_pwm(g, 0)
        g.pwm = False

    def _set_pwm(self, g, width):
        """myGpioSetPwm: stopping a running PWM clears the pin."""
        real = PWM_REAL_RANGES[g.freq_index]
        if g.width * real // g.range and not width * real // g.range:
            g.latch = 0
        g.width = width

    # -- command handlers: (self, conn, p1, p2, extension) -> result ------------

    def _cmd_modes(self, conn, gpio, mode, ext):
        if not self._permitted(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        if mode > 7:
            return PI_BAD_MODE
        g = self._gpios[gpio]
        if mode != g.mode:
            self._switch_function_off(g)
        g.mode = mode
        return 0

    def _cmd_modeg(self, conn, gpio, _, ext):
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        return self._gpios[gpio].mode

    def _cmd_pud(self, conn, gpio, pud, ext):
        if not self._permitted(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        if pud > PUD_UP:
            return PI_BAD_PUD
        self._gpios[gpio].pull = pud
        return 0

    def _cmd_read(self, conn, gpio, _, ext):
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        return self._gpios[gpio].level

    def _cmd_write(self, conn, gpio, level, ext):
        if not self._permitted(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_GPIO:
            return PI_BAD_GPIO
        if level > 1:
            return PI_BAD_LEVEL
        g = self._gpios[gpio]
        self._switch_function_off(g)               # gpioInfo.is becomes GPIO_WRITE
        g.mode = OUTPUT
        g.latch = level
        return 0

    def _cmd_pwm(self, conn, gpio, dutycycle, ext):
        if not self._permitted(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        g = self._gpios[gpio]
        if dutycycle > g.range:
            return PI_BAD_DUTYCYCLE
        if not g.pwm:
            self._switch_function_off(g)
            g.pwm = True
            if not dutycycle:
                g.latch = 0
        g.mode = OUTPUT
        self._set_pwm(g, dutycycle)
        return 0

    def _cmd_prs(self, conn, gpio, range_, ext):
        if not self._permitted(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        if not MIN_RANGE <= range_ <= MAX_RANGE:
            return PI_BAD_DUTYRANGE
        g = self._gpios[gpio]
        if g.width and g.pwm:                      # stopped and restarted, rescaled
            width = range_ * g.width // g.range
            self._set_pwm(g, 0)
            g.range = range_
            self._set_pwm(g, width)
        g.range = range_
        return PWM_REAL_RANGES[g.freq_index]

    def _cmd_pfs(self, conn, gpio, frequency, ext):
        if not self._permitted(gpio):
            return PI_NOT_PERMITTED
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        if frequency > PWM_FREQUENCIES[0]:
            index = 0
        elif frequency < PWM_FREQUENCIES[-1]:
            index = len(PWM_FREQUENCIES) - 1
        else:                                      # the first closest, as the daemon's loop
            index = min(range(len(PWM_FREQUENCIES)),
                        key=lambda i: (abs(frequency - PWM_FREQUENCIES[i]), i))
        g = self._gpios[gpio]
        if g.width and g.pwm:                      # stopped and restarted
            width = g.width
            self._set_pwm(g, 0)
            g.freq_index = index
            self._set_pwm(g, width)
        g.freq_index = index
        return PWM_FREQUENCIES[index]

    def _cmd_wdog(self, conn, gpio, timeout_ms, ext):
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        if timeout_ms > MAX_WDOG_TIMEOUT:
            return PI_BAD_WDOG_TIMEOUT
        g = self._gpios[gpio]
        g.wdog_us = timeout_ms * 1000
        g.wdog_tick = self._now_us()
        return 0

    def _cmd_br1(self, conn, *_):
        return self._bank1()

    def _cmd_br2(self, conn, *_):
        return sum(g.level << n for n, g in enumerate(self._gpios[MAX_USER_GPIO + 1:]))

    def _write_bank(self, bits, level, shift):
        mask = (self._update_mask >> shift) & 0xFFFFFFFF
        for n in range(32):
            if (bits & mask) >> n & 1 and n + shift <= MAX_GPIO:
                self._gpios[n + shift].latch = level
        return 0 if (mask | bits) == mask else PI_SOME_PERMITTED

    def _cmd_bc1(self, conn, bits, _, ext):
        return self._write_bank(bits, 0, 0)

    def _cmd_bc2(self, conn, bits, _, ext):
        return self._write_bank(bits, 0, 32)

    def _cmd_bs1(self, conn, bits, _, ext):
        return self._write_bank(bits, 1, 0)

    def _cmd_bs2(self, conn, bits, _, ext):
        return self._write_bank(bits, 1, 32)

    def _cmd_tick(self, conn, *_):
        return self._now_us() & 0xFFFFFFFF

    def _cmd_hwver(self, conn, *_):
        return self._revision

    def _cmd_pigpv(self, conn, *_):
        return PIGPIO_VERSION

    def _open_handle(self, handle):
        if handle >= NOTIFY_SLOTS or self._handles[handle] is None:
            return None
        return self._handles[handle]

    def _cmd_nb(self, conn, handle, bits, ext):
        h = self._open_handle(handle)
        if h is None:
            return PI_BAD_HANDLE
        h.bits = bits
        h.running = True
        return 0

    def _cmd_np(self, conn, handle, _, ext):
        h = self._open_handle(handle)
        if h is None:
            return PI_BAD_HANDLE
        h.bits = 0
        h.running = False
        return 0

    def _cmd_nc(self, conn, handle, _, ext):
        if self._open_handle(handle) is None:
            return PI_BAD_HANDLE
        self._handles[handle] = None
        return 0

    def _cmd_noib(self, conn, *_):
        for slot, handle in enumerate(self._handles):
            if handle is None:
                self._handles[slot] = _Handle(conn, self._now_us())
                self._close_handles_of(conn, keep=slot)
                return slot
        return PI_NO_HANDLE

    def _cmd_prg(self, conn, gpio, _, ext):
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        return self._gpios[gpio].range

    def _cmd_pfg(self, conn, gpio, _, ext):
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        return PWM_FREQUENCIES[self._gpios[gpio].freq_index]

    def _cmd_prrg(self, conn, gpio, _, ext):
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        return PWM_REAL_RANGES[self._gpios[gpio].freq_index]

    def _cmd_gdc(self, conn, gpio, _, ext):
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        g = self._gpios[gpio]
        return g.width if g.pwm else PI_NOT_PWM_GPIO

    def _cmd_fg(self, conn, gpio, steady, ext):
        if gpio > MAX_USER_GPIO:
            return PI_BAD_USER_GPIO
        if steady > MAX_STEADY:
            return PI_BAD_FILTER
        g = self._gpios[gpio]
        g.steady = steady
        if steady:                                 # (re)initialised from the current level
            g.gf_reported = g.gf_last = g.level
            g.gf_changed = self._now_us()
        return 0

    #: The command table: command number -> handler (self, conn, p1, p2, extension).
    COMMANDS = {
        CMD_MODES: _cmd_modes,   # gpioSetMode
        CMD_MODEG: _cmd_modeg,   # gpioGetMode
        CMD_PUD: _cmd_pud,       # gpioSetPullUpDown
        CMD_READ: _cmd_read,     # gpioRead
        CMD_WRITE: _cmd_write,   # gpioWrite (forces output, stops PWM)
        CMD_PWM: _cmd_pwm,       # gpioPWM
        CMD_PRS: _cmd_prs,       # gpioSetPWMrange -> real range
        CMD_PFS: _cmd_pfs,       # gpioSetPWMfrequency -> snapped frequency
        CMD_WDOG: _cmd_wdog,     # gpioSetWatchdog
        CMD_BR1: _cmd_br1,       # gpioRead_Bits_0_31
        CMD_BR2: _cmd_br2,       # gpioRead_Bits_32_53
        CMD_BC1: _cmd_bc1,       # gpioWrite_Bits_0_31_Clear
        CMD_BC2: _cmd_bc2,       # gpioWrite_Bits_32_53_Clear
        CMD_BS1: _cmd_bs1,       # gpioWrite_Bits_0_31_Set
        CMD_BS2: _cmd_bs2,       # gpioWrite_Bits_32_53_Set
        CMD_TICK: _cmd_tick,     # gpioTick
        CMD_HWVER: _cmd_hwver,   # gpioHardwareRevision
        CMD_NB: _cmd_nb,         # gpioNotifyBegin
        CMD_NP: _cmd_np,         # gpioNotifyPause
        CMD_NC: _cmd_nc,         # gpioNotifyClose
        CMD_PRG: _cmd_prg,       # gpioGetPWMrange
        CMD_PFG: _cmd_pfg,       # gpioGetPWMfrequency
        CMD_PRRG: _cmd_prrg,     # gpioGetPWMrealRange
        CMD_PIGPV: _cmd_pigpv,   # gpioVersion
        CMD_GDC: _cmd_gdc,       # gpioGetPWMdutycycle
        CMD_FG: _cmd_fg,         # gpioGlitchFilter
        CMD_NOIB: _cmd_noib,     # gpioNotifyOpenInBand
    }
