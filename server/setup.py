"""
``remoteio-server setup``: install this remoteio-server as a systemd service on
the Raspberry Pi, in one command run as root.

Where it sits: the ``setup`` subcommand of the ``remoteio-server`` command;
:func:`remoteio_server.cli.main` hands ``remoteio-server setup ...`` to
:func:`main` here. It never touches the daemon (:mod:`.daemon`) and runs no
server: it prepares the machine for the shipped unit
(``server/remoteio-server.service``, whose text comes from
:func:`remoteio_server.cli.systemd_unit`, the same as ``--print-unit``).

What it does, one printed line per step, each step idempotent (a second run
changes nothing and says so):

1. the system group ``gpio`` (created if missing: ``/dev/gpiochip*`` must be
   group gpio, which Raspberry Pi OS's udev rules do) and the system user
   ``remoteio`` (own group ``remoteio``, also in ``gpio``, no home, nologin
   shell), with ``groupadd``/``useradd``/``usermod`` (``--prefix ROOT`` under
   ``--root ROOT``);
2. ``/etc/remoteio`` (root:remoteio 0750) and the token
   ``/etc/remoteio/token`` (root:remoteio 0640, ``secrets.token_urlsafe(32)``),
   printed once as ``REMOTEIO_TOKEN=...`` for the clients; an existing token is
   kept and not printed again unless ``--new-token``;
3. ``/etc/default/remoteio-server`` with
   ``REMOTEIO_SERVER_TOKEN_FILE=/etc/remoteio/token`` (other lines kept);
4. ``/etc/systemd/system/remoteio-server.service`` with ExecStart pointing at
   this installation, checked with ``systemd-analyze verify`` when it can run;
5. unless ``--root`` or ``--no-start``: ``systemctl daemon-reload`` and
   ``systemctl enable --now remoteio-server`` (a restart if a setting changed
   under a running service).

Why the token is a group-readable file and not systemd's ``LoadCredential=``:
docs/security.md ("Deploying on a LAN").
"""

import argparse
import glob
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import time

UNIT_NAME = 'remoteio-server'
GPIO_GROUP = 'gpio'
CONFIG_DIR = '/etc/remoteio'
TOKEN_FILE = '/etc/remoteio/token'
ENV_FILE = '/etc/default/remoteio-server'
UNIT_FILE = '/etc/systemd/system/remoteio-server.service'
TOKEN_VARIABLE = 'REMOTEIO_SERVER_TOKEN_FILE'
MIN_TOKEN = 16          # the server refuses shorter tokens (cli.access_policy)
NOLOGIN = '/usr/sbin/nologin'
HIDDEN = ('/home/', '/root/', '/run/user/', '/tmp/', '/var/tmp/')  # by the unit's sandbox
SBIN_PATH = '/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin'
ENV_HEADER = ('# Settings for remoteio-server.service: REMOTEIO_SERVER_<OPTION>=value, one a line\n'
              '# (e.g. REMOTEIO_SERVER_ALLOW_HOSTS=192.168.1.0/24). Reference: docs/configuration.md.\n'
              '# The token itself is not here: it is in the file named below.\n')


class SetupError(Exception):
    """A step failed: the message says which and why."""


def parser():
    p = argparse.ArgumentParser(
        prog='remoteio-server setup',
        description='Set this Raspberry Pi up to run remoteio-server as a systemd service: '
                    'the system user, the token, /etc/default/remoteio-server and the unit, '
                    'then systemctl enable --now. Run it as root. Running it again changes '
                    'nothing that is already right.')
    p.add_argument('--root', metavar='DIR',
                   help='write everything under DIR instead of / (DIR/etc/passwd, group, '
                        'shadow and gshadow must exist: the user is created in them with '
                        'useradd --prefix); never calls systemctl')
    p.add_argument('--user', default='remoteio', metavar='NAME',
                   help='the service user, with a group of the same name (default: %(default)s)')
    p.add_argument('--no-start', action='store_true',
                   help='write everything but do not call systemctl')
    p.add_argument('--new-token', action='store_true',
                   help='replace the token even if there is one (clients need the new one)')
    return p


def _mode(st):
    return stat.S_IMODE(st.st_mode)


