"""
The processes a benchmark run starts, and what /proc says about them.

* :class:`ChildProcess` starts a program that prints one ``ready on
  127.0.0.1:PORT`` line, waits (bounded) for that line, and stops it with
  SIGTERM, then waits, then SIGKILL if it must. :func:`start_server` starts
  ``remoteio-server --backend mock`` with it, :func:`start_echo_server` the
  baseline :mod:`bench.echo`, :func:`start_reference_server` the one-process
  reference server :mod:`bench.reference`.
* The server's process tree (main process → zygote → one worker per
  claimed pin, plus spares) is
  found by walking ``/proc``; :func:`cpu_ticks` and :func:`memory_kb` read
  ``/proc/PID/stat`` and ``/proc/PID/smaps_rollup`` for each process.
* :class:`JsonLineProcess` runs a client of the load phases
  (:mod:`bench.loadclient`, :func:`start_load_client`; :mod:`bench.readclient`,
  :func:`start_read_client`).
* :func:`pinned` pins every thread of this process and of given processes to
  one CPU, and every thread of given process trees to another, then restores
  what each had (the placements of :mod:`bench.compare`).
* :func:`machine_info` describes the machine for the JSON report.
"""

import json
import os
from contextlib import contextmanager
import platform
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = '127.0.0.1'
#: Spare workers our server keeps ready (its default), and how long to wait for
#: its workers to come and go between phases.
SPARES = 2
SETTLE_TIMEOUT = 20.0
READY_TIMEOUT = 30.0
#: The server's own shutdown waits up to 10 s for its pins to be released.
STOP_TIMEOUT = 20.0
CLOCK_TICKS_PER_SECOND = os.sysconf('SC_CLK_TCK')
READY_PATTERN = re.compile(r'ready on 127\.0\.0\.1:(\d+)')


class ChildProcess:
    """A started program that announces ``ready on 127.0.0.1:PORT`` on stdout."""

    def __init__(self, name, argv, log_path=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.process = None
        self.port = None
        self.ready_line = None

    @property
    def pid(self):
        return self.process.pid

    def start(self, timeout=READY_TIMEOUT):
        stderr = open(self.log_path, 'w') if self.log_path else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr)
        finally:
            if self.log_path:
                stderr.close()
        try:
            self.ready_line = self._read_ready_line(timeout)
        except BaseException:
            self.stop()
            raise
        self.port = int(READY_PATTERN.search(self.ready_line).group(1))
        return self

    def _read_ready_line(self, timeout):
        """Read stdout until the ready line (bounded by *timeout* and a byte count)."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        received = b''
        while len(received) < 65536:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # the program ended
            received += chunk
            for line in received.decode('utf-8', 'replace').splitlines():
                if READY_PATTERN.search(line):
                    return line
        raise RuntimeError(
            f'{self.name} did not become ready within {timeout} s '
            f'(exit code {self.process.poll()}, stdout {received[-500:]!r}){self._log_tail()}')

    def _log_tail(self):
        if not self.log_path or not Path(self.log_path).exists():
            return ''
        tail = Path(self.log_path).read_text(errors='replace').splitlines()[-10:]
        return '; log tail:\n  ' + '\n  '.join(tail)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, wait up to *timeout*, then SIGKILL. Returns how it went, as a dict."""
        if self.process is None:
            return {'stopped': False, 'reason': 'never started'}
        if self.process.poll() is not None:
            return {'stopped': True, 'exit_code': self.process.returncode,
                    'seconds': 0.0, 'killed': False, 'note': 'had already ended'}
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        killed = False
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            killed = True
            self.process.kill()
            self.process.wait(5)
        self.process.stdout.close()
        return {'stopped': True, 'exit_code': self.process.returncode,
                'seconds': round(time.monotonic() - started, 3), 'killed': killed}


def start_server(log_path, extra_args=(), mock_wires=()):
    """
    Start ``remoteio-server`` on 127.0.0.1, a free port, the mock backend;
    with a virtual jumper wire (``--mock-wire OUT:IN``: input IN follows
    output OUT) for each ``(out, in)`` of *mock_wires*.
    """
    script = Path(sys.executable).with_name('remoteio-server')
    command = [str(script)] if script.exists() else [sys.executable, '-m', 'remoteio_server']
    wires = [arg for out, into in mock_wires for arg in ('--mock-wire', f'{out}:{into}')]
    argv = command + ['--host', HOST, '--port', '0', '--backend', 'mock', *wires, *extra_args]
    return ChildProcess('remoteio-server', argv, log_path).start()


def start_echo_server(lifetime):
    argv = [sys.executable, '-m', 'bench.echo', '--lifetime', str(int(lifetime))]
    return ChildProcess('echo server', argv).start()


def start_reference_server(lifetime, log_path=None):
    argv = [sys.executable, '-m', 'bench.reference', '--port', '0',
            '--lifetime', str(int(lifetime))]
    return ChildProcess('reference server', argv, log_path).start()


