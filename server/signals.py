"""
What a wire carries on the virtual Pi: a level over time.

Flow: pin worker (an output's change) → pin table → **circuit** (a net's
level) → **signal** (over :mod:`.messages`) → pin worker (an input's level).

The circuit (:mod:`.circuit`, in the server's main process) works out what
each net of the mock backend carries and sends every input on it a
:class:`Signal`; the input's worker (:mod:`.worker`, with the
:class:`~remoteio_server.virtualpin.VirtualPin` of the mock backend) reads its
level from it at any moment and turns its changes into edges, each stamped
with the moment the change happened on the wire, not the moment the message
arrived. Both ends use the same monotonic clock (one machine).

A signal is one of:

- **a level** (``level`` 0 or 1, since ``t``): something drives the net, or a
  pull decides it;
- **floating** (``level`` None): nothing drives or pulls the net: the input
  keeps the level it had (a real floating input picks up noise; the virtual
  one does not);
- **a square wave** (``wave``: frequency, duty cycle, phase origin ``t``): a
  PWM output drives the net;
- **steps**: a level now, then levels at given future times (``steps``): an
  HC-SR04's echo pulse, a bouncing button, a capacitor charging.
"""

import math
from typing import NamedTuple, Optional, Tuple

#: Highest PWM frequency (Hz) whose edges a wired input reports as edge events;
#: above it the input still reads the wave correctly at the moment of each read,
#: but raises no events (a real Pi would raise thousands a second, each a message).
WAVE_EDGE_LIMIT = 200.0


class Signal(NamedTuple):
    level: Optional[int] = None        # the level from t on (None: floating)
    t: float = 0.0                     # when it began (the phase origin of a wave)
    wave: Optional[Tuple[float, float]] = None     # (frequency, duty) of a square wave
    steps: Tuple[Tuple[float, int], ...] = ()      # later (time, level) changes

    # The pipe's form: a JSON object ---------------------------------------------

    def to_dict(self):
        out = {'level': self.level, 't': self.t}
        if self.wave is not None:
            out['wave'] = list(self.wave)
        if self.steps:
            out['steps'] = [list(step) for step in self.steps]
        return out

    @classmethod
    def from_dict(cls, data):
        wave = data.get('wave')
        return cls(data.get('level'), float(data.get('t', 0.0)),
                   tuple(wave) if wave is not None else None,
                   tuple((float(t), int(level)) for t, level in data.get('steps', ())))

    # Reading it -------------------------------------------------------------------

    @property
    def floating(self):
        return self.level is None and self.wave is None

    def at(self, now):
        """The level at monotonic time *now* (None if floating)."""
        if self.wave is not None:
            frequency, duty = self.wave
            return int(math.fmod(max(0.0, now - self.t) * frequency, 1.0) < duty)
        return self._step_at(now)[1]

    def _step_at(self, now):
        """(when, level) of the last change at or before *now* (a level or steps)."""
        step = (self.t, self.level)
        for t, level in self.steps:
            if t > now:
                break
            step = (t, level)
        return step

    def _cycle(self, now):
        """A wave's (period, start of the cycle *now* is in, how far into it)."""
        period = 1.0 / self.wave[0]
        phase = math.fmod(max(0.0, now - self.t), period)
        return period, now - phase, phase

    def changes(self, after, until, limit=64):
        """
        The changes (time, level) after *after* and up to *until*, oldest
        first, at most *limit* (a wave is not worth more edges than that).
        """
        out = []
        if self.wave is not None:
            frequency, duty = self.wave
            period = 1.0 / frequency
            # the rising edges are at t + k*period, the falling ones at t + (k + duty)*period
            k = max(0, math.floor((after - self.t) / period))
            while len(out) < limit:
                rise = self.t + k * period
                fall = rise + duty * period
                if rise > until:
                    break
                if rise > after:
                    out.append((rise, 1))
                if fall > after and fall <= until:
                    out.append((fall, 0))
                k += 1
            return out
        for t, level in self.steps:
            if after < t <= until:
                out.append((t, level))
        return out[:limit]

    def next_change(self, after, edges=True):
        """When the level next changes after *after* (None: never, or a wave too fast for edges)."""
        if self.wave is not None:
            if not edges or self.wave[0] > WAVE_EDGE_LIMIT:
                return None
            period, base, _ = self._cycle(after)
            fall = base + self.wave[1] * period
            return fall if fall > after else base + period
        for t, _ in self.steps:
            if t > after:
                return t
        return None

    def began(self, now):
        """When the level seen at *now* began (the stamp of its edge)."""
        if self.wave is not None:
            period, base, phase = self._cycle(now)
            high = self.wave[1] * period
            return base + high if phase >= high else base
        return self._step_at(now)[0]

    def describe(self):
        """A short text for status and logs."""
        if self.wave is not None:
            return f'PWM {self.wave[0]:g} Hz, duty {self.wave[1]:g}'
        if self.level is None and not self.steps:
            return 'floating'
        text = str(self.level) if self.level is not None else 'floating'
        if self.steps:
            text += ' then ' + ', '.join(f'{level} at +{(t - self.t) * 1000:.3f} ms'
                                         for t, level in self.steps[:4])
        return text


FLOATING = Signal()


def constant(level, t):
    return Signal(int(level), t)


def pwm(frequency, duty, t):
    """An output's PWM as seen on the wire: a constant at duty 0 or 1, else a wave."""
    if duty <= 0.0:
        return Signal(0, t)
    if duty >= 1.0:
        return Signal(1, t)
    return Signal(None, t, (float(frequency), float(duty)))
