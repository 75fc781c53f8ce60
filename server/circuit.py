"""
The virtual Pi's wiring (mock backend only): nets of GPIOs joined by wires,
the simulated parts on them, and what each net carries.

Flow: pin worker (its pin's function, pull, level or PWM: an ``electrical``
message) → pin table → **circuit** → a :class:`~remoteio_server.signals.Signal`
for every input on the net → their workers.

A *net* is a set of GPIOs joined by ``--mock-wire`` wires (``17:27``,
``5:6:13``), with the parts attached to them (:mod:`.parts`). It behaves as
copper does:

1. **Drivers decide.** Outputs (a level, or PWM as a square wave), the parts
   that drive (a pressed button, a sensor's output) and ``remoteio drive``
   drive the net; every input on it sees what they drive. Two drivers that
   disagree are a *short*: the server logs it and shows it in ``status``, and
   the net's inputs keep the level they had until it is cleared.
2. **Else the strongest pull.** With nothing driving it, a resistive part
   (the light sensor's capacitor) decides, else the strongest pull on the net:
   a fixed physical pull-up (GPIO2 and GPIO3: 1.8 kΩ) over the internal ones
   (about 50 kΩ). An input with a pull-up thus pulls up the other end of its
   wire. Equal pulls that disagree leave the net undefined (floating).
3. **Else it floats**: the inputs keep the level they had.

The pin table tells the circuit each change of a wired pin's function, pull,
level or PWM (:meth:`Circuit.update`, in the order its worker made them) and
each claim's end; the circuit answers with the signals to send, each with a
version number, so that a worker that gets two of them out of order keeps the
later one.
"""

import logging
import threading
import time
from typing import NamedTuple, Optional

from remoteio_server import parts as parts_module
from remoteio_server.signals import FLOATING, Signal, constant, pwm

log = logging.getLogger('remoteio_server.circuit')

#: Strength of a fixed physical pull (1.8 kΩ on GPIO2 and GPIO3) and of the internal ones.
FIXED_PULL, INTERNAL_PULL = 2, 1
#: Cascades one change may set off (an HC-SR04's trigger raising its echo): a bound.
MAX_CASCADE = 16
#: Seconds between two warnings about the shorts of one net (a flood of shorts, made by
#: a client toggling a part against an output, must not flood the log).
SHORT_LOG_INTERVAL = 1.0


class PinState(NamedTuple):
    """What a GPIO does to its net (as its worker last reported it)."""
    function: str = 'input'
    level: float = 0           # an output's level, or its duty cycle with PWM
    frequency: Optional[float] = None
    pull: Optional[str] = 'floating'
    t: float = 0.0             # when it last changed (server's monotonic clock)


class Net:
    def __init__(self, gpios):
        self.gpios = tuple(sorted(gpios))
        self.parts = []              # (part, gpio) attached to this net
        self.signal = FLOATING
        self.short = None            # a description while two drivers disagree
        self.logged = None           # when a short was last logged
        self.unlogged = 0            # shorts since then, not logged

    def name(self):
        return '+'.join(f'GPIO{g}' for g in self.gpios)


def _key(signal):
    """What tells two signals apart for an input (a constant's start time does not)."""
    if signal.wave is None and not signal.steps:
        return (signal.level,)
    return tuple(signal)


