"""
The server deployed on a Raspberry Pi the way the README deploys it, on an
emulated Pi 5 (the real lgpio library over the emulated GPIO chip):

- ``remoteio-server setup --root`` writes the user, token, environment file
  and systemd unit; the server is then started exactly as that unit starts
  it (its ``ExecStart``, as its ``User=``/``Group=``/``SupplementaryGroups=``,
  in its ``WorkingDirectory=`` with its ``Environment=`` and
  ``EnvironmentFile=``, ``--backend auto``), and an unmodified gpiozero
  script drives a pin through it;
- the same from a read-only working directory with no ``LG_WD``;
- ``--backend auto`` on a Pi where no backend works refuses to start, with
  each backend's reason, instead of serving simulated pins.

systemd itself is not running here: what it would do with the unit's
settings is done by the test (no sandboxing beyond the user and directory).
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from conftest import READY, ServerProcess, scratch_root, start_script, wait_for

SBIN = os.environ.get('PATH', '') + ':/usr/local/sbin:/usr/sbin:/sbin'

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the server is Linux only'),
    pytest.mark.skipif(getattr(os, 'geteuid', lambda: -1)() != 0
                       or not shutil.which('useradd', path=SBIN),
                       reason='runs the server as another user, made by setup with useradd: '
                              'needs root and the passwd package'),
]


@pytest.fixture(scope='module')
def pi():
    from emulation.gpiochip import EmulatedPi, EmulationUnavailable
    try:
        board = EmulatedPi('d04170')
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    yield board
    board.close()


def _interpreter_for_others():
    """
    A Python that an unprivileged user can run, with this checkout and its
    environment's packages (gpiozero, lgpio) importable: a venv made in /tmp
    from an interpreter outside any user's home, like /opt/remoteio on a Pi.
    """
    candidates = [os.path.realpath(sys.executable), '/usr/bin/python3']
    site_packages = sysconfig.get_paths()['purelib']
    for base in candidates:
        if not os.path.exists(base) or any(
                not os.stat(p).st_mode & 0o001 for p in _parents(base)):
            continue
        venv = tempfile.mkdtemp(prefix='remoteio-opt-')
        os.chmod(venv, 0o755)
        result = subprocess.run([base, '-m', 'venv', '--without-pip', venv], capture_output=True)
        if result.returncode != 0:
            shutil.rmtree(venv)
            continue
        python = os.path.join(venv, 'bin', 'python')
        target = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                                capture_output=True, text=True).stdout.strip()
        with open(os.path.join(target, 'remoteio-checkout.pth'), 'w') as f:
            # the packages of the environment running the tests (this checkout, editable)
            f.write(f'import site; site.addsitedir({site_packages!r})\n')
        check = subprocess.run([python, '-c', 'import gpiozero, lgpio, remoteio_server'],
                               capture_output=True, text=True)
        if check.returncode == 0:
            return venv, python
        shutil.rmtree(venv)
    return None, None


def _parents(path):
    """*path*'s directories, each of which another user must be able to enter."""
    parts = []
    directory = os.path.dirname(path)
    while directory not in ('/', ''):
        parts.append(directory)
        directory = os.path.dirname(directory)
    return parts


@pytest.fixture(scope='module')
def installation():
    """``remoteio-server setup --root ROOT`` run from an installation others can execute."""
    venv, python = _interpreter_for_others()
    if python is None:
        pytest.skip('no Python here that an unprivileged user may run with this checkout')
    root = scratch_root('remoteio-root-')
    etc = os.path.join(root, 'etc')
    result = subprocess.run([python, '-m', 'remoteio_server', 'setup', '--root', root],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    token = next(line.split('=', 1)[1].strip() for line in result.stdout.splitlines()
                 if line.strip().startswith('REMOTEIO_TOKEN='))
    users = {f.split(':')[0]: f.split(':') for f in open(os.path.join(etc, 'passwd'))}
    groups = {f.split(':')[0]: f.split(':') for f in open(os.path.join(etc, 'group'))}
    yield {
        'root': root, 'python': python, 'token': token,
        'unit': os.path.join(etc, 'systemd', 'system', 'remoteio-server.service'),
        'uid': int(users['remoteio'][2]), 'gids': groups,
    }
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)


def service_settings(unit):
    """The [Service] section of *unit*: name → list of values."""
    settings, section = {}, None
    for line in open(unit):
        line = line.strip()
        if line.startswith('['):
            section = line
        elif section == '[Service]' and '=' in line and not line.startswith('#'):
            key, value = line.split('=', 1)
            settings.setdefault(key, []).append(value)
    return settings


