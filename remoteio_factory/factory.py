"""
The remoteio pin factory: gpiozero devices on the pins of a remote Raspberry
Pi, served by ``remoteio-server``.

Flow: gpiozero device → **RemoteIOFactory** / RemoteIOPin → connection →
wire → server → pin worker → gpiozero pin on the Pi.

The factory holds one connection. At connect it learns the remote board's
revision (so every gpiozero pin name resolves against the *remote* board),
its backend and what the backend can do. Reserving a pin for a device claims
it on the server, so two clients cannot drive one pin; releasing the last
reservation releases it there.

When the connection is lost the factory reconnects (by default) and restores
its pins; if the server does not come back within the bound, the loss is
fatal: calls raise it, and so does the main thread (:mod:`.interrupt`).
"""

import atexit
import logging
import os
import threading
import weakref

import gpiozero.threads
from gpiozero.exc import GPIOPinInUse, PinInvalidPin
from gpiozero.pins.pi import PiFactory
from gpiozero.threads import GPIOThread
from time import monotonic

from remoteio_factory import interrupt, settings
from remoteio_factory.connection import (
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Connection, clock)
from remoteio_factory.events import EventDispatcher
from remoteio_factory.exc import RemoteIOAuthError, RemoteIOConnectionError, exception_for
from remoteio_factory.pin import RemoteIOPin
from remoteio_factory.spi import RemoteIOSPI, RemoteIOSPIShared
from remoteio_factory.transport import client_context


log = logging.getLogger('remoteio_factory')

#: How long the exit hook waits for gpiozero's background threads to stop.
EXIT_THREADS_TIMEOUT = 2.0
#: How long a lost connection is tried again before the loss is fatal (REMOTEIO_RECONNECT_TIMEOUT).
DEFAULT_RECONNECT_TIMEOUT = 30.0


class _ConnectionLostInThread(RemoteIOConnectionError, ReferenceError):
    """The fatal RemoteIOConnectionError as gpiozero's background threads get it (they end quietly)."""


def tls_context(tls=None, tls_ca=None):
    """
    The client's SSL context: *tls* may be one already; else TLS is on when
    *tls* is true, *tls_ca* is given, ``REMOTEIO_TLS_CA`` names a CA file or
    ``REMOTEIO_TLS`` is ``1`` (then the system's CAs check the server).
    """
    if tls is not None and not isinstance(tls, bool):
        return tls
    tls_ca = tls_ca or os.environ.get('REMOTEIO_TLS_CA') or None
    if tls is None:
        tls = bool(tls_ca) or os.environ.get('REMOTEIO_TLS', '') in ('1', 'yes', 'true')
    return client_context(cafile=tls_ca) if tls else None


def _seconds(value, argument, variable, default):
    if value is None:
        return settings.env_seconds(variable, default)
    return settings.seconds(value, argument)