class JsonLineProcess:
    """
    A program that talks JSON lines on stdin/stdout (:mod:`bench.loadclient`):
    :meth:`read_message` waits (bounded in time and bytes) for its next line,
    :meth:`send` writes one; :meth:`stop` ends it by pid (SIGTERM, then
    SIGKILL) if it is still running. Its stderr goes to *log* (an open file).
    """

    MAX_BYTES = 64 * 1024 * 1024

    def __init__(self, name, argv, log):
        self.name = name
        self.process = subprocess.Popen(argv, cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log)
        self._buffer = b''

    @property
    def pid(self):
        return self.process.pid

    def send(self, message):
        self.process.stdin.write((json.dumps(message) + '\n').encode())
        self.process.stdin.flush()

    def read_message(self, timeout):
        """The next JSON line from the program's stdout."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b'\n' not in self._buffer and len(self._buffer) < self.MAX_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f'{self.name}: no message within {timeout:.1f} s')
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f'{self.name} ended (exit code {self.process.poll()}) '
                                   f'without a message')
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b'\n')
        return json.loads(line)

    def stop(self, timeout=5.0):
        """Wait up to *timeout* for it to end by itself, then SIGTERM, then SIGKILL."""
        try:
            self.process.stdin.close()
        except OSError:
            pass  # it has ended already (broken pipe)
        outcome = {'pid': self.pid, 'killed': None}
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            outcome['killed'] = 'SIGTERM'
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                outcome['killed'] = 'SIGKILL'
                self.process.wait(5)
        self.process.stdout.close()
        outcome['exit_code'] = self.process.returncode
        return outcome


def start_load_client(port, gpios, count, rate, log, lifetime):
    argv = [sys.executable, '-m', 'bench.loadclient', '--port', str(port),
            '--gpios', ','.join(map(str, gpios)), '--count', str(count), '--rate', str(rate),
            '--lifetime', str(int(lifetime))]
    return JsonLineProcess(f'load client {",".join(map(str, gpios))}', argv, log)


def start_read_client(port, gpios, log, lifetime):
    argv = [sys.executable, '-m', 'bench.readclient', '--port', str(port),
            '--gpios', ','.join(map(str, gpios)), '--lifetime', str(int(lifetime))]
    return JsonLineProcess(f'read client {",".join(map(str, gpios))}', argv, log)


def stop_server_tree(server):
    """
    Stop the server and check that it took its whole process tree with it.
    Processes of the tree still alive afterwards are reported and SIGKILLed
    (by pid: they were started by this run's server).
    """
    tree = process_tree(server.pid) if server.process and server.process.poll() is None else []
    outcome = server.stop()
    time.sleep(0.2)
    leftovers = [pid for pid in tree if pid != server.pid and _alive(pid)]
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    outcome['processes_before_stop'] = len(tree)
    outcome['left_running'] = leftovers
    return outcome


def _alive(pid):
    stat = read_stat(pid)
    return stat is not None and stat['state'] != 'Z'


# /proc accounting -------------------------------------------------------------

def read_stat(pid):
    """``/proc/PID/stat`` as {state, ppid, cpu_ticks}, or None if the process is gone."""
    try:
        text = Path(f'/proc/{pid}/stat').read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold anything.
    fields = text[text.rindex(')') + 2:].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return {'state': fields[0], 'ppid': int(fields[1]),
            'cpu_ticks': int(fields[11]) + int(fields[12])}


def parent_of_every_process():
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat is not None:
                parents[int(entry)] = stat['ppid']
    return parents


def process_tree(root):
    """*root* and all its descendants, parents before children."""
    children = {}
    for pid, ppid in parent_of_every_process().items():
        children.setdefault(ppid, []).append(pid)
    tree, queue = [], [root]
    while queue and len(tree) < 10000:
        pid = queue.pop(0)
        tree.append(pid)
        queue.extend(sorted(children.get(pid, ())))
    return tree


def command_line(pid):
    try:
        raw = Path(f'/proc/{pid}/cmdline').read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return ''
    return raw.replace(b'\0', b' ').decode('utf-8', 'replace').strip()


def server_roles(root):
    """
    The server's process tree by role: ``{'server': [pid], 'zygote': [...],
    'workers': [...], 'other': [...]}``. Workers are the zygote's children.
    """
    tree = process_tree(root)
    zygotes = [pid for pid in tree
               if 'remoteio_server.zygote' in command_line(pid)
               and read_stat(pid) and read_stat(pid)['ppid'] == root]
    workers = [pid for pid in tree if (read_stat(pid) or {}).get('ppid') in zygotes]
    other = [pid for pid in tree if pid != root and pid not in zygotes and pid not in workers]
    return {'server': [root], 'zygote': zygotes, 'workers': workers, 'other': other}


def worker_count(root):
    return len(server_roles(root)['workers'])


def wait_for_workers(root, expected, timeout):
    """Wait (polling, bounded) until the server has *expected* workers; return the count."""
    deadline = time.monotonic() + timeout
    count = worker_count(root)
    while count != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        count = worker_count(root)
    return count


def cpu_seconds_by_role(root):
    """CPU seconds used so far by each role of the server's tree (see :func:`server_roles`)."""
    return {role: sum(cpu_ticks(pids).values()) / CLOCK_TICKS_PER_SECOND
            for role, pids in server_roles(root).items()}


