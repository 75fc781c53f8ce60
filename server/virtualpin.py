"""
The mock backend's pin: gpiozero's simulated PWM pin, plus what a wire
brings to it on the virtual Pi.

Flow: circuit → signal → pin worker → **virtual pin** (the gpiozero pin the
worker drives).

:class:`VirtualPin` is gpiozero's :class:`~gpiozero.pins.mock.MockPWMPin`
with two additions the worker uses when the pin is on a net
(:mod:`.circuit`):

- while it is an input driven by a PWM output, it reads the square wave at
  the moment of each read (``signal``), as sampling a real pin does;
- a level change can carry the moment it happened on the wire
  (:meth:`drive_at`), so the edge gpiozero sees is stamped with it, not with
  the moment the worker got round to it (an HC-SR04's echo is measured from
  those stamps).
"""

from time import monotonic

from gpiozero.pins.mock import MockPWMPin, PinState


class VirtualPin(MockPWMPin):
    """A mock pin that a wire can drive; see the module docstring."""

    def __init__(self, factory, info):
        super().__init__(factory, info)
        self.signal = None        # the net's Signal while it drives this input
        self._stamp = None

    def _get_state(self):
        signal = self.signal
        if signal is not None and signal.wave is not None and self._function == 'input':
            return bool(signal.at(monotonic()))
        return super()._get_state()

    def _change_state(self, value):
        if self._state != value:
            t = self._stamp if self._stamp is not None else monotonic()
            self._state = value
            self.states.append(PinState(t - self._last_change, value))
            self._last_change = t
            return True
        return False

    def drive_at(self, level, t=None):
        """Drive the input to *level*, the change stamped *t* (monotonic; None: now)."""
        self._stamp = t
        try:
            if level:
                self.drive_high()
            else:
                self.drive_low()
        finally:
            self._stamp = None
