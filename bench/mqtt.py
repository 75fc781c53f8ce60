"""
Phase ``mqtt``: commands through the MQTT bridge (``remoteio mqtt``) against
the same commands from a direct client, on our server, in the same run.

A Mosquitto broker (Debian's package) is started on 127.0.0.1 for the phase,
and the bridge with one switch (GPIO :data:`BRIDGE_GPIO`); the direct client
drives GPIO :data:`DIRECT_GPIO` through ``RemoteIOFactory``. Both are judged
by the same witness: an observer connection (``observe``) that reports each
transition with the server's time of the change, converted to our clock.

* **latency**: a command published (``ON``/``OFF``, QoS 1) → the pin's worker
  has set the level; against ``pin.state = …`` from the direct client → the
  same. One command at a time, each waited for; the median per repetition,
  repetitions interleaved (bridge, direct, bridge, …).
* **commands/s**: N commands published as fast as paho takes them → the last
  one applied, against N posted writes from the direct client; the server's
  ``writes`` counter of each pin must grow by exactly N (none lost).

The phase is skipped (an error row says why) where Mosquitto or paho-mqtt is
missing.
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from remoteio_factory import RemoteIOFactory
from remoteio_factory.observe import Observation

from bench import harness
from bench.figures import Figure, Target

BRIDGE_GPIO = 20
DIRECT_GPIO = 21
#: How long one command may take to show before the run gives up on it.
COMMAND_TIMEOUT = 5.0


def mosquitto_binary():
    """Debian's Mosquitto (in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which('mosquitto') or (
        '/usr/sbin/mosquitto' if os.access('/usr/sbin/mosquitto', os.X_OK) else None)


def free_port():
    """A TCP port free on the loopback now."""
    with socket.socket() as s:
        s.bind((harness.HOST, 0))
        return s.getsockname()[1]