def cpu_ticks_by_role(root):
    """``{role: {pid: ticks}}`` of the server's tree now (see :func:`server_roles`)."""
    return {role: cpu_ticks(pids) for role, pids in server_roles(root).items()}


def cpu_seconds_between(before, after):
    """
    ``{role: {pid: CPU seconds}}`` used between two :func:`cpu_ticks_by_role`
    readings, by the processes of each role at the second one (a process
    that appeared meanwhile counts whole; one that ended is not seen).
    """
    earlier = {pid: ticks for pids in before.values() for pid, ticks in pids.items()}
    return {role: {pid: (ticks - earlier.get(pid, 0)) / CLOCK_TICKS_PER_SECOND
                   for pid, ticks in pids.items()}
            for role, pids in after.items()}


def cpu_ticks(pids):
    """{pid: utime + stime in clock ticks} for those of *pids* still running."""
    ticks = {}
    for pid in pids:
        stat = read_stat(pid)
        if stat is not None:
            ticks[pid] = stat['cpu_ticks']
    return ticks


def memory_kb(pid):
    """``{'uss': kB, 'pss': kB}`` from ``/proc/PID/smaps_rollup``, or None if gone."""
    try:
        lines = Path(f'/proc/{pid}/smaps_rollup').read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = {}
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith(':') and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
    return {'uss': fields.get('Private_Clean', 0) + fields.get('Private_Dirty', 0),
            'pss': fields.get('Pss', 0)}


# CPU affinity ------------------------------------------------------------------

def thread_ids(pid):
    """The thread ids of process *pid* (none if it is gone)."""
    try:
        return [int(tid) for tid in os.listdir(f'/proc/{pid}/task') if tid.isdigit()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def _affinity(pid):
    """The CPUs *pid* may run on (all of this process's if it is gone)."""
    try:
        return os.sched_getaffinity(pid)
    except (ProcessLookupError, OSError):
        return os.sched_getaffinity(0)


def _set_threads(pids, cpus, saved):
    """Set the affinity of every thread of *pids* to *cpus*; remember the old one in *saved*."""
    for pid in pids:
        for tid in thread_ids(pid):
            try:
                saved.setdefault(tid, os.sched_getaffinity(tid))
                os.sched_setaffinity(tid, cpus)
            except (ProcessLookupError, PermissionError, OSError):
                pass     # ended meanwhile


def _restore_threads(pids, saved, default):
    for pid in pids:
        for tid in thread_ids(pid):
            try:
                os.sched_setaffinity(tid, saved.get(tid, default))
            except (ProcessLookupError, PermissionError, OSError):
                pass


@contextmanager
def pinned(client_cpu, server_cpu, server_roots, client_pids=()):
    """
    Within the block, every thread of this process and of *client_pids* runs
    on *client_cpu* only, and every thread of every process of the trees of
    *server_roots* on *server_cpu* only (``os.sched_setaffinity`` is per
    thread: each one is set). Threads and processes started meanwhile inherit
    the affinity of their parent. Afterwards every thread gets back what it had,
    and those started meanwhile what their process's main thread had.
    """
    saved = {}
    ours = [os.getpid(), *client_pids]
    defaults = {pid: _affinity(pid) for pid in [*ours, *server_roots]}
    trees = {root: process_tree(root) for root in server_roots}
    try:
        _set_threads(ours, {client_cpu}, saved)
        for tree in trees.values():
            _set_threads(tree, {server_cpu}, saved)
        yield
    finally:
        for pid in ours:
            _restore_threads([pid], saved, defaults[pid])
        for root in server_roots:
            _restore_threads(process_tree(root), saved, defaults[root])


# The machine ------------------------------------------------------------------

def cpu_model():
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def git(*args):
    """Output of a read-only git command in the repository, or None."""
    try:
        done = subprocess.run(['git', *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.rstrip('\n') if done.returncode == 0 else None


def machine_info():
    from importlib.metadata import PackageNotFoundError, version
    from remoteio_factory import __version__
    try:
        gpiozero_version = version('gpiozero')
    except PackageNotFoundError:
        gpiozero_version = None
    return {
        'nproc': len(os.sched_getaffinity(0)),
        'cpu_count': os.cpu_count(),
        'cpu_model': cpu_model(),
        'python': platform.python_version(),
        'python_implementation': platform.python_implementation(),
        'platform': platform.platform(),
        'gpiozero': gpiozero_version,
        'remoteio_factory': __version__,
        'git_commit': git('rev-parse', 'HEAD'),
        # Tracked files changed since that commit (the figures are of the work tree).
        'git_changed': (git('status', '--porcelain', '--untracked-files=no') or '').splitlines(),
        'clock_ticks_per_second': CLOCK_TICKS_PER_SECOND,
        'load_average_at_start': os.getloadavg(),
    }
