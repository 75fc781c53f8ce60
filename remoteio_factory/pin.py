"""
The client's pin: a gpiozero :class:`~gpiozero.pins.pi.PiPin` whose
operations are carried out by the remoteio server.

Flow: gpiozero device → **RemoteIOPin** → connection → wire → server.

Values are validated here, before anything is sent, and raise gpiozero's own
exceptions at once. State writes are *posted*: queued in order and sent
without waiting for the server, so gpiozero's blink and pulse threads run at
their own pace whatever the network does. Everything else (reads, function,
frequency, pull) waits for the server's answer; a read reflects every write
sent before it. If the server failed to carry out an earlier posted write,
the error is raised by the pin's next call that waits.

A pin is claimed on the server when a device reserves it (or on first use,
for code that opens pins with ``factory.pin()`` directly) and released when
it is closed: the server then stops its PWM and returns it to an input, as
gpiozero does when it closes a pin, and ``close()`` returns once it has. A
closed pin raises ``GPIODeviceClosed`` when used, until a new device (or
``factory.pin()``) asks for it again.

While the factory reconnects after a lost connection, calls that need an
answer wait for it (and a request cut off by the loss is asked again), and
writes are dropped (the reconnection restores the last one). Once the loss
is fatal, calls raise it; gpiozero's own background threads end quietly
instead (the main thread is told).
"""

import logging
import math
import threading

from gpiozero.exc import (
    GPIODeviceClosed, PinEdgeDetectUnsupported, PinFixedPull, PinInvalidBounce, PinInvalidEdges,
    PinInvalidFunction, PinInvalidPull, PinInvalidState, PinPWMFixedValue,
    PinPWMUnsupported, PinSetInput)
from gpiozero.pins.pi import PiPin
from gpiozero.threads import GPIOThread

from remoteio_factory.connection import clock
from remoteio_factory.exc import RemoteIOConnectionError, RemoteIOFactoryClosed
from remoteio_factory.protocol import EDGES, FUNCTIONS, MAX_BOUNCE, MAX_FREQUENCY, PULLS


log = logging.getLogger('remoteio_factory')


class _FactoryClosedInThread(RemoteIOFactoryClosed, ReferenceError):
    """RemoteIOFactoryClosed as gpiozero's background threads get it (see _factory_closed)."""


