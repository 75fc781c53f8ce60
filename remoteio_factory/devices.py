"""
Drop-in gpiozero ``LED`` and ``PWMLED`` with server-timed extensions.

Flow: **LED / PWMLED** → RemoteIOPin.run_task → wire → server → pin worker
(which runs the timing) → gpiozero pin.

They are gpiozero's own classes with a ``time_ms`` argument added to
``on``, ``off``, ``blink`` and ``pulse``, and a ``set_value(value,
time_ms)``::

    from remoteio_factory import LED

    led = LED(17)                 # with GPIOZERO_PIN_FACTORY=remoteio
    led.on(time_ms=100)           # a 100 ms impulse, timed on the server
    led.blink(0.1, 0.1, time_ms=2000, background=False)

On a remote pin, ``on``/``off``/``value`` with a time, and every ``blink``
and ``pulse``, run as one task on the server: one message per task, not one
per edge, and the timing does not depend on the network. Without a time,
``on``/``off``/``value`` are plain gpiozero writes. On any other pin factory
(MockFactory, lgpio, …) the same calls behave the same, timed on this
machine by the same rules (:mod:`remoteio_factory.tasks`), so a script can be
tested without a server.

One difference follows from the server's mode: in ``wait`` mode a timed task
runs to its end before the next one for the pin starts (a plain write waits
too), where gpiozero would cut it short; in ``nowait`` mode each call
replaces the running task, as gpiozero does.
"""

from time import monotonic

import gpiozero
from gpiozero.threads import GPIOThread

from remoteio_factory.pin import RemoteIOPin
from remoteio_factory.tasks import Task


def _ms(seconds):
    return None if seconds is None else seconds * 1000


class _ServerTimed:
    """The time_ms extensions, shared by :class:`LED` and :class:`PWMLED`."""

    def _timed(self, kind, background=True, time_ms=None, level=None, on_time=None,
               off_time=None, fade_in_time=None, fade_out_time=None, n=None):
        if time_ms is not None and time_ms < 0:
            raise ValueError(f'time_ms must not be negative, not {time_ms}')
        self._stop_blink()
        pin = self.pin
        if isinstance(pin, RemoteIOPin):
            handle = pin.run_task(
                kind, time_ms=time_ms, active_high=self.active_high, value=level,
                on_ms=_ms(on_time), off_ms=_ms(off_time), fade_in_ms=_ms(fade_in_time),
                fade_out_ms=_ms(fade_out_time), n=n)
            if not background:
                handle.wait()
            return handle
        task = Task(kind, duration=(time_ms or 0) / 1000 or None,
                    level=1.0 if level is None else level, on_time=on_time, off_time=off_time,
                    fade_in=fade_in_time, fade_out=fade_out_time, n=n)
        self._blink_thread = GPIOThread(self._run_local_task, (task,))
        self._blink_thread.start()
        if not background:
            self._blink_thread.join()
            self._blink_thread = None
        return None

    def _run_local_task(self, task):
        """The same timing rules as the server's, on this machine (a gpiozero blink thread)."""
        stopping = self._blink_thread.stopping
        start = monotonic()
        while True:
            elapsed = monotonic() - start
            if task.done(elapsed):
                self._write_level(0.0)
                return
            level, change = task.at(elapsed)
            self._write_level(level)
            timeout = None if change is None else max(0.0, start + change - monotonic())
            if stopping.wait(timeout):
                return

    def on(self, time_ms=None):
        """Turn on; with *time_ms*, for that many milliseconds, then off."""
        if not time_ms:
            return super().on()
        return self._timed('on', time_ms=time_ms)

    def off(self, time_ms=None):
        """Turn off; with *time_ms*, and hold it off that long before the next task."""
        if not time_ms:
            return super().off()
        return self._timed('off', time_ms=time_ms)

    def set_value(self, value, time_ms=None):
        """Set the value; with *time_ms*, for that many milliseconds, then off."""
        if not time_ms:
            self.value = value
            return None
        return self._timed('value', time_ms=time_ms, level=value)


class LED(_ServerTimed, gpiozero.LED):
    """gpiozero's :class:`~gpiozero.LED` with server-timed ``time_ms`` extensions."""

    def _write_level(self, level):
        self._write(level >= 0.5)

    def blink(self, on_time=1, off_time=1, n=None, background=True, time_ms=None):
        """Blink; ends after *n* cycles or *time_ms* milliseconds, then off."""
        if not time_ms and not isinstance(self.pin, RemoteIOPin):
            return super().blink(on_time, off_time, n, background)
        return self._timed('blink', background, time_ms, on_time=on_time, off_time=off_time, n=n)


class PWMLED(_ServerTimed, gpiozero.PWMLED):
    """gpiozero's :class:`~gpiozero.PWMLED` with server-timed ``time_ms`` extensions."""

    def _write_level(self, level):
        self._write(level)

    def blink(self, on_time=1, off_time=1, fade_in_time=0, fade_out_time=0, n=None,
              background=True, time_ms=None):
        """Blink with optional fades; ends after *n* cycles or *time_ms* milliseconds, then off."""
        if not time_ms and not isinstance(self.pin, RemoteIOPin):
            return super().blink(on_time, off_time, fade_in_time, fade_out_time, n, background)
        return self._timed('blink', background, time_ms, on_time=on_time, off_time=off_time,
                           fade_in_time=fade_in_time, fade_out_time=fade_out_time, n=n)

    def pulse(self, fade_in_time=1, fade_out_time=1, n=None, background=True, time_ms=None):
        """Fade in and out; ends after *n* cycles or *time_ms* milliseconds, then off."""
        if not time_ms and not isinstance(self.pin, RemoteIOPin):
            return super().pulse(fade_in_time, fade_out_time, n, background)
        return self._timed('pulse', background, time_ms, fade_in_time=fade_in_time,
                           fade_out_time=fade_out_time, n=n)