class RemoteIOFactory(PiFactory):
    """
    Drives the GPIO pins of a remote Raspberry Pi running ``remoteio-server``.

    You can select it for a whole script with environment variables, leaving
    the script unmodified::

        $ GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=192.168.1.3 python3 blink.py

    or construct it and pass it to devices, which lets one script drive
    several Pis at once::

        from gpiozero import LED
        from remoteio_factory import RemoteIOFactory

        factory = RemoteIOFactory(host='192.168.1.3')
        led_1 = LED(17)                          # the default factory
        led_2 = LED(17, pin_factory=factory)     # GPIO17 of the remote Pi

    :param str host:
        The server's host name or address. Defaults to ``REMOTEIO_HOST``, or
        ``localhost``.
    :param int port:
        The server's port. Defaults to ``REMOTEIO_PORT``, or 8509.
    :param float timeout:
        Seconds to wait for any reply (``REMOTEIO_TIMEOUT``, default 10).
    :param float connect_timeout:
        Seconds to wait for the connection (``REMOTEIO_CONNECT_TIMEOUT``,
        default 3). If no server answers in that time,
        :exc:`~remoteio_factory.RemoteIOConnectionError` is raised.
    :param str token:
        The server's shared secret (``REMOTEIO_TOKEN``), if it has one. It is
        never sent: the client proves it knows it, and the server proves it
        too. A missing or wrong token raises
        :exc:`~remoteio_factory.RemoteIOAuthError`.
    :param tls:
        ``True`` to talk TLS (``REMOTEIO_TLS=1``), or an :class:`ssl.SSLContext`.
    :param str tls_ca:
        A CA certificate file (PEM) that signed the server's certificate
        (``REMOTEIO_TLS_CA``); giving one turns TLS on. The server's name
        (*host*) must match its certificate.
    :param bool reconnect:
        Reconnect by itself when the connection is lost (the default;
        ``REMOTEIO_RECONNECT=0`` or ``False`` turns it off): the pins are
        claimed again and get back their function, state, frequency, pull,
        edges and event subscription; the loss and the return are logged as
        warnings. Writes made during the gap are dropped but the last one is
        restored; calls that need an answer wait for the connection to come
        back (and are then asked again).
    :param float reconnect_timeout:
        How long to try (``REMOTEIO_RECONNECT_TIMEOUT``, default 30 s). If the
        server has not come back by then, or at once without *reconnect*, the
        loss is fatal: every call waiting on the factory, and every later one,
        raises :exc:`~remoteio_factory.RemoteIOConnectionError`, and so does
        the main thread (see *interrupt_main*).
    :param bool interrupt_main:
        When the connection is lost for good, raise the
        :exc:`~remoteio_factory.RemoteIOConnectionError` in the main thread
        too, wherever it is (default ``True``): a script blocked in
        ``pause()``, ``sleep()``, ``Event.wait()`` or ``wait_for_press()``
        then ends with the error instead of waiting forever. It takes a
        signal (``SIGUSR2``, or ``SIGUSR1`` if the program has its own
        ``SIGUSR2`` handler; SIGINT where there is neither, and on Windows).
        ``False`` for programs that handle the loss themselves: then only
        calls on the factory raise it.
    :param on_lost:
        A callable, called with the message of the
        :exc:`~remoteio_factory.RemoteIOConnectionError` when the connection
        is lost for good (on a thread of the factory's: it must not wait for
        the factory). For programs that handle the loss themselves, such as
        the MQTT bridge, which then marks the server offline and connects again.
    :param str mode:
        ``wait`` or ``nowait`` for this connection's timed tasks
        (``REMOTEIO_MODE``; default: the server's ``--mode``). In ``wait`` mode
        the tasks for a pin run one after another; in ``nowait`` mode each new
        one replaces the running one.

    The factory is closed automatically when the interpreter exits, and
    releases its pins on the server; the server then stops their PWM and
    returns them to inputs, as gpiozero does when it closes a pin.
    """

    def __init__(self, host=None, port=None, *, timeout=None, connect_timeout=None, mode=None,
                 token=None, tls=None, tls_ca=None, reconnect=None, reconnect_timeout=None,
                 interrupt_main=True, on_lost=None):
        super().__init__()
        # Re-entrant: gpiozero's reserve_pins holds this lock while it looks pins up,
        # and a garbage-collected shared SPI interface (SharedMixin.__del__) may close,
        # and so release its pins, on that same thread right then. With gpiozero's
        # plain Lock that thread would wait for itself for ever.
        self._res_lock = threading.RLock()
        if host is None:
            host = settings.env_host()
        self._host = host
        self._port = settings.env_port() if port is None else settings.port_number(port)
        self.pin_class = RemoteIOPin
        self._spi_buses = weakref.WeakSet()   # open SPI interfaces (remoteio_factory.spi)
        self._closing = False
        self._reconnect_source = 'reconnect=False'
        if reconnect is None:
            reconnect = settings.env_flag('REMOTEIO_RECONNECT', True)
            self._reconnect_source = 'REMOTEIO_RECONNECT=0'
        self._reconnect = bool(reconnect)
        self._reconnect_timeout = _seconds(reconnect_timeout, 'reconnect_timeout',
                                           'REMOTEIO_RECONNECT_TIMEOUT', DEFAULT_RECONNECT_TIMEOUT)
        self._interrupt_main = interrupt_main
        self._on_lost = on_lost
        self._online = threading.Event()   # clear while reconnecting
        self._online.set()
        self._stopped = threading.Event()  # set by close(): ends the reconnect loop's waits
        self._fatal = None                 # why the connection is lost for good
        self._reconnect_lock = threading.Lock()
        self._reconnecting = False         # a reconnect loop runs
        self._lost_again = None            # why the new connection was lost while restoring
        if interrupt_main:
            interrupt.prepare()
        self._connection_args = dict(
            connect_timeout=_seconds(connect_timeout, 'connect_timeout', 'REMOTEIO_CONNECT_TIMEOUT',
                                     DEFAULT_CONNECT_TIMEOUT),
            timeout=_seconds(timeout, 'timeout', 'REMOTEIO_TIMEOUT', DEFAULT_TIMEOUT),
            on_error=self._pin_failed, on_push=self._pushed, on_lost=self._connection_lost,
            mode=mode or os.environ.get('REMOTEIO_MODE') or None, token=token,
            tls=tls_context(tls, tls_ca))
        self._connection = Connection(host, self._port, **self._connection_args)
        hello = self._connection.hello
        self._events = EventDispatcher(
            self._deliver_event, self._connection.clock_offset,
            name=f'remoteio-events-{host}:{self._port}')
        self._revision = int(hello['revision'], 16)
        self._capabilities = dict(hello.get('capabilities') or {})
        self._server_info = hello
        # gpiozero does not close factories passed as pin_factory=: _close_at_exit does,
        # and a factory dropped without close() closes its connection when collected.
        self._finalizer = weakref.finalize(self, self._connection.close)
        self._finalizer.atexit = False
        _open_factories.add(self)

    def __repr__(self):
        return f'<RemoteIOFactory {self._host}:{self._port} backend={self.backend}>'

    @property
    def host(self):
        """The server's host, as given."""
        return self._host

    @property
    def port(self):
        """The server's port."""
        return self._port

    @property
    def backend(self):
        """The gpiozero backend driving the pins on the server (``lgpio``, ``mock``, …)."""
        return self._server_info.get('backend')

    @property
    def mode(self):
        """``wait`` or ``nowait``: how this connection's timed tasks follow each other."""
        return self._server_info.get('mode')

    @property
    def server_info(self):
        """The server's hello: version, backend, board revision, mode, capabilities."""
        return dict(self._server_info)

    def close(self):
        """
        Release every pin on the server, wait until the server has freed them
        all (one wait, at most the request timeout, for all of them), and close
        the connection. Never raises, never hangs.
        """
        with self._reconnect_lock:   # a reconnection under way does not swap in a connection now
            if self._closing or self._connection.closed:
                return
            self._closing = True     # from now on its pins drop writes and refuse reads
            self._reconnect = False
        self._stopped.set()
        self._online.set()           # nobody waits for a reconnection any more
        pending = []
        for pin in list(self.pins.values()):
            release = pin._start_close()       # every release is sent before any wait
            if release is not None:
                pending.append(release)
        self.pins.clear()
        for bus in list(self._spi_buses):
            release = bus._start_close()
            if release is not None:
                pending.append(release)
        self._await_releases(pending)
        self._finalizer()
        self._events.close()

    def _await_releases(self, pending):
        """
        Wait for the replies to releases sent by :meth:`RemoteIOPin._start_release`:
        the server answers a release once the pin is free for anyone. One wait
        for all, at most the request timeout; then warn and return. Never raises.
        """
        timeout = self._connection.timeout
        deadline = monotonic() + timeout
        late = []
        for pin, connection, waiter in pending:
            try:
                connection.wait(waiter, deadline - monotonic())
            except RemoteIOConnectionError:
                if connection.broken is None and not connection.closed:
                    late.append(pin)        # no answer in time: still in its soft close
                # else the connection is gone, and with it our claim: the pin is released
            except Exception as exc:       # e.g. it was lost (its worker died) meanwhile
                log.debug('releasing %r: %s', pin, exc)
        if late:
            log.warning(
                'the remoteio server at %s:%s has not released %s within %g s: %s still '
                'carrying out what was sent before the close (soft close); not waiting any '
                'longer (the pin is free once that is done)', self._host, self._port,
                ', '.join(repr(pin) for pin in late), timeout,
                'it is' if len(late) == 1 else 'they are')

    # Losing the connection, reconnecting --------------------------------------

    @property
    def reconnecting(self):
        """True while the connection is lost and being re-established."""
        return not self._online.is_set()

    def _recovering(self):
        """Will a lost connection come back (reconnecting, or about to)?"""
        return self._reconnect and self._fatal is None and not self._closing

    def _live_connection(self):
        """
        The connection to use now. While reconnecting, wait for the new one (at
        most until the reconnection gives up); once the connection is lost for
        good, raise the error that says so.
        """
        while True:
            if self._fatal is not None and not self._closing:
                raise self._lost_error()
            connection = self._connection
            if connection.broken is None or not self._recovering():
                return connection
            self._online.wait(1.0)

    def _lost_error(self):
        """The error to raise once the connection is lost for good, in the calling thread."""
        current = threading.current_thread()
        if isinstance(current, GPIOThread):
            # gpiozero's background threads end quietly on it (see RemoteIOPin._factory_closed):
            # the main thread is told.
            return _ConnectionLostInThread(self._fatal)
        interrupt.delivered(self._fatal)    # the main thread gets it here: not from the signal too
        return RemoteIOConnectionError(self._fatal)

    def _connection_lost(self, reason):
        # On the thread that noticed (the socket's reader, the heartbeat, a sender).
        if self._closing:
            return
        where = f'{self._host}:{self._port}'
        if not self._reconnect:
            self._give_up(
                f'lost the connection to the remoteio server at {where} ({reason}); not '
                f'reconnecting ({self._reconnect_source}). With REMOTEIO_RECONNECT=1 (the '
                f'default) the client waits for the server to come back, up to '
                f'REMOTEIO_RECONNECT_TIMEOUT seconds, and restores its pins')
            return
        with self._reconnect_lock:
            if self._reconnecting:
                self._lost_again = reason     # while restoring: the reconnect loop goes on
                return
            self._reconnecting = True
            self._lost_again = None
            self._online.clear()
        log.warning('lost the connection to the remoteio server at %s (%s); reconnecting, '
                    'for up to %g s (REMOTEIO_RECONNECT_TIMEOUT)', where, reason,
                    self._reconnect_timeout)
        threading.Thread(target=self._reconnect_loop, args=(monotonic(), reason),
                         name=f'remoteio-reconnect-{where}', daemon=True).start()

    def _give_up(self, message):
        """The connection is lost for good: tell every caller, and the main thread."""
        self._fatal = message
        if not self._closing:
            # The main thread first: if it is waiting in a call of ours, it gets the error
            # once, from the signal or from the call (interrupt.delivered), not both.
            if self._interrupt_main:
                interrupt.interrupt(RemoteIOConnectionError(message))
            else:
                log.error('%s', message)
        self._online.set()        # wakes the calls waiting for a reconnection: they raise
        if self._on_lost is not None and not self._closing:
            try:
                self._on_lost(message)
            except Exception:
                log.exception('the on_lost callback failed')

    def _reconnect_loop(self, lost_at, reason):
        where = f'{self._host}:{self._port}'
        delay = 0.1
        try:
            while not self._closing:
                remaining = lost_at + self._reconnect_timeout - monotonic()
                if remaining <= 0:
                    self._give_up(
                        f'lost the connection to the remoteio server at {where} ({reason}) '
                        f'and it did not come back within {self._reconnect_timeout:g} s. Set '
                        f'REMOTEIO_RECONNECT_TIMEOUT (seconds) to wait longer for it, or '
                        f'REMOTEIO_RECONNECT=0 to stop at once when the connection is lost')
                    return
                args = dict(self._connection_args)
                args['connect_timeout'] = min(args['connect_timeout'], max(remaining, 0.1))
                try:
                    connection = Connection(self._host, self._port, **args)
                except RemoteIOAuthError as exc:
                    self._give_up(f'lost the connection to the remoteio server at {where} '
                                  f'({reason}), and reconnecting failed: {exc}')
                    return
                except RemoteIOConnectionError:
                    self._stopped.wait(min(delay, max(0.0, lost_at + self._reconnect_timeout
                                                      - monotonic())))
                    delay = min(delay * 2, 1.0)
                    continue
                with self._reconnect_lock:
                    if self._closing:
                        connection.close(graceful=False)
                        return
                    old, self._connection = self._connection, connection
                    self._events.offset = connection.clock_offset
                    self._finalizer.detach()
                    self._finalizer = weakref.finalize(self, connection.close)
                    self._finalizer.atexit = False
                old.close(graceful=False)
                restored = [pin for pin in list(self.pins.values()) if pin._restore()]
                with self._reconnect_lock:
                    again, self._lost_again = self._lost_again, None
                    if again is None:
                        self._reconnecting = False
                        self._online.set()
                if again is not None:          # lost again while restoring: start over
                    lost_at, reason, delay = monotonic(), again, 0.1
                    log.warning('lost the connection to the remoteio server at %s again (%s); '
                                'reconnecting, for up to %g s', where, reason,
                                self._reconnect_timeout)
                    continue
                log.warning('reconnected to the remoteio server at %s after %.1f s; restored '
                            '%d pins: %s', where, monotonic() - lost_at, len(restored),
                            ', '.join(repr(pin) for pin in restored) or '-')
                return
        finally:
            with self._reconnect_lock:
                self._reconnecting = False
                self._online.set()

    def status(self, history=20):
        """The server's status (see ``remoteio status --json``) as a dict."""
        return self._live_connection().request('status', history=history)

    # The virtual Pi (a server on the mock backend) ----------------------------

    def set_part(self, name, value):
        """
        Set a simulated part of a mock server (``--mock-part``): e.g.
        ``factory.set_part('button4', 1)`` presses the button on GPIO4,
        ``factory.set_part('hcsr04_23', 0.42)`` puts an object 42 cm from the
        distance sensor. Returns once the wires it touches carry the change
        (a read after it sees it). A real backend refuses (``RemoteIOError``).
        """
        self._live_connection().request('part', name=name, value=value)

    def drive(self, pin, state):
        """
        Drive a mock server's input from outside, as a signal wired to it
        would: *state* 1 or 0, or None to let go (``remoteio drive``). *pin*
        is a GPIO number or any name gpiozero knows (``'GPIO4'``, ``'BOARD7'``).
        A real backend refuses (``RemoteIOError``).
        """
        gpio = pin
        if not isinstance(pin, int):
            infos = [info for _header, info in self.board_info.find_pin(pin)
                     if 'gpio' in info.interfaces]
            if not infos:
                raise PinInvalidPin(f'{pin!r} is not a GPIO of the remote board')
            gpio = int(infos[0].name[4:])
        self._live_connection().request('drive', pin=gpio,
                                        state=None if state is None else int(bool(state)))

    # PiFactory's contract ----------------------------------------------------

    def _get_revision(self):
        return self._revision

    @staticmethod
    def ticks():
        return clock()       # the clock edge times are converted to (see connection.clock)

    @staticmethod
    def ticks_diff(later, earlier):
        return later - earlier

    def _get_spi_class(self, shared, hardware):
        # The server's SPI (remoteio_factory.spi): one request per transfer; the server's
        # backend picks hardware or software SPI on the Pi.
        return RemoteIOSPIShared if shared else RemoteIOSPI

    # Ownership on the server -------------------------------------------------

    def reserve_pins(self, requester, *names):
        super().reserve_pins(requester, *names)
        try:
            for name in names:
                for _header, info in self.board_info.find_pin(name):
                    if 'gpio' in info.interfaces:
                        self.pin(info.name)._claim()
        except GPIOPinInUse as exc:
            super().release_pins(requester, *names)
            raise GPIOPinInUse(f'{exc} (another client of the remoteio server)') from None
        except BaseException:
            super().release_pins(requester, *names)
            raise

    def release_pins(self, reserver, *names):
        super().release_pins(reserver, *names)
        with self._res_lock:
            free = [
                info for name in names
                for header, info in self.board_info.find_pin(name)
                if not self._reservations.get(info)
            ]
        for info in free:
            pin = self.pins.get(info)
            if pin is not None:
                pin._release()

    def pin(self, name):
        # A pin asked for again (by a new device, or by code that opens pins with
        # factory.pin() itself) is usable again, even if it was closed: gpiozero
        # reuses the factory's pin objects.
        pin = super().pin(name)
        pin._reopen()
        return pin

    def _pin(self, gpio):
        for pin in list(self.pins.values()):
            if pin._gpio == gpio:
                return pin
        return None

    def _pin_failed(self, gpio, exc):
        # On the reader thread: an earlier posted request (a write) failed.
        pin = self._pin(gpio)
        if pin is None or not pin._claimed or self._closing:
            # a write that crossed the pin's release (e.g. from a thread still running)
            log.debug('remoteio server %s:%s rejected a request on released GPIO%s: %s',
                      self._host, self._port, gpio, exc)
            return
        log.warning('remoteio server %s:%s rejected an earlier request on %r: %s',
                    self._host, self._port, pin, exc)
        pin._failed(exc)

    def _deliver_event(self, gpio, ticks, state):
        # On the dispatcher thread (see events.py), so handlers may talk to the server.
        pin = self._pin(gpio)
        if pin is not None and pin._claimed:
            pin._last_event_state = state
            pin._call_when_changed(ticks, state)

    def _pushed(self, message):
        # Runs on the connection's reader thread: only bookkeeping here.
        if message.get('push') == 'event':
            self._events.put(message.get('pin'), message.get('t'), message.get('state'))
        elif message.get('push') == 'pin_lost':
            pin = self._pin(message.get('pin'))
            if pin is not None:
                pin._lost(exception_for(message.get('error') or {}))


