"""
``remoteio-server setup`` (remoteio_server.setup) against a scratch ``--root``:
the user and groups made by the real useradd/groupadd (``--prefix``), every file
with its owner and mode, the token shown once, the unit (checked with
``systemd-analyze verify``), a second run that changes nothing, ``--new-token``,
and whether the service's credentials (as systemd sets them from User=, Group=,
SupplementaryGroups=) can read the token while another uid cannot.
"""

import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest

from conftest import scratch_root
from remoteio_server import cli
from remoteio_server import setup as remoteio_setup

SBIN = os.environ.get('PATH', '') + ':/usr/local/sbin:/usr/sbin:/sbin'
TOKEN_LINE = re.compile(r'^\s*REMOTEIO_TOKEN=(\S+)\s*$', re.M)

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'),
                                reason='the server side (and setup) is Linux only')

needs_root = pytest.mark.skipif(
    getattr(os, 'geteuid', lambda: -1)() != 0 or not shutil.which('useradd', path=SBIN)
    or not shutil.which('groupadd', path=SBIN),
    reason='setup creates users with useradd/groupadd and chowns files to them: '
           'needs root and the passwd package')


@pytest.fixture
def root():
    """A minimal target system (conftest.scratch_root)."""
    path = scratch_root('remoteio-setup-')
    yield path
    shutil.rmtree(path)