class Accounts:
    """Users and groups of the target system: its files under --root, NSS otherwise."""

    def __init__(self, root):
        self.root = root

    def _rows(self, name):
        path = os.path.join(self.root or '/', 'etc', name)
        try:
            with open(path, encoding='utf-8') as f:
                return [line.rstrip('\n').split(':') for line in f if line.count(':') >= 3]
        except FileNotFoundError:
            return []

    def user(self, name):
        """(uid, gid) of user *name*, or None."""
        if not self.root:
            import pwd
            try:
                entry = pwd.getpwnam(name)
                return entry.pw_uid, entry.pw_gid
            except KeyError:
                pass  # a user just added may not be visible to NSS yet: read the file
        for row in self._rows('passwd'):
            if row[0] == name:
                return int(row[2]), int(row[3])
        return None

    def group(self, name):
        """(gid, [member names]) of group *name*, or None."""
        if not self.root:
            import grp
            try:
                entry = grp.getgrnam(name)
                return entry.gr_gid, list(entry.gr_mem)
            except KeyError:
                pass
        for row in self._rows('group'):
            if row[0] == name:
                return int(row[2]), [m for m in row[3].split(',') if m]
        return None

    def group_name(self, gid):
        if not self.root:
            import grp
            try:
                return grp.getgrgid(gid).gr_name
            except KeyError:
                pass
        for row in self._rows('group'):
            if int(row[2]) == gid:
                return row[0]
        return None


