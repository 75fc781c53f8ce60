"""
The MQTT bridge: one broker, one or more remoteio servers, and the pins the
configuration names, each with its role.

Flow: broker ⇄ **bridge** (broker link, one server link per server) ⇄
remoteio servers (as an ordinary client: :class:`~remoteio_factory.RemoteIOFactory`
and gpiozero devices for the pins it drives, an
:class:`~remoteio_factory.observe.Observation` for the pins it only watches).

Threads. paho-mqtt's network thread takes the broker's messages and hands
each command to its server link's queue at once (it never waits for a
server). Each server link has one thread that connects to its server, claims
its pins, carries out the commands in the order they came, and, when the
server goes away, says so (``offline``), retries, and on its return claims
the pins again and restores what they were last told to be (switches and
lights; impulses end off; inputs and observed pins are read afresh). A second
thread per link publishes the changes of the pins it observes.

What each role does on the server:

* switch: ``OutputDevice``; ``ON``/``OFF``.
* light: ``PWMOutputDevice``; brightness is the duty cycle; the effects
  ``pulse`` and ``blink`` are timed tasks on the server (they go on, at the
  same rate, whatever the network or the bridge does), ended by the next
  command.
* impulse: ``OutputDevice`` held off; each ``PRESS`` runs ``on(time_ms)`` on
  the server; the state topic says ``ON`` until the server reports its end.
* input: ``DigitalInputDevice`` with the pull and bounce configured; its
  edges are pushed by the server and published as they come.
* observed: not claimed; the server's observer stream (``observe``) gives its
  level and who drives it.

If the bridge dies, the broker publishes its will (``offline``) and each
server soft-closes the pins it held (the bridge's connections are gone).
"""

import json
import logging
import queue
import threading
import time

from remoteio_factory.mqtt import topics as t
from remoteio_factory.mqtt.topics import OFF, OFFLINE, ON, ONLINE, PRESS, Topics

log = logging.getLogger('remoteio_factory.mqtt')

#: Seconds between attempts to reach a server that is away (doubling up to the second).
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
#: How long the bridge waits for a server's answers before it counts the server as away.
SERVER_TIMEOUT = 5.0
#: A press older than this when its server can take it (it was being reached) is dropped.
IMPULSE_MAX_AGE = 1.0
#: What a link's queue may hold besides commands: its server connection is lost (with the
#: number of the connection), publish every state again, stop.
_LOST = object()
_REPUBLISH = object()
_STOP = object()
#: Messages paho keeps for a broker that is away (the states are published again anyway).
MAX_QUEUED = 1000
#: Commands that may wait for one server; more are dropped (a flood must not grow memory).
MAX_PENDING = 10000


