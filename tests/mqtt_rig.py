"""
What the MQTT bridge's tests run: a real Mosquitto broker on loopback (Debian's
package), a paho-mqtt client that records every message, and the bridge
itself (``remoteio mqtt CONFIG``) as a subprocess.
"""

import getpass
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from bench.mqtt import free_port, mosquitto_binary, wait_port
from conftest import stop_process


class Broker:
    """A Mosquitto on 127.0.0.1; with *tls* (a dict of PEM paths) and *users* ({name: password})."""

    def __init__(self, directory, port=None, tls=None, users=None):
        binary = mosquitto_binary()
        if binary is None:
            pytest.skip('Mosquitto is not installed (.ci/run installs Debian\'s mosquitto package)')
        self.directory = directory
        self.port = port or free_port()
        self.tls = tls
        # (user: as root, Mosquitto would switch to its own user, who cannot read our files)
        lines = [f'listener {self.port} 127.0.0.1', 'persistence false',
                 f'user {getpass.getuser()}', 'log_dest stderr', 'log_type error',
                 'log_type warning']
        if users:
            passwords = os.path.join(directory, f'passwords-{self.port}')
            open(passwords, 'w').close()
            for name, password in users.items():
                subprocess.run(['mosquitto_passwd', '-b', passwords, name, password], check=True,
                               capture_output=True)
            lines += ['allow_anonymous false', f'password_file {passwords}']
        else:
            lines.append('allow_anonymous true')
        if tls:
            lines += [f'cafile {tls["ca"]}', f'certfile {tls["cert"]}', f'keyfile {tls["key"]}']
        self.conf = os.path.join(directory, f'mosquitto-{self.port}.conf')
        with open(self.conf, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        self.start()

    def start(self):
        self.process = subprocess.Popen([mosquitto_binary(), '-c', self.conf],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_port(self.port, self.process)
        except RuntimeError as exc:
            raise RuntimeError(f'Mosquitto did not start ({exc}): '
                               f'{self.process.stderr.read().decode(errors="replace")}') from None

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stderr.close()


class Listener:
    """A paho-mqtt client subscribed to everything; records (payload, retain) per topic."""

    def __init__(self, broker, username=None, password=None, ca=None):
        import paho.mqtt.client as mqtt
        self.messages = {}
        self.counts = {}
        self._changed = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f'test-listener-{os.getpid()}-{id(self)}')
        if username:
            self.client.username_pw_set(username, password)
        if ca:
            self.client.tls_set(ca_certs=ca)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe('#', qos=1)
        self.client.on_message = self._message
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect('127.0.0.1', broker.port)
        self.client.loop_start()

    def _message(self, client, userdata, message):
        with self._changed:
            self.messages.setdefault(message.topic, []).append(
                (message.payload.decode(errors='replace'), bool(message.retain)))
            self.counts[message.topic] = self.counts.get(message.topic, 0) + 1
            self._changed.notify_all()

    def last(self, topic):
        with self._changed:
            entries = self.messages.get(topic)
            return entries[-1][0] if entries else None

    def wait(self, topic, payload=None, timeout=15, since=0, where=None):
        """The last payload of *topic* once it is *payload* (or any, or where(payload) holds),
        counting only messages after the first *since*."""
        def ok():
            entries = self.messages.get(topic, [])[since:]
            if not entries:
                return False
            last = entries[-1][0]
            if where is not None:
                return where(last)
            return payload is None or last == payload
        with self._changed:
            if not self._changed.wait_for(ok, timeout):
                raise AssertionError(f'{topic}: waited {timeout} s for {payload!r}, got '
                                     f'{self.messages.get(topic, [])[-5:]}')
            return self.messages[topic][-1][0]

    def json(self, topic, timeout=15):
        return json.loads(self.wait(topic, timeout=timeout))

    def count(self, topic):
        with self._changed:
            return len(self.messages.get(topic, []))

    def publish(self, topic, payload, retain=False):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


class BridgeProcess:
    """``remoteio mqtt CONFIG`` as a subprocess, with its log kept."""

    def __init__(self, config_text, directory):
        self.config = os.path.join(directory, f'bridge-{time.monotonic_ns()}.toml')
        with open(self.config, 'w') as f:
            f.write(config_text)
        self.log = []
        self.process = subprocess.Popen(
            [sys.executable, '-m', 'remoteio_factory.cli', 'mqtt', self.config,
             '--log-level', 'info'],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.process.stderr:
            self.log.append(line.decode(errors='replace'))

    def text(self):
        return ''.join(self.log)

    def stop(self, sig=signal.SIGTERM, timeout=20):
        return stop_process(self.process, sig, timeout)


def scratch():
    return tempfile.mkdtemp(prefix='remoteio-mqtt-')