def _check_state(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PinInvalidState(f'invalid state {value!r}: must be a number from 0 to 1') from None
    if not 0 <= number <= 1:  # also rejects NaN
        raise PinInvalidState(f'invalid state {value!r}: must be from 0 to 1')
    # Keep ints as ints (digital), send floats as floats (duty cycle)
    return int(number) if number in (0, 1) and not isinstance(value, float) else number


class RemoteIOPin(PiPin):
    """
    A GPIO pin of a remote Raspberry Pi. Do not construct it directly: ask
    the factory (``factory.pin(17)``) or create a gpiozero device with
    ``pin_factory=factory``.
    """

    def __init__(self, factory, info):
        super().__init__(factory, info)
        self._gpio = int(info.name[4:])
        self._claim_lock = threading.Lock()
        self._claimed = False
        self._function = 'input'
        self._frequency = None
        self._pull = info.pull or 'floating'
        self._bounce = None
        self._edges = 'both'
        self._last_state = 0          # the last state written, restored after a reconnect
        self._last_event_state = None  # the level of the last edge event delivered
        self._error = None
        self._open = True             # False once closed: then using it raises (see _check_open)

    # Claiming --------------------------------------------------------------

    def _claim(self):
        """Claim the pin on the server unless this client already has it."""
        if self._claimed:
            return
        with self._claim_lock:
            if self._claimed:
                return
            reply = self._request('claim')
            self._function = reply['function']
            self._frequency = reply['frequency']
            self._pull = reply.get('pull') or self.info.pull or 'floating'
            self._bounce = None
            self._edges = 'both'
            self._error = None
            self._claimed = True
            self._open = True

    def _start_release(self):
        """
        Send the release of the pin, if it is claimed here; return what
        :meth:`RemoteIOFactory._await_releases` waits for, or None. Never raises.
        """
        with self._claim_lock:
            if not self._claimed:
                return None
            self._claimed = False
            connection = self.factory._connection
            if connection.closed or connection.broken is not None:
                return None     # a lost or closed connection has released the pin already
            try:
                return self, connection, connection.send('release', pin=self._gpio)
            except Exception:
                return None

    def _release(self):
        """
        Release the pin on the server and wait until the server has freed it
        (its soft close done: free for any client), at most the request timeout;
        then warn and return. Never raises.
        """
        pending = self._start_release()
        if pending is not None:
            self.factory._await_releases([pending])

    def _start_close(self):
        # As gpiozero's own pins do: the handler goes with the pin, so a device
        # made on it later subscribes afresh (and gets its events).
        try:
            self.when_changed = None
        except Exception:
            pass
        self._open = False
        return self._start_release()

    def _reopen(self):
        """Asked for again (``factory.pin()``, a new device): usable again, claimed on first use."""
        self._open = True

    def _check_open(self):
        """
        Raise if the pin was closed (its device closed it): a late write from
        another thread (a blink or source thread, or code that kept ``led.pin``)
        must not claim it again behind the program's back and hold it until exit.
        """
        if not self._open:
            # gpiozero 2.0 has no PinClosed. GPIODeviceClosed (a DeviceClosed) is what
            # gpiozero raises when a closed device is used, so code written against
            # gpiozero already catches it, and it says the right thing: what the pin
            # belonged to was closed. (RemoteIOFactoryClosed, also a DeviceClosed,
            # stays for a pin of a closed factory.)
            raise GPIODeviceClosed(
                f'{self!r} is closed (its device was closed and the remoteio server has '
                f'released it): make a new device on it, or get it again with '
                f'factory.pin({self.info.name!r}), to use it again')

    def close(self):
        """Release the pin; returns once the server has freed it (see :meth:`_release`)."""
        pending = self._start_close()
        if pending is not None:
            self.factory._await_releases([pending])

    # Talking to the server -------------------------------------------------

    def _raise_failure(self):
        """Raise the failure of an earlier posted request on this pin, once."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _request(self, op, **fields):
        """
        Send a request for this pin and return its reply. While the factory
        reconnects, wait for it; a request cut off by the loss is asked again
        on the new connection, once the pin has been restored there.
        """
        self._raise_failure()
        factory = self.factory
        while True:
            connection = factory._live_connection()
            try:
                return connection.request(op, pin=self._gpio, **fields)
            except RemoteIOConnectionError:
                if connection.broken is None:
                    raise                       # no answer in time, or refused
                if factory._recovering():
                    continue
                if factory._fatal is not None and not factory._closing:
                    raise factory._lost_error() from None
                raise

    def _post(self, op, **fields):
        factory = self.factory
        try:
            factory._connection.post(op, pin=self._gpio, **fields)
        except RemoteIOConnectionError:
            if factory._recovering():
                return      # dropped: the reconnection restores the last state written
            if factory._fatal is not None and not factory._closing:
                if isinstance(threading.current_thread(), GPIOThread):
                    return  # a blink or source thread: the main thread is told, not it
                raise factory._lost_error() from None
            raise

    def _restore(self):
        """
        After a reconnection: claim the pin again and give it back its
        function, state, frequency, pull, edges and event subscription.
        Returns True if it was claimed here before.
        """
        if not self._claimed:
            return False
        with self._claim_lock:     # not released meanwhile (a claim waiting here is not _claimed)
            if not self._claimed:
                return False
            return self._restore_claimed()

    def _restore_claimed(self):
        connection = self.factory._connection
        gpio = self._gpio
        try:
            connection.request('claim', pin=gpio)
            if self._function == 'output':
                frequency = self._frequency
                connection.request('setup', pin=gpio, function='output',
                                   state=0 if frequency else int(bool(self._last_state)))
                if frequency:
                    connection.request('frequency', pin=gpio, frequency=frequency)
                    connection.post('write', pin=gpio, state=self._last_state)
            else:
                connection.request('setup', pin=gpio, function='input', pull=self._pull)
                if self._when_changed is not None:
                    connection.request('edges', pin=gpio, edges=self._edges, bounce=self._bounce)
                    connection.request('subscribe', pin=gpio, events=True)
                    # an edge missed during the gap: deliver it now, late but in order
                    level = int(bool(connection.request('read', pin=gpio)['state']))
                    if self._last_event_state is not None and level != self._last_event_state:
                        events = self.factory._events
                        events.put(gpio, clock() + events.offset, level)
        except Exception as exc:
            if connection.broken is not None or connection.closed:
                return False     # lost again (restored on the next connection), or closing
            log.error('could not restore %r after reconnecting: %s', self, exc)
            self._lost(exc)
            return False
        return True

    def _failed(self, exc):
        """An earlier posted request failed: raise it from the next waiting call."""
        self._error = exc

    def _lost(self, exc):
        """The server freed the pin (its worker died): report it, claim anew on next use."""
        self._claimed = False
        self._error = exc

    @property
    def _closed(self):
        """Is the factory closed, or closing?"""
        return self.factory._closing or self.factory._connection.closed

    def _factory_closed(self, what):
        """
        The error for *what* on a pin of a closed factory. gpiozero's background
        threads (a LineSensor's GPIOQueue, a Button's hold thread) get one that
        is also a ReferenceError: they end quietly on that (it is what they get
        when their device is gone), as they end at exit with gpiozero's local
        factories, instead of dying with a traceback.
        """
        message = f'cannot {what} {self!r}: the remoteio factory is closed'
        if isinstance(threading.current_thread(), GPIOThread):
            return _FactoryClosedInThread(message)
        return RemoteIOFactoryClosed(message)

    def _usable(self):
        """
        Before an operation that changes the pin: False if the factory is closed
        (the operation is dropped quietly, as writes at exit are); raises if the
        pin was closed; claims it on first use.
        """
        if self._closed:
            return False
        self._check_open()
        self._claim()
        return True

    # gpiozero's Pin contract -----------------------------------------------

    def _get_function(self):
        return self._function

    def _set_function(self, value):
        if value not in FUNCTIONS:
            raise PinInvalidFunction(f'invalid function "{value}" for pin {self!r}')
        if not self._usable():
            return
        self._apply(self._request('setup', function=value))

    def output_with_state(self, state):
        state = _check_state(state)
        if not self._usable():
            return
        self._apply(self._request('setup', function='output', state=state))
        self._last_state = state

    def input_with_pull(self, pull):
        if pull not in PULLS:
            raise PinInvalidPull(f'invalid pull "{pull}" for pin {self!r}')
        if self.info.pull and pull != self.info.pull:
            raise PinFixedPull(f'{self!r} has a fixed pull resistor')
        if not self._usable():
            return
        self._apply(self._request('setup', function='input', pull=pull))

    def _apply(self, reply):
        self._function = reply['function']
        self._frequency = reply['frequency']
        if reply.get('pull'):
            self._pull = reply['pull']

    def _get_state(self):
        if self._closed:
            raise self._factory_closed('read')
        self._check_open()
        try:
            self._claim()
            return self._request('read')['state']
        except Exception:
            if self._closed:      # the factory closed meanwhile (e.g. at exit)
                raise self._factory_closed('read') from None
            raise

    def _set_state(self, value):
        value = _check_state(value)
        if not self._closed:
            self._check_open()
        if self._function != 'output':
            raise PinSetInput(f'cannot set state of pin {self!r}')
        if self._frequency is None and value not in (0, 1):
            value = int(bool(value))
        self._last_state = value
        if not self._usable():
            return
        self._post('write', state=value)

    def _get_frequency(self):
        return self._frequency

    def _set_frequency(self, value):
        if value is not None:
            if not self.factory._capabilities.get('pwm'):
                raise PinPWMUnsupported(
                    f'the remoteio server\'s {self.factory.backend} backend has no PWM')
            if self._function != 'output':
                raise PinPWMFixedValue(f'cannot start PWM on pin {self!r}')
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise PinInvalidState(f'invalid frequency {value!r}') from None
            if not (0 < value <= MAX_FREQUENCY) or math.isnan(value):
                raise PinInvalidState(
                    f'invalid frequency {value!r}: must be above 0 and at most {MAX_FREQUENCY:g} Hz')
        if self._closed:
            return
        if value is None and not self._claimed:
            self._frequency = None
            return
        self._check_open()
        self._claim()
        self._apply(self._request('frequency', frequency=value))

    def _get_pull(self):
        return self._pull

    def _set_pull(self, value):
        if self._function != 'input':
            raise PinFixedPull(f'cannot set pull on non-input pin {self!r}')
        if value not in PULLS:
            raise PinInvalidPull(f'invalid pull "{value}" for pin {self!r}')
        if self.info.pull and value != self.info.pull:
            raise PinFixedPull(f'{self!r} has a fixed pull resistor')
        if not self._usable():
            return
        self._apply(self._request('pull', pull=value))

    # Timed tasks (the server runs the timing) ------------------------------

    def run_task(self, kind, time_ms=None, active_high=True, **fields):
        """
        Run a timed task on the server: *kind* is ``on``, ``off``, ``value``,
        ``blink`` or ``pulse``; *time_ms* its duration; *fields* the task's
        other fields in wire form (``value``, ``on_ms``, ``off_ms``,
        ``fade_in_ms``, ``fade_out_ms``, ``n``; see ``docs/protocol.md``).
        Returns a :class:`~remoteio_factory.connection.TaskHandle` once the
        server has accepted the task; raises gpiozero's exception if it
        rejects it.
        """
        if self._closed:
            raise RemoteIOFactoryClosed(f'cannot run {kind} on {self!r}: the factory is closed')
        self._check_open()
        self._claim()
        self._raise_failure()
        fields = {name: value for name, value in fields.items() if value is not None}
        if time_ms:
            fields['time_ms'] = time_ms
        if not active_high:
            fields['active_high'] = False
        connection = self.factory._live_connection()
        try:
            # Not asked again if the connection is lost meanwhile: the task may have run.
            handle = connection.task(pin=self._gpio, task=kind, **fields)
        except RemoteIOConnectionError:
            factory = self.factory
            if connection.broken is not None and factory._fatal is not None \
                    and not factory._closing:
                raise factory._lost_error() from None
            raise
        starts_pwm = kind in ('pulse', 'value') or fields.get('fade_in_ms') or fields.get('fade_out_ms')
        if starts_pwm and self._frequency is None:
            # the server starts PWM for these when the pin has none
            self._frequency = self._request('read')['frequency']
        return handle

    # Edges and events (detected on the server, pushed to us) ---------------

    def _get_bounce(self):
        return self._bounce

    def _set_bounce(self, value):
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise PinInvalidBounce(f'bounce must be None or a number, not {value!r}') from None
            if not 0 <= value <= MAX_BOUNCE:
                raise PinInvalidBounce(f'bounce must be from 0 to {MAX_BOUNCE:g} s, not {value!r}')
        if not self._usable():
            return
        self._request('edges', edges=self._edges, bounce=value)
        self._bounce = value

    def _get_edges(self):
        return self._edges

    def _set_edges(self, value):
        if value not in EDGES:
            raise PinInvalidEdges(f'edges must be one of {", ".join(EDGES)}, not {value!r}')
        if not self._usable():
            return
        self._request('edges', edges=value, bounce=self._bounce)
        self._edges = value

    def _enable_event_detect(self):
        if not self.factory._capabilities.get('edges'):
            raise PinEdgeDetectUnsupported(
                f'the remoteio server\'s {self.factory.backend} backend has no edge detection')
        if not self._usable():
            return
        self._request('subscribe', events=True)

    def _disable_event_detect(self):
        # Fire and forget: called from close() and from the garbage collector too.
        if self._claimed and not self._closed:
            try:
                self._post('subscribe', events=False)
            except Exception:
                pass