class Bridge:
    """The whole bridge; :meth:`run` until :meth:`stop`."""

    def __init__(self, config, client=None):
        self.config = config
        self.topics = Topics(config)
        self.stopping = threading.Event()
        self.mqtt = client if client is not None else _mqtt_client(config.broker)
        self.mqtt.will_set(self.topics.bridge_availability, OFFLINE, qos=1, retain=True)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message
        self.links = {name: ServerLink(self, server,
                                       [p for p in config.pins if p.server == name])
                      for name, server in config.servers.items()}
        self._pins = {(p.server, p.gpio): p for p in config.pins}
        self.broker_connected = threading.Event()

    # Running ---------------------------------------------------------------------------

    def run(self):
        """Connect everything, serve until :meth:`stop`, then let go of everything."""
        broker = self.config.broker
        log.info('connecting to the MQTT broker at %s:%d%s', broker.host, broker.port,
                 ' (TLS)' if broker.tls else '')
        self.mqtt.connect_async(broker.host, broker.port, keepalive=broker.keepalive)
        self.mqtt.loop_start()
        for link in self.links.values():
            link.start()
        try:
            self.stopping.wait()
        finally:
            self._shut_down()

    def stop(self):
        self.stopping.set()

    def _shut_down(self):
        for link in self.links.values():
            link.stop()
        for link in self.links.values():
            link.join(SERVER_TIMEOUT + 2)
        # Said in words, not left to the will: a bridge stopped on purpose is offline too.
        if self.broker_connected.is_set():
            info = self.mqtt.publish(self.topics.bridge_availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError):
                pass
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        log.info('stopped')

    # The broker --------------------------------------------------------------------------

    def publish(self, topic, payload, retain=False):
        """Publish (QoS 1); while the broker is away paho keeps it for the reconnection."""
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (0, 4):      # (4: not connected; kept, or published again later)
            log.debug('%s: not published (paho says %s)', topic, info.rc)

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if getattr(reason_code, 'is_failure', False):
            log.error('the MQTT broker refused the connection: %s', reason_code)
            return
        log.info('connected to the MQTT broker')
        subscriptions = [(self.topics.set_filter(), 1)]
        if self.topics.ha_status:
            subscriptions.append((self.topics.ha_status, 1))
        client.subscribe(subscriptions)
        self.publish(self.topics.bridge_availability, ONLINE, retain=True)
        self._everything_again()
        self.broker_connected.set()

    def _everything_again(self):
        """Discovery, availability and every state (the broker or Home Assistant restarted)."""
        self.announce()
        for link in self.links.values():
            link.publish_availability()
            link.republish()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None):
        self.broker_connected.clear()
        if not self.stopping.is_set():
            log.warning('lost the MQTT broker (%s); reconnecting', reason_code)

    def announce(self, server=None):
        """Send every pin's discovery config (of *server*'s pins only, if given; retained)."""
        for pin in self.config.pins:
            if server is not None and pin.server != server:
                continue
            topic = self.topics.discovery(pin)
            if topic is not None:
                link = self.links[pin.server]
                payload = t.discovery_config(self.topics, pin, link.server, link.info)
                self.publish(topic, json.dumps(payload, separators=(',', ':')), retain=True)

    def _on_message(self, client, userdata, message):
        topic = message.topic
        if topic == self.topics.ha_status:
            if message.payload == b'online':      # Home Assistant (re)started: its birth
                self._everything_again()
            return
        if message.retain:
            # A command kept by the broker from some earlier time is not a command now.
            log.warning('ignored a retained command on %s (publish commands without retain)',
                        topic)
            return
        where = self.topics.parse_set(topic)
        pin = self._pins.get(where) if where else None
        if pin is None:
            log.warning('a command for no configured pin: %s', topic)
            return
        try:
            payload = message.payload.decode('utf-8')
        except UnicodeDecodeError:
            log.warning('%s: the command is not UTF-8 text', topic)
            return
        self.links[pin.server].command(pin, payload)