class Circuit:
    """The nets, parts and signals of a mock server; see the module docstring."""

    def __init__(self, gpios, wires=(), parts=(), fixed_pulls=None):
        self.fixed_pulls = dict(fixed_pulls or {})   # gpio -> 'up' (GPIO2, GPIO3)
        parent = {}

        def find(g):
            while parent.setdefault(g, g) != g:
                g = parent[g]
            return g

        for wire in wires:
            wire = list(wire)
            for gpio in wire:
                if gpio not in gpios:
                    raise ValueError(f'--mock-wire: GPIO{gpio} is not a GPIO of this board')
            for other in wire[1:]:
                parent[find(other)] = find(wire[0])
        self.parts = {}
        for part in parts:
            if part.name in self.parts:
                raise ValueError(f'two mock parts named {part.name}')
            for gpio in part.gpios.values():
                if gpio not in gpios:
                    raise ValueError(f'--mock-part {part.name}: GPIO{gpio} is not a GPIO of '
                                     f'this board')
                find(gpio)
            self.parts[part.name] = part
        groups = {}
        for gpio in list(parent):
            groups.setdefault(find(gpio), set()).add(gpio)
        self.nets = [Net(members) for members in groups.values()]
        self.net_of = {gpio: net for net in self.nets for gpio in net.gpios}
        for part in self.parts.values():
            for gpio in part.gpios.values():
                self.net_of[gpio].parts.append((part, gpio))
        #: every GPIO on a net: their workers report their changes, and their reads
        #: go to the worker (which has the net's signal)
        self.gpios = frozenset(self.net_of)
        self.pins = {gpio: self._default(gpio) for gpio in self.gpios}
        self.external = {}            # gpio -> level set by ``remoteio drive``
        self.sent = {}                # gpio -> (version, signal) last sent to its input
        self.version = 0
        self._lock = threading.Lock()
        now = time.monotonic()
        for net in self.nets:          # what each carries before anything changes
            self._resolve_from(net, now)

    def __bool__(self):
        return bool(self.nets)

    def _default(self, gpio):
        """An unclaimed GPIO: an input with the board's fixed pull, if it has one."""
        return PinState('input', 0, None, self.fixed_pulls.get(gpio, 'floating'), 0.0)

    # What changes it ---------------------------------------------------------------

    def update(self, gpio, function, level, frequency, pull, t):
        """A wired pin changed (its worker says so); the signals to send: [(gpio, version, signal)]."""
        with self._lock:
            self.pins[gpio] = PinState(function, level, frequency, pull, t)
            if function == 'output':
                # its worker drops the signal it had (an output takes none): when it is
                # an input again, the net's signal is sent afresh
                self.sent.pop(gpio, None)
            return self._resolve_from(self.net_of[gpio], t)

    def unclaimed(self, gpio):
        """*gpio*'s worker has ended (released or died): it is an input again."""
        now = time.monotonic()
        with self._lock:
            state = self._default(gpio)
            self.pins[gpio] = state._replace(t=now)
            return self._resolve_from(self.net_of[gpio], now)

    def drive(self, gpio, level):
        """``remoteio drive``: an outside source drives *gpio*'s net (None: it lets go)."""
        now = time.monotonic()
        with self._lock:
            if level is None:
                self.external.pop(gpio, None)
            else:
                self.external[gpio] = constant(level, now)
            return self._resolve_from(self.net_of[gpio], now)

    def set_part(self, name, value):
        """Set part *name*'s value; the signals to send. KeyError / ValueError."""
        now = time.monotonic()
        with self._lock:
            part = self.parts[name]
            part.set(value, now)
            changes = []
            for gpio in part.gpios.values():
                changes += self._resolve_from(self.net_of[gpio], now)
            return changes

    def signal_of(self, gpio):
        """(version, signal) an input on *gpio* should have now (at its claim)."""
        with self._lock:
            return self.sent.get(gpio, (0, self.net_of[gpio].signal))

    def level_of(self, gpio):
        """The level the net of *gpio* has now (None: floating, or a short)."""
        with self._lock:
            return self.net_of[gpio].signal.at(time.monotonic())

    # Resolving ----------------------------------------------------------------------

    def _resolve_from(self, net, now):
        changes = []
        queue = [net]
        for _ in range(MAX_CASCADE):
            if not queue:
                break
            net = queue.pop(0)
            changes += self._resolve(net, now)
            for part, gpio in net.parts:
                for other in part.observe(gpio, net.signal, now):
                    if self.net_of[other] not in queue:
                        queue.append(self.net_of[other])
        return changes

    def _drivers(self, net, now):
        drivers = []
        for gpio in net.gpios:
            state = self.pins[gpio]
            if state.function == 'output':
                signal = pwm(state.frequency, state.level, state.t) if state.frequency \
                    else constant(state.level >= 0.5, state.t)
                drivers.append((f'GPIO{gpio} (output)', signal))
            external = self.external.get(gpio)
            if external is not None:
                drivers.append((f'remoteio drive GPIO{gpio}', external))
        for part, gpio in net.parts:
            signal = part.drive(gpio, now)
            if signal is not None:
                drivers.append((part.name, signal))
        return drivers

    def _resolve(self, net, now):
        drivers = self._drivers(net, now)
        short = None
        if len(drivers) > 1 and len({_key(s) for _, s in drivers}) > 1:
            short = ', '.join(f'{who} drives {s.describe()}' for who, s in drivers)
        strong = drivers[0][1] if drivers and short is None else None
        for part, gpio in net.parts:
            part.strong(gpio, strong if short is None else None, now)
        if short is not None:
            signal = Signal(None, now)
            if net.short != short:
                self._log_short(net, short)
        elif strong is not None:
            signal = strong
        else:
            signal = self._weak(net, now)
        net.short = short
        net.signal = signal
        changes = []
        for gpio in net.gpios:
            if self.pins[gpio].function == 'output':
                continue
            last = self.sent.get(gpio)
            if last is not None and _key(last[1]) == _key(signal):
                continue
            if last is None and signal.floating:
                continue
            self.version += 1
            self.sent[gpio] = (self.version, signal)
            changes.append((gpio, self.version, signal))
        return changes

    def _log_short(self, net, short):
        wall = time.monotonic()
        if net.logged is not None and wall - net.logged < SHORT_LOG_INTERVAL:
            net.unlogged += 1
            return
        more = f' ({net.unlogged} more since the last warning)' if net.unlogged else ''
        net.logged, net.unlogged = wall, 0
        log.warning('short circuit on %s: %s; its inputs keep their level until the drivers '
                    'agree%s', net.name(), short, more)

    def _weak(self, net, now):
        for part, gpio in net.parts:
            signal = part.weak(gpio, now)
            if signal is not None:
                return signal
        pulls = {}
        for gpio in net.gpios:
            state = self.pins[gpio]
            if state.function == 'output' or state.pull not in ('up', 'down'):
                continue
            strength = FIXED_PULL if gpio in self.fixed_pulls else INTERNAL_PULL
            pulls.setdefault(strength, set()).add(1 if state.pull == 'up' else 0)
        if not pulls:
            return Signal(None, now)
        levels = pulls[max(pulls)]
        if len(levels) > 1:
            return Signal(None, now)       # equal pulls fighting: mid-rail, undefined
        t = max(self.pins[g].t for g in net.gpios)
        return constant(levels.pop(), t)

    # Status -----------------------------------------------------------------------------

    def status(self):
        """The nets and parts, for the server's status."""
        with self._lock:
            now = time.monotonic()
            nets = []
            for net in self.nets:
                level = net.signal.at(now)
                nets.append({'pins': list(net.gpios), 'level': level,
                             'signal': net.signal.describe(), 'short': net.short,
                             'parts': [part.name for part, _ in net.parts],
                             'driven': sorted(g for g in self.external if g in net.gpios)})
            return {'nets': nets, 'parts': [part.status() for part in self.parts.values()]}


def parse_part(text):
    """A part from its command-line spec (:func:`parts.parse`)."""
    return parts_module.parse(text)
