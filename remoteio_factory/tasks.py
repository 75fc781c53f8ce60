"""
Timed tasks and their timing rules: pure functions of (task, elapsed time).

Flow: pin worker → **tasks** (what level now, and when it next changes) →
gpiozero pin. Shared by both halves, like :mod:`.protocol`: the server's pin
worker runs tasks by these rules, and the drop-in devices (:mod:`.devices`)
run them on the client when the pin is not a remote one.

A :class:`Task` is one of ``on``, ``off``, ``value``, ``blink``, ``pulse``.
:meth:`Task.at` answers, for a time *elapsed* since the task started, the
level the pin should have and the elapsed time at which that level next
changes. The worker turns those into absolute deadlines on a monotonic clock
(so a long blink does not drift) and sleeps until the next one. Nothing here
touches a pin, a process or a socket, so the rules are tested directly.

Times are in seconds here; the wire carries milliseconds.
"""

import math

#: PWM steps per second of a server-side pulse (gpiozero's client-side pulse uses 25).
PULSE_FPS = 50

KINDS = ('on', 'off', 'value', 'blink', 'pulse')

#: A small tolerance so that floating-point rounding at a step boundary
#: never schedules a deadline in the past.
_EPSILON = 1e-9


class Task:
    """
    One timed task. *duration* (seconds) and *n* (cycles, for blink and
    pulse) end it; a task with neither is *endless*: it runs until the next
    task for the pin replaces it. A finite ``on``, ``value``, ``blink`` or
    ``pulse`` switches the pin off when it ends; ``off`` holds the pin off
    for its duration.
    """

    __slots__ = ('kind', 'level', 'duration', 'on_time', 'off_time',
                 'fade_in', 'fade_out', 'n', 'end', 'active_high')

    def __init__(self, kind, duration=None, level=1.0, on_time=None, off_time=None,
                 fade_in=None, fade_out=None, n=None, active_high=True):
        if kind not in KINDS:
            raise ValueError(f'unknown task {kind!r}')
        self.kind = kind
        self.level = float(level) if kind in ('on', 'value') else 0.0
        self.duration = duration or None
        # blink: on/off times (fades optional); pulse: fades (on/off optional)
        blink = kind == 'blink'
        self.on_time = _or(on_time, 1.0 if blink else 0.0)
        self.off_time = _or(off_time, 1.0 if blink else 0.0)
        self.fade_in = _or(fade_in, 0.0 if blink else 1.0)
        self.fade_out = _or(fade_out, 0.0 if blink else 1.0)
        self.n = n or None
        self.active_high = active_high
        self.end = self._end()

    def _end(self):
        if self.kind == 'off':
            return self.duration or 0.0
        ends = []
        if self.duration:
            ends.append(self.duration)
        if self.n and self.cycle:
            ends.append(self.n * self.cycle)
        return min(ends) if ends else None

    @property
    def cycle(self):
        """Seconds of one blink or pulse cycle (None for the other kinds)."""
        if self.kind in ('blink', 'pulse'):
            return self.fade_in + self.on_time + self.fade_out + self.off_time
        return None

    @property
    def endless(self):
        return self.end is None

    @property
    def uses_pwm(self):
        """True if the task needs a PWM pin (levels between 0 and 1)."""
        if self.kind in ('blink', 'pulse'):
            return bool(self.fade_in or self.fade_out)
        return self.kind == 'value' and self.level not in (0.0, 1.0)

    def done(self, elapsed):
        return self.end is not None and elapsed >= self.end - _EPSILON

    def at(self, elapsed):
        """
        Return ``(level, next_change)``: the pin's level *elapsed* seconds
        after the task started, and the elapsed time of the next change of
        level, or of the task's end, whichever comes first (None: never).
        """
        if self.kind in ('on', 'value', 'off'):
            level, change = self.level, None
        else:
            level, change = self._cycle(elapsed)
        if self.end is not None and (change is None or change > self.end):
            change = self.end
        return self.pin_level(level), change

    def pin_level(self, level):
        """The pin's state for a device *level* (inverted for active-low devices)."""
        level = round(level, 6)
        return level if self.active_high else round(1.0 - level, 6)

    def _cycle(self, elapsed):
        """One cycle is: fade in, on, fade out, off (as gpiozero's PWMLED.blink)."""
        cycle = self.cycle
        if cycle <= 0:
            return 0.0, None
        k = math.floor((elapsed + _EPSILON) / cycle)
        base = k * cycle
        phase = elapsed - base
        segment_start = 0.0
        for length, shape in ((self.fade_in, 'up'), (self.on_time, 1.0),
                              (self.fade_out, 'down'), (self.off_time, 0.0)):
            segment_end = segment_start + length
            if length > 0 and phase + _EPSILON < segment_end:
                if not isinstance(shape, str):
                    return shape, base + segment_end
                step = 1.0 / PULSE_FPS
                j = math.floor((phase - segment_start + _EPSILON) / step)
                fraction = min(1.0, j * step / length)
                level = fraction if shape == 'up' else 1.0 - fraction
                return level, base + min(segment_start + (j + 1) * step, segment_end)
            segment_start = segment_end
        return 0.0, base + cycle   # not reached: the segments fill the cycle

    def describe(self):
        """A short summary for ``remoteio status``."""
        parts = [self.kind]
        if self.kind == 'value':
            parts.append(f'{self.level:g}')
        if self.kind in ('blink', 'pulse'):
            parts.append(' '.join(
                f'{name} {value:g}s' for name, value in (
                    ('in', self.fade_in), ('on', self.on_time),
                    ('out', self.fade_out), ('off', self.off_time)) if value))
        if self.n:
            parts.append(f'n={self.n}')
        if not self.active_high:
            parts.append('active low')
        if self.duration:
            parts.append(f'for {self.duration:g}s')
        elif self.endless:
            parts.append('until replaced')
        return ' '.join(parts)


def _or(value, default):
    return default if value is None else value