class ServerLink:
    """One remoteio server: its connection, its pins, its commands (see the module docstring)."""

    def __init__(self, bridge, server, pins):
        self.bridge = bridge
        self.server = server
        self.pins = pins
        self.topics = bridge.topics
        self.info = None                 # what the server said of itself (for discovery)
        self.online = None               # not yet known
        self._generation = 0             # connections made: a loss is news for its own only
        self._lost = 0                   # ... the generation that was lost
        self._queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f'remoteio-mqtt-{server.name}',
                                        daemon=True)
        self._watcher = None
        self.factory = None
        self.observation = None
        self.devices = {}                # gpio -> gpiozero device
        self.missing = {}                # gpio -> why the pin could not be claimed
        # What each output was last told (restored when the server comes back):
        # switch: bool; light: (on, brightness 0..255, effect or None)
        self.wanted = {}
        for pin in pins:
            if pin.role == 'switch':
                self.wanted[pin.gpio] = False
            elif pin.role == 'light':
                self.wanted[pin.gpio] = (False, 255, None)
        # The last state, and attributes (observed pins), published per pin; reading a pin
        # and publishing what it read happen under the lock, so an older value never lands last.
        self._published = {}
        self._attributes = {}
        self._publishing = threading.RLock()
        self._dropped = 0                # commands dropped: too many waiting
        self._impulses = set()           # gpios whose impulse runs
        self._impulse_lock = threading.Lock()

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._queue.put(_STOP)

    def join(self, timeout):
        self._thread.join(timeout)

    def command(self, pin, payload):
        """From the broker's thread: queue a command (never waits for the server)."""
        if self._queue.qsize() >= MAX_PENDING:
            self._dropped += 1
            if self._dropped in (1, 10, 100) or self._dropped % 1000 == 0:
                log.warning('server %s: %d commands wait already; dropped %d so far',
                            self.server.name, MAX_PENDING, self._dropped)
            return
        self._queue.put((pin, payload, time.monotonic()))

    def republish(self):
        """From any thread: publish every pin's state again (the link's thread does it)."""
        self._queue.put(_REPUBLISH)

    # The link's thread ---------------------------------------------------------------------

    def _run(self):
        delay = RETRY_FIRST
        while not self._stop.is_set():
            try:
                self._connect()
            except Exception as exc:
                self._disconnect()
                self._set_online(False)
                where = f'server {self.server.name} ({self.server.host}:{self.server.port})'
                if _is_loss(exc):
                    log.warning('%s is not reachable: %s; trying again in %g s', where,
                                _reason(exc), delay)
                elif _is_refusal(exc):          # a token refused, ...
                    log.error('%s: %s; trying again in %g s', where, exc, delay)
                else:
                    log.exception('%s: connecting failed; trying again in %g s', where, delay)
                if self._wait_offline(delay):
                    break
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            self._set_online(True)
            lost = self._serve()
            self._disconnect()
            if not lost:
                break
            self._set_online(False)
        self._disconnect()

    def _wait_offline(self, seconds):
        """Wait *seconds* while the server is away; True when told to stop."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return False
            if type(item) is tuple and item[0] is not _LOST:
                pin, payload, _ = item
                if pin.role in ('switch', 'light'):
                    self._remember(pin, payload)     # restored once the server is back
                    log.warning('%s: server %s is away; %r is set when it is back',
                                self.topics.set(pin), self.server.name, payload[:80])
                else:
                    log.warning('%s: server %s is away; %r dropped', self.topics.set(pin),
                                self.server.name, payload[:80])
        return True

    def _serve(self):
        """Carry out commands until the server is lost (True) or the bridge stops (False)."""
        while True:
            try:
                # (pins another client had are tried again now and then)
                item = self._queue.get(timeout=RETRY_MAX if self.missing else None)
            except queue.Empty:
                self._retry_missing()
                continue
            if self._stop.is_set():              # (before whatever still waits in the queue)
                return False
            if self._lost == self._generation:
                log.warning('lost the remoteio server %s; connecting again', self.server.name)
                return True
            if item is _REPUBLISH:
                self._republish_now()
                continue
            if item is _STOP or item[0] is _LOST:
                continue                         # (the flags above decide)
            pin, payload, received = item
            try:
                self._carry_out(pin, payload, received)
            except ValueError as exc:
                log.warning('%s: ignored the command %r: %s', self.topics.set(pin),
                            payload[:80], exc)
            except Exception as exc:
                # Lost connections come as a loss (the flag); anything else failed alone.
                self._remember(pin, payload)
                log.error('%s: the command %r failed: %s', self.topics.set(pin), payload[:80],
                          exc)

    # Connecting ------------------------------------------------------------------------------

    def _connect(self):
        from remoteio_factory import RemoteIOFactory
        from remoteio_factory.observe import Observation
        server = self.server
        options = dict(token=server.token, tls=server.tls or None, tls_ca=server.ca_file)
        self._generation += 1
        generation = self._generation

        def lost(reason=None):
            self._lost = generation
            self._queue.put((_LOST, generation, reason))   # (wakes the link's thread)
        self.factory = RemoteIOFactory(server.host, server.port, reconnect=False,
                                       interrupt_main=False, on_lost=lost,
                                       timeout=SERVER_TIMEOUT, connect_timeout=SERVER_TIMEOUT,
                                       **options)
        hello = self.factory.server_info
        self.info = {'model': getattr(self.factory.board_info, 'model', None),
                     'server_version': hello.get('version'), 'backend': hello.get('backend')}
        if any(p.role == 'observed' for p in self.pins):
            self.observation = Observation(server.host, server.port, history=0,
                                           connect_timeout=SERVER_TIMEOUT,
                                           timeout=SERVER_TIMEOUT, on_lost=lost,
                                           **_connection_options(options))
        self.missing = {}
        for pin in self.pins:
            self._try_open(pin)
        log.info('server %s (%s:%d): %d pins', server.name, server.host, server.port,
                 len(self.pins) - len(self.missing))
        if self.observation is not None:
            self._watcher = threading.Thread(target=self._watch, args=(self.observation,),
                                             name=f'remoteio-mqtt-watch-{server.name}',
                                             daemon=True)
            self._watcher.start()

    def _try_open(self, pin):
        """Claim *pin*; a pin refused (another client has it) is that pin's problem only."""
        from gpiozero.exc import GPIOZeroError
        from remoteio_factory.exc import RemoteIOConnectionError
        try:
            self._open(pin)
        except RemoteIOConnectionError:
            raise
        except GPIOZeroError as exc:
            first = pin.gpio not in self.missing
            self.missing[pin.gpio] = str(exc)
            if first:
                log.error('server %s: GPIO%d cannot be had: %s; trying again every %g s',
                          self.server.name, pin.gpio, exc, RETRY_MAX)
            self._pin_available(pin, False)
            return
        self.missing.pop(pin.gpio, None)
        self._pin_available(pin, True)

    def _open(self, pin):
        from gpiozero import DigitalInputDevice, OutputDevice, PWMOutputDevice
        factory = self.factory
        if pin.role == 'switch':
            self.devices[pin.gpio] = OutputDevice(
                pin.gpio, active_high=pin.active_high, initial_value=self.wanted[pin.gpio],
                pin_factory=factory)
        elif pin.role == 'impulse':
            self.devices[pin.gpio] = OutputDevice(
                pin.gpio, active_high=pin.active_high, initial_value=False, pin_factory=factory)
        elif pin.role == 'light':
            device = PWMOutputDevice(pin.gpio, active_high=pin.active_high,
                                     frequency=pin.frequency, pin_factory=factory)
            self.devices[pin.gpio] = device
            self._light(pin, *self.wanted[pin.gpio])
        elif pin.role == 'input':
            pull_up = {'up': True, 'down': False, 'floating': None}[pin.pull]
            device = DigitalInputDevice(
                pin.gpio, pull_up=pull_up,
                active_state=pin.active_high if pull_up is None else None,
                bounce_time=pin.bounce_ms / 1000 if pin.bounce_ms else None,
                pin_factory=factory)
            with self._publishing:
                device.when_activated = lambda: self._publish_state(pin, ON)
                device.when_deactivated = lambda: self._publish_state(pin, OFF)
                self._publish_state(pin, ON if device.is_active else OFF)
            self.devices[pin.gpio] = device

    def _disconnect(self):
        observation, self.observation = self.observation, None
        factory, self.factory = self.factory, None
        self.devices = {}
        for closing in (observation, factory):
            if closing is not None:
                try:
                    closing.close()     # the factory releases the pins: soft close
                except Exception as exc:
                    log.debug('closing: %s', exc)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(SERVER_TIMEOUT)

    def _set_online(self, online):
        if online != self.online or online:
            self.online = online
            if online:
                # Its device block now knows the board; its states: what was restored. Both
                # before "online", so that whoever sees it online sees them.
                self.bridge.announce(self.server.name)
                self._republish_now()
            self.bridge.publish(self.topics.availability(self.server.name),
                                ONLINE if online else OFFLINE, retain=True)

    def publish_availability(self):
        """From any thread: the server's and the pins' availability, as they are now."""
        if self.online is not None:
            self.bridge.publish(self.topics.availability(self.server.name),
                                ONLINE if self.online else OFFLINE, retain=True)
        for pin in self.pins:
            self.bridge.publish(self.topics.pin_availability(pin),
                                OFFLINE if pin.gpio in self.missing else ONLINE, retain=True)

    def _pin_available(self, pin, available):
        self.bridge.publish(self.topics.pin_availability(pin), ONLINE if available else OFFLINE,
                            retain=True)

    # Commands -------------------------------------------------------------------------------

    def _remember(self, pin, payload):
        """What a command would leave an output as, kept for when the server is back."""
        try:
            if pin.role == 'switch':
                self.wanted[pin.gpio] = _on_off(payload)
            elif pin.role == 'light':
                self.wanted[pin.gpio] = self._light_wanted(pin, t.parse_light_command(payload))
        except ValueError:
            pass

    def _carry_out(self, pin, payload, received):
        role = pin.role
        if pin.gpio in self.missing:
            self._remember(pin, payload)
            self._retry_missing()
            if pin.gpio in self.missing:
                raise ValueError(f'GPIO{pin.gpio} is not the bridge\'s: '
                                 f'{self.missing[pin.gpio]}')
        if role == 'switch':
            on = _on_off(payload)
            device = self.devices[pin.gpio]
            self.wanted[pin.gpio] = on
            device.on() if on else device.off()
            self._publish_state(pin, ON if on else OFF)
        elif role == 'light':
            wanted = self._light_wanted(pin, t.parse_light_command(payload))
            self.wanted[pin.gpio] = wanted
            self._light(pin, *wanted)
        elif role == 'impulse':
            if payload.strip().upper() != PRESS:
                raise ValueError(f'an impulse takes {PRESS}')
            if time.monotonic() - received > IMPULSE_MAX_AGE:
                raise ValueError(f'pressed {time.monotonic() - received:.1f} s ago, while '
                                 f'the server was being reached: too late to run now')
            self._impulse(pin)
        else:
            raise ValueError(f'a pin with role {role} takes no commands')

    def _retry_missing(self):
        """Try again to claim the pins another client had."""
        for pin in self.pins:
            if pin.gpio in self.missing and self.factory is not None:
                self._try_open(pin)

    def _light_wanted(self, pin, command):
        on = command['state'] == ON
        brightness = command.get('brightness', self.wanted[pin.gpio][1])
        if 'brightness' in command and command['brightness'] == 0:
            on = False
        if on and brightness == 0:
            brightness = 255
        effect = command.get('effect') if on else None
        return on, brightness, effect

    def _light(self, pin, on, brightness, effect):
        device = self.devices[pin.gpio]
        if on and effect == 'pulse':
            half = pin.fade_ms
            device.pin.run_task('pulse', fade_in_ms=half, fade_out_ms=half,
                                active_high=pin.active_high)
        elif on and effect == 'blink':
            device.pin.run_task('blink', on_ms=pin.blink_ms, off_ms=pin.blink_ms,
                                active_high=pin.active_high)
        else:
            device.value = brightness / 255 if on else 0
        self._publish_state(pin, t.light_state(on, brightness, effect))

    def _impulse(self, pin):
        """One impulse at a time per pin: a press while one runs is ignored (said in the log)."""
        with self._impulse_lock:
            if pin.gpio in self._impulses:
                log.info('%s: ignored a press: the impulse still runs', self.topics.set(pin))
                return
            self._impulses.add(pin.gpio)
        try:
            handle = self.devices[pin.gpio].pin.run_task('on', time_ms=pin.time_ms,
                                                         active_high=pin.active_high)
        except BaseException:
            with self._impulse_lock:
                self._impulses.discard(pin.gpio)
            raise
        self._publish_state(pin, ON)

        def ended():
            try:
                handle.wait()         # its end, as the server reports it (or the loss)
            except Exception:
                pass
            with self._impulse_lock:
                self._impulses.discard(pin.gpio)
                self._publish_state(pin, OFF)
        threading.Thread(target=ended, name=f'remoteio-mqtt-impulse-{pin.gpio}',
                         daemon=True).start()

    # States -------------------------------------------------------------------------------------

    def _publish_state(self, pin, payload):
        with self._publishing:
            self._published[pin.gpio] = payload
            self.bridge.publish(self.topics.state(pin), payload, retain=True)

    def _publish_attributes(self, pin, payload):
        with self._publishing:
            self._attributes[pin.gpio] = payload
            self.bridge.publish(self.topics.attributes(pin), payload, retain=True)

    def _republish_now(self):
        """Every pin's last state again (after the broker or the server came back)."""
        with self._publishing:
            for pin in self.pins:
                if pin.role == 'switch':
                    self._publish_state(pin, ON if self.wanted[pin.gpio] else OFF)
                elif pin.role == 'light':
                    self._publish_state(pin, t.light_state(*self.wanted[pin.gpio]))
                elif pin.role == 'impulse':
                    with self._impulse_lock:
                        self._publish_state(pin, ON if pin.gpio in self._impulses else OFF)
                elif pin.gpio in self._published:
                    self._publish_state(pin, self._published[pin.gpio])
                    if pin.gpio in self._attributes:
                        self._publish_attributes(pin, self._attributes[pin.gpio])
            self.publish_availability()

    def _watch(self, observation):
        """The observed pins' states, published as they change (the link's second thread)."""
        observed = {p.gpio: p for p in self.pins if p.role == 'observed'}
        changes = True                          # (the snapshot first)
        while self.observation is observation and not self._stop.is_set():
            if changes:
                with self._publishing:
                    entries = {e['gpio']: e for e in observation.status()['pins']}
                    for gpio, pin in observed.items():
                        self._observed(pin, entries.get(gpio))
            changes = any(c.get('pin') in observed
                          for c in observation.wait_changes(timeout=0.5))

    def _observed(self, pin, entry):
        """Publish what the server says of an observed pin (None: it has never driven it)."""
        if entry is None:
            payload, entry = t.UNKNOWN, {'status': 'unused'}
        else:
            payload = ON if entry.get('state') else OFF
        if self._published.get(pin.gpio) != payload:
            self._publish_state(pin, payload)
        attributes = {key: entry.get(key) for key in ('function', 'state', 'frequency', 'pull',
                                                       'owner', 'status')}
        payload = json.dumps(attributes, separators=(',', ':'))
        if self._attributes.get(pin.gpio) != payload:
            self._publish_attributes(pin, payload)


# Helpers -----------------------------------------------------------------------------------

def _mqtt_client(broker):
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=broker.client_id,
                         protocol=mqtt.MQTTv311)
    if broker.username is not None:
        client.username_pw_set(broker.username, broker.password)
    if broker.tls:
        client.tls_set(ca_certs=broker.ca_file)
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client.max_queued_messages_set(MAX_QUEUED)
    return client


def _connection_options(options):
    """The factory's TLS options as a Connection takes them."""
    from remoteio_factory.factory import tls_context
    return {'token': options['token'], 'tls': tls_context(options['tls'], options['tls_ca'])}


def _on_off(payload):
    text = payload.strip().upper()
    if text not in (ON, OFF):
        raise ValueError(f'a switch takes {ON} or {OFF}')
    return text == ON


def _is_loss(exc):
    from remoteio_factory.exc import RemoteIOConnectionError
    return isinstance(exc, (RemoteIOConnectionError, ConnectionError, TimeoutError))


def _is_refusal(exc):
    from gpiozero.exc import GPIOZeroError
    from remoteio_factory.exc import RemoteIOError
    return isinstance(exc, (GPIOZeroError, RemoteIOError))


def _reason(exc):
    return str(exc).split('. ')[0] or type(exc).__name__
