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
"""

import atexit
import logging
import os
import threading
import weakref

import gpiozero.threads
from gpiozero.exc import GPIOPinInUse
from gpiozero.mixins import SharedMixin
from gpiozero.pins.pi import PiFactory
from gpiozero.pins.spi import SPISoftware
from time import monotonic, sleep

from remoteio_factory import protocol, settings
from remoteio_factory.connection import (
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, Connection, clock)
from remoteio_factory.events import EventDispatcher
from remoteio_factory.exc import RemoteIOAuthError, RemoteIOConnectionError, exception_for
from remoteio_factory.pin import RemoteIOPin
from remoteio_factory.transport import client_context


log = logging.getLogger('remoteio_factory')

#: How long the exit hook waits for gpiozero's background threads to stop.
EXIT_THREADS_TIMEOUT = 2.0


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
        Reconnect by itself when the connection is lost (``REMOTEIO_RECONNECT=1``):
        the pins are claimed again and get back their function, state,
        frequency, pull, edges and event subscription; the gap is logged.
        Writes made during the gap are dropped but the last one is restored;
        reads wait (at most *timeout*) for the connection to come back.
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
                 token=None, tls=None, tls_ca=None, reconnect=None):
        super().__init__()
        if host is None:
            host = settings.env_host()
        self._host = host
        self._port = settings.env_port() if port is None else settings.port_number(port)
        self.pin_class = RemoteIOPin
        self._closing = False
        if reconnect is None:
            reconnect = os.environ.get('REMOTEIO_RECONNECT', '') in ('1', 'yes', 'true')
        self._reconnect = reconnect
        self._online = threading.Event()
        self._online.set()
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
        if self._closing or self._connection.closed:
            return
        self._closing = True     # from now on its pins drop writes and refuse reads
        self._reconnect = False
        pending = []
        for pin in list(self.pins.values()):
            release = pin._start_close()       # every release is sent before any wait
            if release is not None:
                pending.append(release)
        self.pins.clear()
        self._await_releases(pending)
        self._finalizer()
        self._events.close()
        self._online.set()       # nobody waits for a reconnection any more

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

    # Reconnecting ----------------------------------------------------------------

    @property
    def reconnecting(self):
        """True while the connection is lost and being re-established."""
        return not self._online.is_set()

    def _wait_online(self):
        """While reconnecting, wait (at most the request timeout) for the connection."""
        if not self._online.is_set():
            self._online.wait(self._connection.timeout)

    def _connection_lost(self, reason):
        # On the old connection's reader thread: start over on a thread of its own.
        if not self._reconnect or not self._online.is_set():
            return
        self._online.clear()
        threading.Thread(target=self._reconnect_loop, args=(monotonic(), reason),
                         name=f'remoteio-reconnect-{self._host}:{self._port}', daemon=True).start()

    def _reconnect_loop(self, lost_at, reason):
        delay = 0.2
        log.warning('reconnecting to the remoteio server at %s:%s (%s)',
                    self._host, self._port, reason)
        while self._reconnect:
            try:
                connection = Connection(self._host, self._port, **self._connection_args)
            except RemoteIOAuthError as exc:
                log.error('cannot reconnect to %s:%s: %s', self._host, self._port, exc)
                break
            except RemoteIOConnectionError:
                sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            old, self._connection = self._connection, connection
            self._events.offset = connection.clock_offset
            self._finalizer.detach()
            self._finalizer = weakref.finalize(self, connection.close)
            old.close(graceful=False)
            restored = [pin for pin in list(self.pins.values()) if pin._restore()]
            log.warning('reconnected to the remoteio server at %s:%s after %.1f s; restored %d '
                        'pins: %s', self._host, self._port, monotonic() - lost_at, len(restored),
                        ', '.join(repr(pin) for pin in restored) or '-')
            break
        self._online.set()

    def status(self, history=20):
        """The server's status (see ``remoteio status --json``) as a dict."""
        return self._connection.request('status', history=history)

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
        # Only software SPI: hardware SPI would need the Pi's spidev.
        return RemoteIOSoftwareSPIShared if shared else RemoteIOSoftwareSPI

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
        pin = self._pin(gpio)
        if pin is not None:
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


class RemoteIOSoftwareSPI(SPISoftware):
    """Software (bit-banged) SPI over remote pins."""


class RemoteIOSoftwareSPIShared(SharedMixin, RemoteIOSoftwareSPI):
    @classmethod
    def _shared_key(cls, clock_pin, mosi_pin, miso_pin, select_pin, pin_factory):
        return (clock_pin, select_pin)
