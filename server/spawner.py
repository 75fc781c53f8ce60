"""
Starting pin workers from a clean parent.

Flow: server session → **spawner** → zygote (fork) → pin worker.

The server's main process runs threads and is never forked. Workers are
forked by the *zygote* (:mod:`remoteio_server.zygote`): a single-threaded
interpreter started once, with gpiozero and the worker code preloaded. To
make a claim cost one message instead of a process start, the spawner keeps
a few *spare* workers whose backend is already built; a background thread
tops them up after each claim.
"""

import array
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from remoteio_factory.transport import set_send_timeout
from remoteio_server.messages import Err, Ready, decode_reply

log = logging.getLogger('remoteio_server.spawner')

#: How long a worker may take to build its backend and say ready.
START_TIMEOUT = 30.0
#: How long a message to a worker may wait for the worker to read.
WORKER_SEND_TIMEOUT = 5.0
#: How long a worker told to end (SIGTERM) has to switch its pin off before it is killed.
TERMINATE_GRACE = 2.0


class WorkerStartError(RuntimeError):
    """A worker process could not start its backend."""


class Worker:
    """A started worker process and the server's end of its socket."""

    def __init__(self, pid, conn):
        self.pid = pid
        self.conn = conn
        self.ready = False
        self._kill_lock = threading.Lock()
        self._killed = False
        try:
            self._pidfd = os.pidfd_open(pid)   # survives pid reuse; Linux 5.3+
        except (AttributeError, OSError):
            self._pidfd = None

    def wait_ready(self, timeout=START_TIMEOUT):
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.kill(grace=0)
            raise WorkerStartError(f'worker {self.pid} did not start within {timeout} s')
        try:
            message = decode_reply(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.kill(grace=0)
            raise WorkerStartError(f'worker {self.pid} died while starting') from None
        if type(message) is not Ready:
            self.kill(grace=0)
            reason = message.error['message'] if type(message) is Err else message
            raise WorkerStartError(f'worker could not build its backend: {reason}')
        self.ready = True

    def alive(self):
        if self._pidfd is not None:
            return not select.select([self._pidfd], [], [], 0)[0]
        try:
            with open(f'/proc/{self.pid}/stat') as stat:
                return stat.read().split(') ', 1)[1][0] != 'Z'
        except (FileNotFoundError, IndexError):
            return False

    def _wait_exit(self, timeout):
        if self._pidfd is not None:
            return bool(select.select([self._pidfd], [], [], timeout)[0])
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def kill(self, grace=2.0):
        """
        Close the socket (a worker that still serves a pin then releases it
        and exits), give the process *grace* seconds to end, then kill it.
        The zygote reaps it. Safe to call more than once, from several threads.
        """
        with self._kill_lock:
            if not self._killed:
                self._kill(grace)
                self._killed = True

    def close_socket(self):
        """Close the server's end (idempotent); the process then releases its pin and ends."""
        try:
            self.conn.close()
        except OSError:
            pass

    def terminate(self, grace=TERMINATE_GRACE):
        """
        End the process, leaving the socket to its reader: the reader then sees
        the end and cleans up (closing the socket under a thread blocked reading
        it would break that thread instead). For a worker that stopped reading,
        one whose socket broke, or one that must be cut short at shutdown.

        SIGTERM first: a worker that can still run Python switches its pin off
        and releases it, then exits. Only if it is still there *grace* seconds
        later (stuck in a backend call) is it killed. Never blocks.
        """
        self._signal(signal.SIGTERM)
        timer = threading.Timer(grace, self._kill_if_alive)
        timer.daemon = True
        timer.start()

    def _kill_if_alive(self):
        if self.alive():
            log.error('worker %d did not end within %s s of SIGTERM: killing it',
                      self.pid, TERMINATE_GRACE)
            self._signal(signal.SIGKILL)

    def _signal(self, signum):
        with self._kill_lock:
            if self._killed:
                return
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signum)
                else:
                    os.kill(self.pid, signum)
            except (ProcessLookupError, OSError):
                pass

    def _kill(self, grace):
        try:
            self.conn.close()
        except OSError:
            pass
        if not self._wait_exit(grace):
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
            self._wait_exit(5)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Zygote:
    """The zygote process and its control socket."""

    def __init__(self, env=None, records_fd=None):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        command = [sys.executable, '-m', 'remoteio_server.zygote', str(theirs.fileno())]
        fds = [theirs.fileno()]
        if records_fd is not None:
            command.append(str(records_fd))
            fds.append(records_fd)
        self.process = subprocess.Popen(command, pass_fds=fds, stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        self.control = ours
        self._replies = ours.makefile('rb')
        self._lock = threading.Lock()

    def run(self, target, *args):
        """Fork *target* (a name the zygote knows); return (pid, Connection)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        request = json.dumps({'run': target, 'args': list(args)}).encode()
        try:
            with self._lock:
                self.control.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                  array.array('i', [theirs.fileno()]).tobytes())])
                line = self._replies.readline()
        except OSError as exc:
            ours.close()
            raise WorkerStartError(f'the zygote is gone: {exc}') from None
        finally:
            theirs.close()
        if not line:
            ours.close()
            raise WorkerStartError('the zygote is gone')
        reply = json.loads(line)
        if 'pid' not in reply:
            ours.close()
            raise WorkerStartError(reply.get('error', 'the zygote refused'))
        # A send to a worker that has stopped reading fails after this long
        # (the server then kills the worker) instead of blocking a session.
        set_send_timeout(ours, WORKER_SEND_TIMEOUT)
        return reply['pid'], Connection(ours.detach())

    def prepare(self, revision):
        """Have the zygote build the board's description for its workers to share."""
        request = json.dumps({'run': 'prepare', 'args': [revision]}).encode()
        try:
            with self._lock:
                self.control.sendall(request)
                line = self._replies.readline()
        except OSError as exc:
            raise WorkerStartError(f'the zygote is gone: {exc}') from None
        reply = json.loads(line) if line else {'error': 'the zygote is gone'}
        if not reply.get('ok'):
            log.warning('the workers will each describe the board themselves: %s',
                        reply.get('error'))

    def close(self):
        """Close the control socket: the zygote sees it and exits."""
        for closable in (self._replies, self.control):
            try:
                closable.close()
            except OSError:
                pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Spawner:
    """Starts workers for one backend and keeps *spares* of them ready."""

    def __init__(self, backend, revision=None, spares=2, env=None, records=None):
        self.backend = backend
        self.revision = revision
        self.spares = spares
        self._env = env
        self._records_fd = records.fd if records is not None else None
        self._requested = None        # what probe() was asked for (auto, or a backend)
        self._board = None            # the board revision the zygote describes for workers
        self._zygote = Zygote(env, self._records_fd)
        self._zygote_lock = threading.Lock()
        self._ready = []
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._closed = False

    # Probing ---------------------------------------------------------------

    def probe(self, name):
        """
        Resolve backend *name* (``auto`` included) in a throw-away process, so
        the server's process never opens a GPIO chip. Returns
        ``(backend, board, reasons)``: *board* the board's description
        (:func:`.board.describe`).
        """
        self._requested = name
        pid, conn = self._run('probe', name, self.revision)
        probe = Worker(pid, conn)
        try:
            if not conn.poll(START_TIMEOUT):
                raise WorkerStartError(f'probing backend {name} took over {START_TIMEOUT} s')
            reply = json.loads(conn.recv_bytes())
        except EOFError:
            raise WorkerStartError(f'probing backend {name}: the probe process died') from None
        finally:
            probe.kill(grace=1.0)         # (one that hangs must not outlive the server)
        if reply[0] != 'ok':
            raise WorkerStartError(reply[1])
        return reply[1], reply[2], reply[3]

    def use(self, backend, revision, board=None):
        """
        Start workers for *backend* from now on (*revision*: the mock board's); *board*:
        the revision of the board they run on, described once for all of them.
        """
        self.backend, self.revision, self._board = backend, revision, board
        if board is not None:
            self._zygote.prepare(board)

    # Workers ---------------------------------------------------------------

    def start(self):
        """Start the spare workers' filler thread."""
        threading.Thread(target=self._fill, name='remoteio-spawner', daemon=True).start()

    def _run(self, target, *args):
        """Fork *target* in the zygote; a zygote that has died is replaced, once."""
        zygote = self._zygote
        try:
            return zygote.run(target, *args)
        except WorkerStartError:
            try:
                zygote.process.wait(1)
            except subprocess.TimeoutExpired:
                raise                     # it lives: the failure is not its death
        with self._zygote_lock:
            if self._zygote is zygote and not self._closed:
                log.error('the zygote (pid %d) ended with status %s: starting a new one',
                          zygote.process.pid, zygote.process.returncode)
                zygote.close()
                self._zygote = Zygote(self._env, self._records_fd)
                if self._board is not None:
                    self._zygote.prepare(self._board)
            zygote = self._zygote
        return zygote.run(target, *args)

    def _spawn(self):
        # a backend that auto chose is used as it was probed (pigpio: the local daemon)
        pid, conn = self._run('worker', self.backend, self.revision, self._requested == 'auto')
        return Worker(pid, conn)

    def _fill(self):
        while True:
            with self._lock:
                while not self._closed and len(self._ready) >= self.spares:
                    self._wanted.wait()
                if self._closed:
                    return
            try:
                spare = self._spawn()
                spare.wait_ready()
            except Exception as exc:
                log.error('cannot start a spare worker: %s', exc)
                with self._lock:
                    # Do not spin on a broken backend: wait to be asked again.
                    self._wanted.wait(5)
                continue
            with self._lock:
                if self._closed:
                    spare.kill(grace=0)
                    return
                self._ready.append(spare)

    def take(self):
        """Return a ready worker, not yet bound to a pin (never one that has died)."""
        while True:
            with self._lock:
                spare = self._ready.pop(0) if self._ready else None
                self._wanted.notify()
            if spare is None:
                spare = self._spawn()
                spare.wait_ready()
                return spare
            # A ready spare has nothing to say until it is claimed: if its socket
            # is readable, it has ended (EOF) or is not what it should be.
            if spare.alive() and not spare.conn.poll(0):
                return spare
            log.warning('spare worker %d has ended: not handing it out', spare.pid)
            spare.kill(grace=0)

    def close(self):
        with self._lock:
            self._closed = True
            spares, self._ready = self._ready, []
            self._wanted.notify_all()
        for spare in spares:
            spare.kill()
        self._zygote.close()