class Setup:
    def __init__(self, args, out=None):
        self.args = args
        self.root = os.path.abspath(args.root) if args.root else None
        self.user = args.user
        self.accounts = Accounts(self.root)
        self.out = out or sys.stdout
        self.changes = 0
        self.unit_changed = False
        self.is_root = os.geteuid() == 0

    # helpers

    def say(self, text):
        print(text, file=self.out, flush=True)

    def changed(self, text):
        self.changes += 1
        self.say(text)

    def path(self, path):
        """*path* (absolute, on the target system) as a path on this machine."""
        return os.path.join(self.root, path.lstrip('/')) if self.root else path

    def _tool(self, name):
        found = shutil.which(name, path=os.environ.get('PATH', '') + ':' + SBIN_PATH)
        if not found:
            raise SetupError(f'{name} not found: it comes with the passwd package '
                             f'(apt install passwd)')
        return found

    def run_tool(self, name, *args):
        command = [self._tool(name)]
        if self.root:
            command += ['--prefix', self.root]
        command += list(args)
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if result.returncode != 0:
            hint = '' if self.is_root else ' (it needs root, even with --root)'
            raise SetupError(f'{" ".join(command)} failed (exit {result.returncode}){hint}: '
                             f'{result.stdout.strip()}')

    def owner(self, uid, gid):
        name = self.accounts.group_name(gid) or str(gid)
        user = 'root' if uid == 0 else str(uid)
        return f'{user}:{name}'

    # steps

    def check_root(self):
        if self.root:
            missing = [n for n in ('passwd', 'group', 'shadow', 'gshadow')
                       if not os.path.isfile(os.path.join(self.root, 'etc', n))]
            if missing:
                raise SetupError(
                    f'--root {self.root}: needs {", ".join("etc/" + n for n in missing)} '
                    f'(useradd --prefix edits the target\'s account files; copy them or '
                    f'start from minimal ones with a root line)')

    def gpio_group(self):
        group = self.accounts.group(GPIO_GROUP)
        if group is None:
            self.run_tool('groupadd', '--system', GPIO_GROUP)
            group = self.accounts.group(GPIO_GROUP)
            if group is None:
                raise SetupError(f'groupadd ran, but group {GPIO_GROUP} is still missing')
            self.changed(f'group {GPIO_GROUP}: created (system group, gid {group[0]}); '
                         f'/dev/gpiochip* must belong to it: Raspberry Pi OS\'s udev rules do '
                         f'that, elsewhere add a udev rule (docs/troubleshooting.md)')
        else:
            self.say(f'group {GPIO_GROUP}: exists (gid {group[0]})')
        self.gpio_gid = group[0]

    def service_user(self):
        name = self.user
        found = self.accounts.user(name)
        if found is None:
            # its own group, so that the token can be root:<user> 0640 (readable by the
            # service and nobody else); that group may already exist on its own
            own_group = (['--gid', name] if self.accounts.group(name) is not None
                         else ['--user-group'])
            self.run_tool('useradd', '--system', '--no-create-home', '--home-dir', '/nonexistent',
                          '--shell', NOLOGIN, '--comment', 'remoteio-server',
                          *own_group, '--groups', GPIO_GROUP, name)
            found = self.accounts.user(name)
            if found is None:
                raise SetupError(f'useradd ran, but user {name} is still missing')
            uid, gid = found
            self.changed(f'user {name}: created (system user, uid {uid}, group '
                         f'{self.accounts.group_name(gid)}, also in {GPIO_GROUP}; no home, '
                         f'shell {NOLOGIN})')
        else:
            uid, gid = found
            if uid == 0:
                raise SetupError(f'{name} is uid 0: the service must not run as root')
            gpio = self.accounts.group(GPIO_GROUP)
            if gid != gpio[0] and name not in gpio[1]:
                self.run_tool('usermod', '--append', '--groups', GPIO_GROUP, name)
                self.changed(f'user {name}: exists (uid {uid}); added to group {GPIO_GROUP}')
            else:
                self.say(f'user {name}: exists (uid {uid}, group '
                         f'{self.accounts.group_name(gid) or gid}, in {GPIO_GROUP})')
        self.uid, self.gid = uid, gid
        self.group = self.accounts.group_name(gid) or str(gid)
        if self.group != name:
            self.say(f'  note: the primary group of {name} is {self.group}, not {name}: every '
                     f'member of {self.group} can read the token')

    def gpio_devices(self):
        if self.root:
            return
        chips = sorted(glob.glob('/dev/gpiochip*'))
        if not chips:
            self.say('gpio devices: no /dev/gpiochip* on this machine (not a Raspberry Pi?); '
                     'the server falls back to simulated pins')
            return
        wrong = [c for c in chips
                 if os.stat(c).st_gid != self.gpio_gid or _mode(os.stat(c)) & 0o060 != 0o060]
        if wrong:
            self.say(f'gpio devices: WARNING {", ".join(wrong)} not read-writable by group '
                     f'{GPIO_GROUP}: the service cannot open them (docs/troubleshooting.md)')
        else:
            self.say(f'gpio devices: {", ".join(chips)} are group {GPIO_GROUP}, mode rw')

    def _ensure_dir(self, path, mode):
        """A plain directory root:root *mode* (parents of the files we write)."""
        if not os.path.isdir(path):
            os.makedirs(path, mode=mode)

    def _fix(self, path, st, mode):
        """Make *path* root:<service group> *mode*; returns what it was, or None."""
        if os.path.islink(path):
            raise SetupError(f'{path} is a symbolic link: refusing to change it')
        if st.st_uid == 0 and st.st_gid == self.gid and _mode(st) == mode:
            return None
        was = f'{self.owner(st.st_uid, st.st_gid)} {_mode(st):04o}'
        os.chown(path, 0, self.gid, follow_symlinks=False)
        os.chmod(path, mode)
        return was

    def config_dir(self):
        path = self.path(CONFIG_DIR)
        want = f'root:{self.group} 0750'
        if not os.path.lexists(path):
            self._ensure_dir(os.path.dirname(path), 0o755)
            os.mkdir(path, 0o700)
            os.chown(path, 0, self.gid)
            os.chmod(path, 0o750)
            self.changed(f'{path}: created, {want}')
            return
        if not os.path.isdir(path) or os.path.islink(path):
            raise SetupError(f'{path} exists and is not a directory')
        was = self._fix(path, os.lstat(path), 0o750)
        if was:
            self.changed(f'{path}: was {was}, now {want} (so that {self.user} can read the token)')
        else:
            self.say(f'{path}: {want}, unchanged')

    def token(self):
        path = self.path(TOKEN_FILE)
        want = f'root:{self.group} 0640'
        reason = None
        if os.path.lexists(path):
            if os.path.islink(path) or not os.path.isfile(path):
                raise SetupError(f'{path} is not a regular file: refusing to touch it')
            with open(path, encoding='utf-8', errors='replace') as f:
                old = f.read().strip()
            if self.args.new_token:
                reason = 'replaced (--new-token)'
            elif len(old) < MIN_TOKEN:
                reason = (f'replaced: it was {len(old)} characters, the server needs at least '
                          f'{MIN_TOKEN}')
            else:
                was = self._fix(path, os.lstat(path), 0o640)
                if was:
                    self.changed(f'{path}: kept (not shown again; --new-token replaces it); '
                                 f'was {was}, now {want} (so that {self.user} can read it)')
                else:
                    self.say(f'{path}: kept, {want} (not shown again; --new-token replaces it)')
                return
        token = secrets.token_urlsafe(32)
        self._write(path, token + '\n', 0o640, 0, self.gid)
        self.changed(f'{path}: {reason or "created"}, {want}; the token, shown this once, '
                     f'for each client:')
        self.say(f'    REMOTEIO_TOKEN={token}')

    def env_file(self):
        path = self.path(ENV_FILE)
        line = f'{TOKEN_VARIABLE}={TOKEN_FILE}'
        if not os.path.exists(path):
            self._ensure_dir(os.path.dirname(path), 0o755)
            self._write(path, ENV_HEADER + line + '\n', 0o644)
            self.changed(f'{path}: created with {line}')
            return
        with open(path, encoding='utf-8') as f:
            text = f.read()
        setting = re.compile(rf'^\s*{TOKEN_VARIABLE}\s*=\s*(.*?)\s*$', re.M)
        values = setting.findall(text)
        if not values:
            st = os.stat(path)
            new = text + ('' if text.endswith('\n') or not text else '\n') + line + '\n'
            self._write(path, new, _mode(st), st.st_uid, st.st_gid)
            self.changed(f'{path}: added {line} (other lines kept)')
        elif values[-1].strip('"\'') == TOKEN_FILE:
            self.say(f'{path}: has {line}, unchanged')
        else:
            self.say(f'{path}: WARNING it sets {TOKEN_VARIABLE}={values[-1]}, not '
                     f'{TOKEN_FILE}: left as it is, so the server does not use the token above')

    def _write(self, path, text, mode, uid=0, gid=0):
        """Replace *path* with *text* atomically (a new file, then rename)."""
        temporary = f'{path}.new-{os.getpid()}'
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if self.is_root:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            os.write(fd, text.encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        os.close(fd)
        os.replace(temporary, path)

    def unit_text(self):
        from remoteio_server.cli import systemd_unit
        text = systemd_unit()
        text = re.sub(r'^User=.*$', f'User={self.user}', text, flags=re.M)
        text = re.sub(r'^Group=.*$', f'Group={self.group}', text, flags=re.M)
        return text

    def unit(self):
        path = self.unit_path = self.path(UNIT_FILE)
        text = self.unit_text()
        command = re.search(r'^ExecStart=(.*)$', text, re.M).group(1)
        try:
            with open(path, encoding='utf-8') as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        if old == text:
            self.say(f'{path}: unchanged (ExecStart={command})')
        else:
            self._ensure_dir(os.path.dirname(path), 0o755)
            self._write(path, text, 0o644)
            self.changed(f'{path}: {"written" if old is None else "replaced"} '
                         f'(ExecStart={command}; local changes belong in '
                         f'systemctl edit {UNIT_NAME})')
            self.unit_changed = True
        # the program and the interpreter it runs (a venv's python is a symlink, e.g. into
        # ~/.pyenv) must be where the unit's sandbox and the service user can reach them
        for what, program in (('ExecStart', command.split()[0]),
                              ('its Python', os.path.realpath(sys.executable))):
            hidden = [d for d in HIDDEN if program.startswith(d)]
            if hidden:
                self.say(f'  WARNING: {what} is {program}, under {hidden[0]}, which the unit hides '
                         f'(ProtectHome=, PrivateTmp=): make the venv in /opt/remoteio with '
                         f'a system python3 (/usr/bin/python3)')
                break

    def verify(self):
        analyze = shutil.which('systemd-analyze', path=os.environ.get('PATH', '') + ':' + SBIN_PATH)
        if not analyze:
            self.say('systemd-analyze verify: systemd-analyze not installed, unit not checked')
            return True
        try:
            result = subprocess.run([analyze, 'verify', self.unit_path], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, timeout=120,
                                    env=dict(os.environ, SYSTEMD_PAGER='', SYSTEMD_COLORS='0'))
        except (OSError, subprocess.SubprocessError) as exc:
            self.say(f'systemd-analyze verify: could not run ({exc}); unit not checked')
            return True
        output = ' | '.join(line.strip() for line in result.stdout.splitlines() if line.strip())
        about_unit = os.path.basename(self.unit_path) in result.stdout
        if result.returncode == 0:
            self.say(f'systemd-analyze verify: ok{" (" + output + ")" if output else ""}')
            return True
        if about_unit:
            self.say(f'systemd-analyze verify: the unit has problems: {output}')
            return False
        self.say(f'systemd-analyze verify: could not run here (exit {result.returncode}: '
                 f'{output or "no output"}); unit not checked')
        return True

    def _systemctl(self, *args, check=True):
        command = ['systemctl', *args]
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        if check and result.returncode != 0:
            raise SetupError(f'{" ".join(command)} failed (exit {result.returncode}): '
                             f'{result.stdout.strip()}')
        return result

    def _properties(self, *names):
        result = self._systemctl('show', UNIT_NAME, *[f'--property={n}' for n in names],
                                 check=False)
        return dict(line.split('=', 1) for line in result.stdout.splitlines() if '=' in line)

    def start(self):
        start = f'systemctl daemon-reload && systemctl enable --now {UNIT_NAME}'
        if self.root:
            self.say(f'systemctl: not called (--root); on the Pi itself: {start}')
            return
        if self.args.no_start:
            self.say(f'systemctl: not called (--no-start); to start it: sudo {start}')
            return
        if not os.path.isdir('/run/systemd/system') or not shutil.which('systemctl'):
            raise SetupError('systemd is not running on this machine (not PID 1), so the '
                             f'service cannot be started here; files are written, on a systemd '
                             f'machine run: {start}')
        before = self._properties('NeedDaemonReload')
        if self.unit_changed or before.get('NeedDaemonReload') == 'yes':
            self._systemctl('daemon-reload')
            self.changed('systemctl daemon-reload: done')
        enabled = self._systemctl('is-enabled', '--quiet', UNIT_NAME, check=False).returncode == 0
        active = self._systemctl('is-active', '--quiet', UNIT_NAME, check=False).returncode == 0
        if not enabled or not active:
            self._systemctl('enable', '--now', UNIT_NAME)
            self.changed(f'systemctl enable --now {UNIT_NAME}: '
                         f'{"enabled" if not enabled else "was enabled"}, '
                         f'{"started" if not active else "was running"}')
        elif self.changes:
            self._systemctl('restart', UNIT_NAME)
            self.changed(f'systemctl restart {UNIT_NAME}: restarted to pick up the changes above')
        else:
            self.say(f'systemctl: {UNIT_NAME} is enabled and running, unchanged')
            return
        # a server that cannot start (token, port, backend) exits within seconds, and
        # Restart= starts another: the same main process 3 s later means it is running
        first = self._properties('MainPID').get('MainPID')
        time.sleep(3)
        state = self._properties('ActiveState', 'SubState', 'MainPID', 'ExecMainStatus')
        if state.get('ActiveState') != 'active' or state.get('MainPID') != first \
                or first in (None, '', '0'):
            raise SetupError(f'{UNIT_NAME} is not running steadily (state '
                             f'{state.get("ActiveState")}/{state.get("SubState")}, last exit '
                             f'status {state.get("ExecMainStatus")}): see journalctl -u '
                             f'{UNIT_NAME} -n 30')
        self.say(f'{UNIT_NAME}: running (checked after 3 s)')

    def run(self):
        self.say(f'remoteio-server setup{" under " + self.root if self.root else ""}, '
                 f'service user {self.user}')
        self.check_root()
        self.gpio_group()
        self.service_user()
        self.gpio_devices()
        self.config_dir()
        self.token()
        self.env_file()
        self.unit()
        good = self.verify()
        if not good:
            raise SetupError('not starting a unit that systemd-analyze rejects')
        self.start()
        self.say(f'check it: systemctl status {UNIT_NAME}; journalctl -u {UNIT_NAME}')
        if self.changes:
            self.say(f'done: {self.changes} change{"s" if self.changes != 1 else ""}')
        else:
            self.say('done: nothing changed, everything was already set up')


def main(argv=None):
    """``remoteio-server setup [--root DIR] [--user NAME] [--no-start] [--new-token]``."""
    args = parser().parse_args(argv)
    if not re.fullmatch(r'[a-z_][a-z0-9_-]{0,31}', args.user):
        parser().error(f'--user {args.user!r} is not a valid user name')
    if os.geteuid() != 0 and not args.root:
        print('remoteio-server setup: run it as root (e.g. sudo '
              f'{os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "remoteio-server")}'
              ' setup): it creates a system user and writes to /etc. To see what it writes, '
              'give it --root DIR.', file=sys.stderr)
        sys.exit(2)
    if args.root and not os.path.isdir(args.root):
        parser().error(f'--root {args.root}: not a directory')
    os.umask(0o022)
    try:
        Setup(args).run()
    except SetupError as exc:
        print(f'remoteio-server setup: {exc}', file=sys.stderr)
        sys.exit(1)
    except OSError as exc:
        print(f'remoteio-server setup: {exc.filename or ""}: {exc.strerror or exc}',
              file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == '__main__':
    main()
