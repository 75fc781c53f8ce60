"""
Starting pin workers from a clean parent.

Flow: server session → **spawner** → pin worker process.

Workers are forked by multiprocessing's *forkserver*: a small single-threaded
process started (by fork+exec) when the server starts, with gpiozero and the
worker module already imported. The server's own main process, which runs
threads, is never forked. To make a claim cost one message instead of a
process start, the spawner keeps a few *spare* workers whose backend is
already built; a background thread tops them up after each claim.
"""

import json
import logging
import multiprocessing
import threading

from remoteio_server import backends, worker

log = logging.getLogger('remoteio_server.spawner')

#: How long a worker may take to build its backend and say ready.
START_TIMEOUT = 30.0


class WorkerStartError(RuntimeError):
    """A worker process could not start its backend."""


class Worker:
    """A started worker process and the server's end of its pipe."""

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.pid = process.pid
        self.ready = False

    def wait_ready(self, timeout=START_TIMEOUT):
        if self.ready:
            return
        if not self.conn.poll(timeout):
            self.kill(grace=0)
            raise WorkerStartError(f'worker {self.pid} did not start within {timeout} s')
        try:
            message = json.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.kill()
            raise WorkerStartError(f'worker {self.pid} died while starting') from None
        if message[0] != 'ready':
            self.kill()
            raise WorkerStartError(f'worker could not build its backend: {message[2]["message"]}')
        self.ready = True

    def kill(self, grace=2.0):
        """
        Close the pipe (a worker that still serves a pin then releases it and
        exits), give the process *grace* seconds to end, then kill it; reap it.
        """
        try:
            self.conn.close()
        except OSError:
            pass
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _probe_main(conn, name, revision):
    try:
        result = backends.probe(name, revision)
    except Exception as exc:
        conn.send(('error', f'{exc}'))
    else:
        conn.send(('ok',) + result)
    conn.close()


class Spawner:
    """Starts workers for one backend and keeps *spares* of them ready."""

    def __init__(self, backend, revision=None, spares=2):
        self.backend = backend
        self.revision = revision
        self.spares = spares
        self._context = multiprocessing.get_context('forkserver')
        self._context.set_forkserver_preload(['remoteio_server.worker'])
        self._ready = []
        self._lock = threading.Lock()
        self._wanted = threading.Condition(self._lock)
        self._closed = False
        self._filler = None

    # Probing ---------------------------------------------------------------

    def probe(self, name):
        """
        Resolve backend *name* (``auto`` included) in a throw-away process, so
        the server's process never opens a GPIO chip. Returns
        ``(backend, revision_hex, reasons)``.
        """
        parent, child = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_probe_main, args=(child, name, self.revision),
            name='remoteio-probe', daemon=True)
        process.start()
        child.close()
        try:
            if not parent.poll(START_TIMEOUT):
                raise WorkerStartError(f'probing backend {name} took over {START_TIMEOUT} s')
            reply = parent.recv()
        except EOFError:
            raise WorkerStartError(f'probing backend {name}: the probe process died') from None
        finally:
            parent.close()
            process.join(5)
        if reply[0] != 'ok':
            raise WorkerStartError(reply[1])
        return reply[1:]

    # Workers ---------------------------------------------------------------

    def start(self):
        """Start the spare workers' filler thread."""
        self._filler = threading.Thread(
            target=self._fill, name='remoteio-spawner', daemon=True)
        self._filler.start()

    def _spawn(self):
        server_end, worker_end = multiprocessing.Pipe(duplex=True)
        process = self._context.Process(
            target=worker.main, args=(worker_end, self.backend, self.revision),
            name='remoteio-worker', daemon=True)
        process.start()
        worker_end.close()
        return Worker(process, server_end)

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
                    spare.kill()
                    return
                self._ready.append(spare)

    def take(self):
        """Return a ready worker, not yet bound to a pin."""
        with self._lock:
            spare = self._ready.pop(0) if self._ready else None
            self._wanted.notify()
        if spare is None:
            spare = self._spawn()
        spare.wait_ready()
        return spare

    def close(self):
        with self._lock:
            self._closed = True
            spares, self._ready = self._ready, []
            self._wanted.notify_all()
        for spare in spares:
            spare.kill()