def wait_port(port, process, timeout=20):
    """Return once something listens on *port*; RuntimeError if *process* ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f'exited with status {process.returncode}')
        try:
            socket.create_connection((harness.HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f'nothing listens on port {port} after {timeout} s')


class Rig:
    """Broker, bridge, a paho client that sends the commands, the witness and the direct client."""

    def __init__(self, server_port):
        import paho.mqtt.client as mqtt
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError('Mosquitto is not installed (Debian: apt install mosquitto)')
        self.directory = tempfile.mkdtemp(prefix='remoteio-bench-mqtt-')
        self.processes = []
        self.clients = []
        port = free_port()
        conf = os.path.join(self.directory, 'mosquitto.conf')
        with open(conf, 'w') as f:
            # (no limit on queued QoS 1 messages: the throughput figure sends a burst)
            f.write(f'listener {port} {harness.HOST}\nallow_anonymous true\n'
                    f'persistence false\nmax_queued_messages 0\nset_tcp_nodelay true\n'
                    f'log_dest none\n')
        broker = subprocess.Popen([binary, '-c', conf], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        self.processes.append(broker)
        wait_port(port, broker)
        config = os.path.join(self.directory, 'bridge.toml')
        with open(config, 'w') as f:
            f.write(f'[broker]\nhost = "{harness.HOST}"\nport = {port}\n'
                    f'client_id = "bench-bridge"\n[topics]\ndiscovery = ""\n'
                    f'[servers.bench]\nhost = "{harness.HOST}"\nport = {server_port}\n'
                    f'[[pins]]\ngpio = {BRIDGE_GPIO}\nrole = "switch"\n')
        self.bridge_log = open(os.path.join(self.directory, 'bridge.log'), 'wb')
        self.processes.append(subprocess.Popen(
            [sys.executable, '-m', 'remoteio_factory.cli', 'mqtt', config,
             '--log-level', 'warning'], stdout=subprocess.DEVNULL, stderr=self.bridge_log))
        self.topic = f'remoteio/bench/{BRIDGE_GPIO}/set'
        self.online = set()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id='bench-commands')
        self.mqtt.on_message = lambda c, u, m: (
            self.online.add(m.topic) if m.payload == b'online' else self.online.discard(m.topic))
        self.mqtt.connect(harness.HOST, port)
        self.mqtt.subscribe('remoteio/+/availability', qos=1)
        self.mqtt.loop_start()
        deadline = time.monotonic() + 30
        while len(self.online) < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f'the bridge did not come online: {self._bridge_said()}')
            time.sleep(0.01)
        self.witness = Observation(harness.HOST, server_port, history=0)
        self.clients.append(self.witness)
        self.offset = self.witness.connection.clock_offset
        self.direct = RemoteIOFactory(harness.HOST, server_port)
        self.clients.append(self.direct)
        self.direct_pin = self.direct.pin(DIRECT_GPIO)
        self.direct_pin.function = 'output'
        self.server_port = server_port

    def _bridge_said(self):
        self.bridge_log.flush()
        with open(self.bridge_log.name, 'rb') as f:
            return f.read()[-2000:].decode(errors='replace')

    def send(self, gpio, level):
        if gpio == BRIDGE_GPIO:
            self.mqtt.publish(self.topic, 'ON' if level else 'OFF', qos=1)
        else:
            self.direct_pin.state = level

    def applied(self, gpio, level):
        """Our clock's time when the server set *gpio* to *level* (waits for it)."""
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            for change in self.witness.wait_changes(timeout=0.2):
                if change.get('pin') == gpio and change.get('state') == level:
                    return change['t'] - self.offset
            if time.monotonic() > deadline:
                raise RuntimeError(f'GPIO{gpio} did not go to {level} within {COMMAND_TIMEOUT} s: '
                                   f'{self._bridge_said()}')

    def latency_us(self, gpio, count, level):
        samples = []
        for _ in range(count):
            level ^= 1
            self.witness.wait_changes(timeout=0)          # (nothing older counts)
            sent = time.monotonic()
            self.send(gpio, level)
            samples.append((self.applied(gpio, level) - sent) * 1e6)
        return statistics.median(samples), level

    def writes(self, gpio):
        from remoteio_factory import server_status
        for pin in server_status(harness.HOST, self.server_port, history=0)['pins']:
            if pin['gpio'] == gpio:
                return pin.get('writes') or 0
        return 0

    def burst(self, gpio, count, level):
        """Commands per second for *count* commands sent back to back; (rate, lost, level)."""
        before = self.writes(gpio)
        self.witness.wait_changes(timeout=0)
        sent = time.monotonic()
        for _ in range(count):
            level ^= 1
            self.send(gpio, level)
        done, applied = self.applied_all(gpio, level, before + count, count)
        return count / (done - sent), count - (applied - before), level

    def applied_all(self, gpio, level, target, count):
        """
        (our clock's time of the last transition, the writes counter) once the server's
        writes counter of *gpio* has reached *target* and the witness shows the last level;
        at the deadline, whatever has been applied by then.
        """
        deadline = time.monotonic() + COMMAND_TIMEOUT + count / 500
        last = None
        applied = self.writes(gpio)
        while time.monotonic() < deadline:
            for change in self.witness.wait_changes(timeout=0.05):
                if change.get('pin') == gpio and 't' in change and 'state' in change:
                    last = change['t'] - self.offset
            if applied < target:
                applied = self.writes(gpio)
            elif last is not None and self.witness_settled(gpio, level):
                for change in self.witness.wait_changes(timeout=0):     # (any still here)
                    if change.get('pin') == gpio and 't' in change and 'state' in change:
                        last = change['t'] - self.offset
                return last, applied
        # Some never came: counted as lost (the figure's target is 0), timed to the deadline.
        return time.monotonic(), self.writes(gpio)

    def witness_settled(self, gpio, level):
        for pin in self.witness.status()['pins']:
            if pin['gpio'] == gpio:
                return pin.get('state') == level
        return False

    def close(self):
        for client in self.clients:
            try:
                client.close()
            except Exception:
                pass
        self.mqtt.loop_stop()
        self.mqtt.disconnect()
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.bridge_log.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def measure_mqtt(server, plan):
    """The phase: (figures, details)."""
    quick = plan.name == 'quick'
    repetitions, count, burst = (3, 30, 300) if quick else (5, 60, 1000)
    rig = Rig(server.port)
    latency = {'bridge': [], 'direct': []}
    rates = {'bridge': [], 'direct': []}
    lost = {'bridge': 0, 'direct': 0}
    levels = {BRIDGE_GPIO: 0, DIRECT_GPIO: 0}
    try:
        _, levels[BRIDGE_GPIO] = rig.latency_us(BRIDGE_GPIO, 5, 0)   # warm-up
        for _ in range(repetitions):
            for name, gpio in (('bridge', BRIDGE_GPIO), ('direct', DIRECT_GPIO)):
                value, levels[gpio] = rig.latency_us(gpio, count, levels[gpio])
                latency[name].append(value)
        for _ in range(repetitions):
            for name, gpio in (('bridge', BRIDGE_GPIO), ('direct', DIRECT_GPIO)):
                rate, missing, levels[gpio] = rig.burst(gpio, burst, levels[gpio])
                rates[name].append(rate)
                lost[name] += missing
    finally:
        rig.close()

    def spread(values):
        return statistics.median(values), min(values), max(values)
    rows = []
    for key, name, unit, values in (
            ('mqtt_latency_us', 'MQTT command → pin set, median', 'µs', latency),
            ('mqtt_commands_per_s', f'MQTT commands/s, bursts of {burst}', '/s', rates)):
        value, low, high = spread(values['bridge'])
        base, base_low, base_high = spread(values['direct'])
        rows.append(Figure(key, name, value, unit, baseline=base,
                           baseline_name='direct client (RemoteIOFactory)', low=low, high=high,
                           baseline_low=base_low, baseline_high=base_high,
                           repeats=repetitions))
    rows.append(Figure('mqtt_lost', 'MQTT commands lost (bridge and direct)',
                       lost['bridge'] + lost['direct'], 'count', target=Target(0)))
    return rows, {'latency_us': latency, 'commands_per_s': rates, 'lost': lost,
                  'commands_per_latency_repetition': count, 'burst': burst,
                  'repetitions': repetitions}