_open_factories = weakref.WeakSet()


def _stop_gpiozero_threads(timeout):
    """
    Stop gpiozero's background threads (blink, pulse, source, GPIOQueue, hold)
    and wait for them, at most *timeout* seconds in all: what gpiozero's own
    exit hook does before it closes its factory.
    """
    threads = list(getattr(gpiozero.threads, '_THREADS', ()))
    for thread in threads:
        thread.stopping.set()
    deadline = monotonic() + timeout
    for thread in threads:
        if thread is not threading.current_thread():
            # Thread.join, not GPIOThread.join: that one raises if the thread lives on.
            threading.Thread.join(thread, max(0.0, deadline - monotonic()))


@atexit.register
def _close_at_exit():
    """
    At interpreter exit, close every factory still open (releasing its pins on
    the server, one wait for all). This hook is registered after gpiozero's own
    (this module imports gpiozero first), so it runs before it: like gpiozero's
    hook, it first stops gpiozero's background threads, so that none of them
    reads a pin of a factory that is closing (a LineSensor's GPIOQueue thread
    would otherwise die with a traceback). gpiozero's hook then finds the
    devices' pins closed already.
    """
    factories = [f for f in list(_open_factories) if not f._closing and not f._connection.closed]
    if not factories:
        return
    _stop_gpiozero_threads(EXIT_THREADS_TIMEOUT)
    for factory in factories:
        try:
            factory.close()
        except Exception as exc:        # never a traceback at exit
            log.debug('closing %r at exit: %s', factory, exc)

