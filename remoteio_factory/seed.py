"""
The seed project's client API, kept: ``RemoteServer(ip, port).pin(7, 'b')``
with timed tasks that the server runs.

Flow: **RemoteServer / RemotePin** → RemoteIOFactory / RemoteIOPin
(``run_task``) → wire → server → pin worker (timing) → gpiozero pin.

::

    from remoteio_factory import RemoteServer

    remote_server = RemoteServer('192.168.1.38', 8509)
    remote_pin = remote_server.pin(7, 'b')   # physical pin 7 (GPIO4)
    remote_pin.on(time_ms=2000)              # on for 2 s, then off
    remote_pin.blink()                       # then blink until the next task
    remote_pin.off()
    remote_server.close()                    # soft close: the server finishes first

Every call returns as soon as the server has accepted the task (the timing
runs on the server, not over the network) and raises if the server rejects
it. Tasks for one pin run one after another (``wait`` mode) or each replaces
the one before (``nowait``), as the server's mode says.
"""

from gpiozero.exc import GPIODeviceClosed

from remoteio_factory.factory import RemoteIOFactory

NUMBERINGS = {'b': 'BOARD', 'g': 'GPIO'}


class RemotePin:
    """One output pin of a :class:`RemoteServer`; see the module docstring."""

    def __init__(self, server, pin, number=None, numbering='b'):
        self.server = server
        self._pin = pin
        self._number = pin.info.name if number is None else number
        self._numbering = numbering
        self._closed_by = None          # 'pin' or 'server' once closed
        self.last_task = None

    @property
    def gpio(self):
        """The pin's GPIO (BCM) number."""
        return self._pin._gpio

    def __repr__(self):
        return f'<RemotePin {self._pin.info.name} of {self.server.factory.host}>'

    def _check_open(self, kind):
        # The seed's rule: tasks for a closed pin are ignored, and the client is told.
        # Claiming the pin again behind the program's back would hold it until exit.
        # GPIODeviceClosed (a gpiozero DeviceClosed), as for a closed gpiozero device.
        if self._closed_by == 'pin':
            raise GPIODeviceClosed(
                f'{self!r} was closed, so {kind}() is ignored: a closed pin takes no more '
                f'tasks. To use it again, claim it again with remote_server.pin('
                f'{self._number!r}, {self._numbering!r})')
        if self._closed_by == 'server':
            raise GPIODeviceClosed(
                f'{self!r} belongs to a RemoteServer that was closed, so {kind}() is '
                f'ignored. Connect again (RemoteServer(...)) and claim the pin with '
                f'.pin({self._number!r}, {self._numbering!r})')

    def _run(self, kind, time_ms, **fields):
        self._check_open(kind)
        if time_ms is not None and time_ms < 0:
            raise ValueError(f'time_ms must not be negative, not {time_ms}')
        handle = self._pin.run_task(kind, time_ms=time_ms or None, **fields)
        if handle.ended and handle.result == 'failed':
            handle.wait()   # raises the server's error
        self.last_task = handle
        return handle

    def on(self, time_ms=0):
        """High for *time_ms* milliseconds, then low; 0: stay high."""
        return self._run('on', time_ms)

    def off(self, time_ms=0):
        """Low, and hold it for *time_ms* milliseconds before the next task starts."""
        return self._run('off', time_ms)

    def value(self, time_ms=0, arg1=1.0):
        """Duty cycle *arg1* (0 to 1) for *time_ms* milliseconds, then off; 0: stay."""
        return self._run('value', time_ms, value=arg1)

    def blink(self, time_ms=0, arg1=1.0, arg2=1.0, n=None):
        """
        Blink, *arg1* seconds on and *arg2* seconds off, for *time_ms*
        milliseconds or *n* cycles, then off; neither: until the next task.
        """
        return self._run('blink', time_ms, on_ms=arg1 * 1000, off_ms=arg2 * 1000, n=n)

    def pulse(self, time_ms=0, arg1=1.0, arg2=1.0, n=None):
        """
        Fade in over *arg1* seconds and out over *arg2* seconds (PWM), for
        *time_ms* milliseconds or *n* cycles, then off; neither: until the
        next task.
        """
        return self._run('pulse', time_ms, fade_in_ms=arg1 * 1000, fade_out_ms=arg2 * 1000, n=n)

    def close(self):
        """
        Soft close: the server carries out what was sent, then releases the pin;
        returns once it has (waiting at most the factory's timeout). Tasks for
        the pin are refused from then on; ``remote_server.pin(...)`` claims it again.
        """
        if self._closed_by is None:
            self._closed_by = 'pin'
        self.server._forget(self)
        self.server.factory.release_pins(self, self._pin.info.name)
        self._pin.close()

    def _conflicts_with(self, other):
        return True


class RemoteServer:
    """
    A connection to a remoteio server for the seed project's API. *server_ip*,
    *server_port* and *mode* (``wait``/``nowait``, default: the server's) as
    for :class:`~remoteio_factory.RemoteIOFactory`.
    """

    def __init__(self, server_ip, server_port=8509, mode=None):
        self.factory = RemoteIOFactory(host=server_ip, port=server_port, mode=mode)
        self._pins = {}      # PinInfo -> RemotePin

    def pin(self, number, numbering='b'):
        """
        Claim pin *number* as an output: ``'b'`` for the physical (board)
        number, ``'g'`` for the GPIO number. Both are resolved on the
        *server's* board. Defining one pin twice, in either numbering,
        raises :exc:`ValueError`.
        """
        try:
            prefix = NUMBERINGS[numbering]
        except KeyError:
            raise ValueError(f"numbering must be 'b' (board) or 'g' (GPIO), not {numbering!r}") from None
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError(f'pin number must be an integer, not {number!r}')
        name = f'{prefix}{number}'
        pin = self.factory.pin(name)          # PinInvalidPin (a ValueError) if there is none
        if pin.info in self._pins:
            raise ValueError(f'{name} is {pin.info.name}, already defined as '
                             f'{self._pins[pin.info]!r}')
        remote = RemotePin(self, pin, number, numbering)
        self.factory.reserve_pins(remote, name)
        pin.output_with_state(0)          # an output, low, as gpiozero's OutputDevice starts
        self._pins[pin.info] = remote
        return remote

    def _forget(self, remote):
        if self._pins.get(remote._pin.info) is remote:
            del self._pins[remote._pin.info]

    def close(self):
        """
        Soft-close every pin (the server finishes what it was sent), wait until
        the server has released them (at most the timeout, once for all), and
        disconnect.
        """
        for remote in list(self._pins.values()):
            remote._closed_by = 'server'
        self._pins.clear()
        self.factory.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
