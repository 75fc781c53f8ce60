"""
The zygote: a small single-threaded process, started once by the server,
that forks every pin worker.

Flow: server → spawner → **zygote** (fork) → pin worker.

The server's own process runs threads and must never fork. The zygote is a
fresh interpreter (``python -m remoteio_server.zygote FD``) that imports
gpiozero and the worker code once, freezes what it has loaded out of the
garbage collector's reach (so a forked worker shares those pages instead of
copying them), and then waits on its control socket. Each request carries
one end of a fresh socket pair (SCM_RIGHTS) and the name of what to run;
the zygote forks, the child runs it on that socket, and the zygote answers
with the child's pid. It reaps its children as they end, and exits when the
server closes the control socket (or dies).

Its command line names the control socket and, optionally, the file holding
the pins' shared records (:mod:`.records`), which it maps once: every worker
it forks inherits the mapping.

Requests are one JSON line: ``{"run": "worker"|"probe", "args": [...]}``;
and, with no socket, ``{"run": "prepare", "args": [revision]}``: build the
description of the server's board once, here, for every worker forked after
it to share (:func:`backends.prepare_board`).
"""

import array
import gc
import json
import os
import shutil
import signal
import socket
import sys
from multiprocessing.connection import Connection

from remoteio_server import backends, records, worker

#: What a request may run, by name: nothing else can be started.
TARGETS = {
    'worker': worker.main,
}


def probe_main(conn, name, revision):
    """Resolve a backend name and report it (see :func:`backends.probe`)."""
    workdir = worker.own_workdir()       # (lgpio's FIFOs: as a worker's, see there)
    try:
        backend, board, reasons = backends.probe(name, revision)
    except Exception as exc:
        conn.send_bytes(json.dumps(['error', str(exc)]).encode())
    else:
        conn.send_bytes(json.dumps(['ok', backend, board, reasons]).encode())
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


TARGETS['probe'] = probe_main


def _reap(signum, frame):
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _receive(control):
    """One request: (target, args, fd), or None when the server has gone."""
    fds = array.array('i')
    try:
        message, ancillary, _, _ = control.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    except InterruptedError:  # pragma: no cover - retried by Python since 3.5
        return _receive(control)
    if not message:
        return None
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    request = json.loads(message)
    return request['run'], request['args'], fds[0] if fds else None


def _child(control, target, args, fd):
    control.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        TARGETS[target](Connection(fd), *args)
    except BaseException:  # report, then end the child whatever happened
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(control):
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the server decides when to stop
    signal.signal(signal.SIGCHLD, _reap)
    gc.collect()
    gc.freeze()
    while True:
        request = _receive(control)
        if request is None:
            return
        target, args, fd = request
        if target == 'prepare' and fd is None:
            try:
                backends.prepare_board(*args)
            except Exception as exc:                 # (workers then build their own)
                reply = {'error': f'{type(exc).__name__}: {exc}'}
            else:
                gc.collect()
                gc.freeze()                          # shared with the workers, as the rest
                reply = {'ok': True}
            control.sendall(json.dumps(reply).encode() + b'\n')
            continue
        if target not in TARGETS or fd is None:
            if fd is not None:
                os.close(fd)
            control.sendall(b'{"error": "unknown target"}\n')
            continue
        pid = os.fork()
        if pid == 0:
            _child(control, target, args, fd)
        os.close(fd)
        try:
            control.sendall(json.dumps({'pid': pid}).encode() + b'\n')
        except OSError:
            return                   # the server has gone (shutting down): so do we


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    if len(sys.argv) > 2:
        records.adopt(int(sys.argv[2]))     # the pins' shared records, for every worker
    try:
        serve(control)
    finally:
        control.close()


if __name__ == '__main__':
    main()