def run_setup(root, *args):
    result = subprocess.run(
        [sys.executable, '-m', 'remoteio_server', 'setup', '--root', root, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def accounts(root):
    """users: name → (uid, gid); groups: name → (gid, members), from root's files."""
    users, groups = {}, {}
    with open(os.path.join(root, 'etc', 'passwd')) as f:
        for line in f:
            name, _, uid, gid, *_ = line.rstrip('\n').split(':')
            users[name] = (int(uid), int(gid))
    with open(os.path.join(root, 'etc', 'group')) as f:
        for line in f:
            name, _, gid, members = line.rstrip('\n').split(':')
            groups[name] = (int(gid), [m for m in members.split(',') if m])
    return users, groups


def owned(path, uid, gid, mode):
    st = os.lstat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, mode), \
        f'{path}: {st.st_uid}:{st.st_gid} {stat.S_IMODE(st.st_mode):o}'


def snapshot(root):
    """Every file and directory under root: content, owner, mode, mtime."""
    seen = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(path, 'rb') as f:
                    content = f.read()
            seen[path] = (content, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns)
    return seen


def read_as(path, uid, gid, groups):
    """Read *path* in a child that has dropped to uid/gid/groups: its content, or
    the errno name of the failure."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            try:
                with open(path, 'rb') as f:
                    data = b'ok:' + f.read()
            except OSError as exc:
                data = b'error:' + os.strerror(exc.errno).encode()
            os.write(w, data)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, 'rb') as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return data.decode()


def verify_works():
    """None if systemd-analyze verify works here, else why not (checked on a
    trivial unit that must pass)."""
    analyze = shutil.which('systemd-analyze', path=SBIN)
    if not analyze:
        return 'systemd-analyze is not installed'
    with tempfile.TemporaryDirectory() as d:
        unit = os.path.join(d, 'remoteio-probe.service')
        with open(unit, 'w') as f:
            f.write(f'[Service]\nExecStart={shutil.which("true") or "/bin/true"}\n')
        result = subprocess.run([analyze, 'verify', unit], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        return f'systemd-analyze verify cannot run here: {result.stdout.strip()}'
    return None


@needs_root
def test_setup_writes_everything_once(root):
    out = run_setup(root)
    users, groups = accounts(root)

    # the user: a system user with its own group, also in gpio, no home, no shell
    assert 'remoteio' in users and 'gpio' in groups and 'remoteio' in groups
    uid, gid = users['remoteio']
    assert gid == groups['remoteio'][0]
    assert 'remoteio' in groups['gpio'][1]
    assert uid < 1000 and groups['gpio'][0] < 1000  # system ids (SYS_UID_MAX)
    with open(os.path.join(root, 'etc', 'passwd')) as f:
        line = next(x for x in f if x.startswith('remoteio:'))
    assert line.rstrip('\n').split(':')[5:] == ['/nonexistent', '/usr/sbin/nologin']

    # the token: root:remoteio 0640 in root:remoteio 0750, printed once, the same
    owned(os.path.join(root, 'etc/remoteio'), 0, gid, 0o750)
    token_path = os.path.join(root, 'etc/remoteio/token')
    owned(token_path, 0, gid, 0o640)
    with open(token_path) as f:
        token = f.read().strip()
    assert len(token) == 43  # token_urlsafe(32)
    assert TOKEN_LINE.findall(out) == [token]
    assert out.count(token) == 1

    # the environment file
    env = os.path.join(root, 'etc/default/remoteio-server')
    owned(env, 0, 0, 0o644)
    with open(env) as f:
        assert 'REMOTEIO_SERVER_TOKEN_FILE=/etc/remoteio/token' in f.read().splitlines()

    # the unit: this installation's ExecStart, the service user, a writable lgpio directory
    unit_path = os.path.join(root, 'etc/systemd/system/remoteio-server.service')
    owned(unit_path, 0, 0, 0o644)
    with open(unit_path) as f:
        unit = f.read()
    lines = unit.splitlines()
    for expected in ('User=remoteio', 'Group=remoteio', 'SupplementaryGroups=gpio',
                     'RuntimeDirectory=remoteio', 'RuntimeDirectoryMode=0750',
                     'WorkingDirectory=%t/remoteio', 'Environment=LG_WD=%t/remoteio',
                     'ProtectSystem=strict', 'EnvironmentFile=-/etc/default/remoteio-server'):
        assert expected in lines, expected
    exec_start = next(x for x in lines if x.startswith('ExecStart='))
    assert exec_start == next(x for x in cli.systemd_unit().splitlines()
                              if x.startswith('ExecStart='))
    program = exec_start.split('=', 1)[1].split()[0]
    assert os.access(program, os.X_OK), program
    assert unit == cli.systemd_unit()  # the shipped unit, ExecStart filled in, nothing else

    # nothing outside etc/, and systemctl was not called
    assert sorted(os.listdir(root)) == ['etc']
    assert 'systemctl: not called (--root)' in out
    assert 'systemctl status remoteio-server' in out and 'journalctl -u remoteio-server' in out


@needs_root
def test_written_unit_passes_systemd_analyze_verify(root):
    out = run_setup(root)
    why_not = verify_works()
    if why_not:
        pytest.skip(why_not)
    assert 'systemd-analyze verify: ok' in out, out
    unit = os.path.join(root, 'etc/systemd/system/remoteio-server.service')
    result = subprocess.run([shutil.which('systemd-analyze', path=SBIN), 'verify', unit],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0 and result.stdout.strip() == '', result.stdout


@needs_root
def test_second_run_changes_nothing_and_new_token_replaces_it(root):
    first = run_setup(root)
    token = TOKEN_LINE.findall(first)[0]
    before = snapshot(root)

    again = run_setup(root)
    assert snapshot(root) == before
    assert 'REMOTEIO_TOKEN=' not in again and token not in again
    assert 'kept' in again and 'nothing changed' in again

    renewed = run_setup(root, '--new-token')
    new = TOKEN_LINE.findall(renewed)
    assert len(new) == 1 and new[0] != token
    with open(os.path.join(root, 'etc/remoteio/token')) as f:
        assert f.read().strip() == new[0]
    users, _ = accounts(root)
    owned(os.path.join(root, 'etc/remoteio/token'), 0, users['remoteio'][1], 0o640)
    assert 'done: 1 change' in renewed


@needs_root
def test_token_readable_by_the_service_only(root):
    run_setup(root)
    users, groups = accounts(root)
    uid, gid = users['remoteio']
    token_path = os.path.join(root, 'etc/remoteio/token')
    with open(token_path) as f:
        token = f.read()

    # the credentials systemd gives the unit: User=remoteio, Group=remoteio, the
    # groups the group file lists it in (initgroups), SupplementaryGroups=gpio
    service_groups = sorted({gid, groups['gpio'][0]} |
                            {g for g, members in groups.values() if 'remoteio' in members})
    assert read_as(token_path, uid, gid, service_groups) == 'ok:' + token

    # another uid cannot, not even one in group gpio
    other = 65534
    assert read_as(token_path, other, other, []) == 'error:Permission denied'
    assert read_as(token_path, other, groups['gpio'][0],
                   [groups['gpio'][0]]) == 'error:Permission denied'


@needs_root
def test_repairs_the_old_readme_layout(root):
    """The README used to make /etc/remoteio root 0700 and the token root 0600,
    which the service user cannot read, and a user with useradd --groups gpio."""
    prefix = ['--prefix', root]
    subprocess.run([shutil.which('groupadd', path=SBIN), *prefix, '--system', 'gpio'], check=True)
    subprocess.run([shutil.which('useradd', path=SBIN), *prefix, '--system', '--no-create-home',
                    '--user-group', 'remoteio'], check=True)  # not in gpio yet
    os.makedirs(os.path.join(root, 'etc/remoteio'), 0o700)
    token = 'an-old-token-the-clients-already-have'
    token_path = os.path.join(root, 'etc/remoteio/token')
    with open(token_path, 'w') as f:
        f.write(token + '\n')
    os.chmod(token_path, 0o600)
    os.makedirs(os.path.join(root, 'etc/default'))
    env = os.path.join(root, 'etc/default/remoteio-server')
    with open(env, 'w') as f:
        f.write('# mine\nREMOTEIO_SERVER_PORT=9000')  # no newline at the end
    os.chmod(env, 0o640)

    out = run_setup(root)
    users, groups = accounts(root)
    gid = users['remoteio'][1]
    assert 'remoteio' in groups['gpio'][1]
    assert 'added to group gpio' in out
    owned(os.path.join(root, 'etc/remoteio'), 0, gid, 0o750)
    owned(token_path, 0, gid, 0o640)
    with open(token_path) as f:
        assert f.read().strip() == token  # kept
    assert 'REMOTEIO_TOKEN=' not in out and token not in out
    with open(env) as f:
        assert f.read().splitlines() == ['# mine', 'REMOTEIO_SERVER_PORT=9000',
                                         'REMOTEIO_SERVER_TOKEN_FILE=/etc/remoteio/token']
    owned(env, 0, 0, 0o640)  # its mode kept
    assert 'nothing changed' in run_setup(root)


@needs_root
def test_other_user_name(root):
    out = run_setup(root, '--user', 'gadget')
    users, groups = accounts(root)
    assert 'remoteio' not in users and 'gadget' in groups['gpio'][1]
    gid = users['gadget'][1]
    assert groups['gadget'][0] == gid
    owned(os.path.join(root, 'etc/remoteio/token'), 0, gid, 0o640)
    with open(os.path.join(root, 'etc/systemd/system/remoteio-server.service')) as f:
        lines = f.read().splitlines()
    assert 'User=gadget' in lines and 'Group=gadget' in lines
    assert 'user gadget: created' in out


def test_refuses_non_root_without_root_option(monkeypatch, capsys):
    monkeypatch.setattr(os, 'geteuid', lambda: 1000)
    with pytest.raises(SystemExit) as exit_:
        remoteio_setup.main(['--no-start'])
    assert exit_.value.code == 2
    assert 'run it as root' in capsys.readouterr().err


def test_cli_dispatches_setup(monkeypatch):
    seen = []
    monkeypatch.setattr(remoteio_setup, 'main', seen.append)
    cli.main(['setup', '--root', '/x', '--new-token'])
    assert seen == [['--root', '/x', '--new-token']]


class FakeSystemctl:
    """Stands in for systemctl in Setup.start: records calls, answers from a state."""

    def __init__(self, enabled, active, need_reload='no'):
        self.enabled, self.active, self.need_reload = enabled, active, need_reload
        self.calls = []

    def __call__(self, *args, check=True):
        self.calls.append(' '.join(args))
        code, out = 0, ''
        if args[0] == 'is-enabled':
            code = 0 if self.enabled else 1
        elif args[0] == 'is-active':
            code = 0 if self.active else 3
        elif args[0] == 'show':
            out = (f'NeedDaemonReload={self.need_reload}\nActiveState=active\n'
                   f'SubState=running\nMainPID=4242\nExecMainStatus=0\n')
        elif args[0] == 'enable':
            self.enabled = self.active = True
        return subprocess.CompletedProcess(args, code, out)


@pytest.mark.parametrize('enabled, active, unit_changed, changes, expected', [
    (False, False, True, 1, ['daemon-reload', 'enable --now remoteio-server']),
    (True, True, True, 1, ['daemon-reload', 'restart remoteio-server']),
    (True, True, False, 1, ['restart remoteio-server']),   # e.g. a new token
    (True, True, False, 0, []),                            # all set: nothing
    (True, False, False, 0, ['enable --now remoteio-server']),
])
def test_start_calls_systemctl_only_as_needed(monkeypatch, enabled, active, unit_changed,
                                              changes, expected):
    """The live path (no --root), with systemctl faked: this machine has no
    systemd as PID 1."""
    args = remoteio_setup.parser().parse_args([])
    s = remoteio_setup.Setup(args, out=io.StringIO())
    fake = FakeSystemctl(enabled, active)
    monkeypatch.setattr(s, '_systemctl', fake)
    monkeypatch.setattr(remoteio_setup.time, 'sleep', lambda _: None)
    real_isdir = os.path.isdir
    monkeypatch.setattr(remoteio_setup.os.path, 'isdir',
                        lambda p: True if p == '/run/systemd/system' else real_isdir(p))
    monkeypatch.setattr(remoteio_setup.shutil, 'which', lambda name, **kw: '/bin/' + name)
    s.unit_changed = unit_changed
    s.changes = changes
    s.start()
    done = [c for c in fake.calls if not c.startswith(('show', 'is-'))]
    assert done == expected


def test_verify_reports_a_bad_unit_and_a_verify_that_cannot_run(tmp_path, monkeypatch):
    """setup stops on a unit systemd-analyze rejects, and goes on (saying so) when
    systemd-analyze itself cannot run."""
    out = io.StringIO()
    s = remoteio_setup.Setup(remoteio_setup.parser().parse_args(['--root', str(tmp_path)]), out=out)
    s.unit_path = str(tmp_path / 'remoteio-server.service')
    with open(s.unit_path, 'w') as f:
        f.write('[Service]\nExecStart=/nonexistent/remoteio-server\n')
    if shutil.which('systemd-analyze', path=SBIN) and verify_works() is None:
        assert s.verify() is False
        assert 'the unit has problems' in out.getvalue()
        assert '/nonexistent/remoteio-server' in out.getvalue()

    fake = tmp_path / 'bin' / 'systemd-analyze'
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "Failed to initialize manager: No such file" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv('PATH', f'{fake.parent}:{os.environ.get("PATH", "")}')
    out.truncate(0)
    assert s.verify() is True
    assert 'systemd-analyze verify: could not run here (exit 1: Failed to initialize manager' \
        in out.getvalue()


def test_start_reports_a_service_that_does_not_stay_up(monkeypatch):
    args = remoteio_setup.parser().parse_args([])
    s = remoteio_setup.Setup(args, out=io.StringIO())
    fake = FakeSystemctl(enabled=True, active=False)
    pids = iter(['100', '0'])
    real_call = fake.__call__

    def crashing(*args, check=True):
        result = real_call(*args, check=check)
        if args[0] == 'show' and '--property=MainPID' in args:
            pid = next(pids)  # started as 100; 3 s later waiting for its restart
            return subprocess.CompletedProcess(
                args, 0, f'MainPID={pid}\nActiveState={"active" if pid != "0" else "activating"}'
                         f'\nSubState=auto-restart\nExecMainStatus=2\n')
        return result
    monkeypatch.setattr(s, '_systemctl', crashing)
    monkeypatch.setattr(remoteio_setup.time, 'sleep', lambda _: None)
    real_isdir = os.path.isdir
    monkeypatch.setattr(remoteio_setup.os.path, 'isdir',
                        lambda p: True if p == '/run/systemd/system' else real_isdir(p))
    monkeypatch.setattr(remoteio_setup.shutil, 'which', lambda name, **kw: '/bin/' + name)
    with pytest.raises(remoteio_setup.SetupError, match='not running steadily.*exit status 2'):
        s.start()