def start_as_the_unit_does(installation, pi, runtime, **overrides):
    """Start the server with what systemd would give it from the unit; returns the ServerProcess."""
    root = installation['root']
    service = service_settings(installation['unit'])
    gid = {name: int(fields[2]) for name, fields in installation['gids'].items()}
    uid = installation['uid']
    group = gid[service['Group'][0]]
    supplementary = [gid[g] for value in service.get('SupplementaryGroups', []) for g in value.split()]

    def expand(text):
        return text.replace('%t', runtime)

    # RuntimeDirectory=: made by systemd, owned by the service's user
    directory = os.path.join(runtime, service['RuntimeDirectory'][0])
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, int(service.get('RuntimeDirectoryMode', ['0755'])[0], 8))
    os.chown(directory, uid, group)
    env = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
           'LANG': 'C.UTF-8', 'USER': 'remoteio', 'LOGNAME': 'remoteio',
           'RUNTIME_DIRECTORY': directory}
    for value in service.get('Environment', []):
        for assignment in shlex.split(expand(value)):
            key, _, val = assignment.partition('=')
            env[key] = val
    for value in service.get('EnvironmentFile', []):
        path = os.path.join(root, value.lstrip('-').lstrip('/'))
        for line in open(path):
            line = line.strip()
            if line and not line.startswith('#') and '=' in line:
                key, _, val = line.partition('=')
                # the files setup wrote live under ROOT here, not in /
                env[key] = os.path.join(root, val.lstrip('/')) if val.startswith('/etc/') else val
    # what an operator would put in /etc/default/remoteio-server to try it on a free port
    env.update(REMOTEIO_SERVER_HOST='127.0.0.1', REMOTEIO_SERVER_PORT='0')
    env.update(overrides.pop('env', {}))
    env = pi.env(env)                        # the "hardware": the emulated chip and device tree
    cwd = overrides.pop('cwd', expand(service['WorkingDirectory'][0]))

    def become_the_service_user():
        os.setgroups(supplementary)
        os.setgid(group)
        os.setuid(uid)

    server = ServerProcess(command=shlex.split(service['ExecStart'][0]), env=env, cwd=cwd,
                           preexec_fn=become_the_service_user, backend='auto')
    server.token = installation['token']
    return server


def process_credentials(pid):
    status = dict(line.split(':', 1) for line in open(f'/proc/{pid}/status'))
    return int(status['Uid'].split()[0]), os.readlink(f'/proc/{pid}/cwd')


DRIVE_A_PIN = """
    from gpiozero import LED, Button
    led = LED(17)
    led.on()
    button = Button(27)
    assert led.value == 1
    print('ready', flush=True)
    assert button.wait_for_press(10)
    print('pressed', flush=True)
    input()
"""


def drive_a_pin(server, pi, token):
    script = start_script(server, DRIVE_A_PIN, env=server.env(REMOTEIO_TOKEN=token))
    try:
        assert pi.level(17) == 1
        line = pi.line(17)
        assert line['used'] and line['direction'] == 'output'
        pi.drive(27, 0)
        assert script.stdout.readline().strip() == 'pressed'
    finally:
        script.stdin.close()
        script.wait(10)
        pi.drive(27, None)
    server.wait_free(17, 27)
    assert not pi.line(17)['used'] and pi.line(17)['direction'] == 'input'


def test_the_service_runs_as_its_unit_says_and_drives_lgpio_pins(installation, pi):
    runtime = tempfile.mkdtemp(prefix='remoteio-run-')
    os.chmod(runtime, 0o755)
    try:
        server = start_as_the_unit_does(installation, pi, runtime)
        try:
            assert server.backend == 'auto'
            uid, cwd = process_credentials(server.pid)
            assert uid == installation['uid'] and cwd == os.path.join(runtime, 'remoteio')
            drive_a_pin(server, pi, installation['token'])
        finally:
            assert server.stop() == 0
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_read_only_working_directory_without_lg_wd_still_drives_pins(installation, pi):
    runtime = tempfile.mkdtemp(prefix='remoteio-run-')
    os.chmod(runtime, 0o755)
    try:
        # as an older unit did: cwd "/", which the service user cannot write; no LG_WD
        server = start_as_the_unit_does(installation, pi, runtime, cwd='/',
                                        env={'LG_WD': '', 'RUNTIME_DIRECTORY': ''})
        try:
            assert process_credentials(server.pid)[1] == '/'
            drive_a_pin(server, pi, installation['token'])
        finally:
            assert server.stop() == 0
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def test_auto_on_a_pi_with_no_working_backend_refuses_to_start(tmp_path):
    from emulation.gpiochip import EmulatedPi, EmulationUnavailable
    try:
        # a Pi 5 whose GPIO chip is not where lgpio looks, and no pigpio daemon
        board = EmulatedPi('d04170', chip=7)
    except EmulationUnavailable as exc:
        pytest.skip(str(exc))
    try:
        env = board.env()
        env.update(PIGPIO_ADDR='127.0.0.1', PIGPIO_PORT='1', LG_WD=str(tmp_path))
        result = subprocess.run(
            [sys.executable, '-m', 'remoteio_server', '--host', '127.0.0.1', '--port', '0',
             '--backend', 'auto'], env=env, capture_output=True, text=True, timeout=60)
    finally:
        board.close()
    assert result.returncode != 0
    assert not READY.search(result.stdout.encode())
    message = result.stderr
    assert 'Raspberry Pi 5' in message
    for backend in ('lgpio', 'rpigpio', 'pigpio', 'native'):
        assert f'{backend}:' in message, message
    assert '--backend mock' in message
    assert "Can't connect to pigpio" not in result.stdout + message    # pigpio's banner


def test_auto_off_a_pi_falls_back_to_mock_with_a_warning(tmp_path):
    env = dict(os.environ, PIGPIO_ADDR='127.0.0.1', PIGPIO_PORT='1', LG_WD=str(tmp_path))
    server = ServerProcess(backend='auto', env=env)
    try:
        assert server.status()['backend'] == 'mock'
        wait_for(lambda: any('using the mock backend' in line for line in server.stderr_lines),
                 message='the warning')
    finally:
        server.stop()
