"""
Test fixtures: a real ``remoteio-server`` subprocess on 127.0.0.1 (a free
port picked by the server itself), real factories and real gpiozero devices,
and helpers to run unmodified gpiozero scripts in subprocesses.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from remoteio_factory import RemoteIOFactory, server_status

READY = re.compile(rb'remoteio-server ready on (\S+):(\d+) ')
START_TIMEOUT = 30


def wait_for(predicate, timeout=10.0, interval=0.01, message='condition'):
    """Poll *predicate* until it returns a true value or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {message}')
        time.sleep(interval)


class ServerProcess:
    """A remoteio-server subprocess and what tests need to talk to it."""

    def __init__(self, *args, backend='mock', env=None, command=None, **popen):
        """*command*: the whole command line, instead of this checkout's server
        with *args* (then *env* is the whole environment, too)."""
        self.args = args
        self.backend = backend
        self.token = None             # what status() authenticates with, if the server wants one
        if command is None:
            command = [sys.executable, '-m', 'remoteio_server', '--host', '127.0.0.1',
                       '--port', '0', '--backend', backend, '--log-level', 'warning', *args]
            env = _server_env(env)
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **popen)
        self.stderr_lines = []
        line = self._read_ready_line()
        self.ready_line = line.decode(errors="replace")
        match = READY.search(line)
        if not match:
            self.process.kill()
            raise RuntimeError(f'server did not start: {line!r} {self.process.stderr.read()!r}')
        self.host = '127.0.0.1'
        self.port = int(match.group(2))
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _read_ready_line(self):
        result = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        return result[0] if result else b''

    def _drain_stderr(self):
        for line in self.process.stderr:
            self.stderr_lines.append(line.decode(errors='replace'))

    @property
    def pid(self):
        return self.process.pid

    def env(self, **extra):
        """Environment for a client subprocess that selects this server."""
        env = dict(os.environ, GPIOZERO_PIN_FACTORY='remoteio', REMOTEIO_HOST=self.host,
                   REMOTEIO_PORT=str(self.port))
        env.update(extra)
        return env

    def factory(self, **kwargs):
        return RemoteIOFactory(host=self.host, port=self.port, **kwargs)

    def status(self, history=1000):
        return server_status(self.host, self.port, history=history, token=self.token)

    def pin(self, gpio, history=1000):
        """The status entry of *gpio*, or None if the server never drove it."""
        for pin in self.status(history)['pins']:
            if pin['gpio'] == gpio:
                return pin
        return None

    def wait_free(self, *gpios, timeout=10.0):
        """Wait until every GPIO in *gpios* has been released; return their entries."""
        def all_free():
            status = self.status()
            pins = {p['gpio']: p for p in status['pins']}
            # No client holds them (a release posted just now may not have been read
            # yet: then its client still lists the pin) and their workers have ended.
            held = {g for client in status['clients'] for g in client['pins']}
            if all(g in pins and pins[g]['status'] == 'free' and g not in held for g in gpios):
                return pins
            return None
        pins = wait_for(all_free, timeout, message=f'GPIOs {gpios} to be free')
        return [pins[g] for g in gpios]

    def alive(self):
        return self.process.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=15):
        stop_process(self.process, sig, timeout)
        self.process.stdout.close()
        return self.process.returncode


def stop_process(process, sig=signal.SIGTERM, timeout=15):
    """Send *sig* to *process* (if it runs), wait, kill it after *timeout*; its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _server_env(base=None):
    env = dict(os.environ if base is None else base)
    # The server must never take its backend from the client's variable.
    env['GPIOZERO_PIN_FACTORY'] = 'remoteio'
    return env


@pytest.fixture(scope='module')
def server():
    """A server shared by the tests of one module (mock backend, Pi 3B)."""
    proc = ServerProcess()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_server():
    """A server of the test's own, for tests that break or stop it."""
    servers = []

    def start(*args):
        proc = ServerProcess(*args)
        servers.append(proc)
        return proc
    yield start
    for proc in servers:
        proc.stop()


@pytest.fixture
def factory(server):
    f = server.factory()
    yield f
    f.close()


def run_script(server, code, timeout=30, check=True, env=None):
    """Run *code* (dedented) in a fresh interpreter with GPIOZERO_PIN_FACTORY=remoteio."""
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)], env=env or server.env(),
        capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f'script failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
    return result


def start_script(server, code, env=None):
    """Start *code* in a subprocess (stdin, stdout piped); return it once it has printed 'ready'."""
    process = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(code)], env=env or server.env(),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = []
    reader = threading.Thread(target=lambda: line.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(30)
    if not line or line[0].strip() != 'ready':
        process.kill()
        raise AssertionError(f'script did not get ready: {line} {process.stderr.read()}')
    return process


def states(pin_entry):
    """The sequence of state values in a pin's history."""
    return [e['state'] for e in pin_entry['history'] if 'state' in e]


def transitions(pin_entry, key='state'):
    """(t, value) of every change of *key* in a pin's history."""
    return [(e['t'], e[key]) for e in pin_entry['history'] if key in e]


def scratch_root(prefix):
    """
    A minimal target system for ``remoteio-server setup --root``: etc/passwd,
    group, shadow and gshadow with root only. Made with mkdtemp in the temporary
    directory (0755), not pytest's tmp_path, whose parent is 0700: tests read
    files in it as other uids. The caller removes it.
    """
    import tempfile
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    etc = os.path.join(path, 'etc')
    os.mkdir(etc, 0o755)
    for name, text, mode in (('passwd', 'root:x:0:0:root:/root:/bin/bash\n', 0o644),
                             ('group', 'root:x:0:\n', 0o644),
                             ('shadow', 'root:*:19000:0:99999:7:::\n', 0o640),
                             ('gshadow', 'root:*::\n', 0o640)):
        with open(os.path.join(etc, name), 'w') as f:
            f.write(text)
        os.chmod(os.path.join(etc, name), mode)
    return path
