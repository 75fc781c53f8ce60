"""
One client of the read-load phase, run in its own process by the benchmark.

``python -m bench.readclient --port PORT --gpios 2,3,4`` connects its own
``RemoteIOFactory(host='127.0.0.1', port=PORT)`` (to our server or to the
reference server: the same client library either way), claims each GPIO as
an output, prints ``{"ready": {"pid": ...}}`` and then takes commands, one
JSON line each, on stdin:

* ``{"run": {"start": T, "seconds": S}}``: one thread per pin reads
  ``pin.state`` as fast as it can from T (the machine's monotonic clock,
  which every process shares) until T + S; then it prints ``{"result":
  {"reads": N, "latency_us": [...], "errors": [...]}}``: the reads that
  completed in the window and the round trip of each, in µs.
* ``{"stop": true}`` (or the end of stdin): close the factory and exit.

It ends itself (SIGALRM) after ``--lifetime`` seconds whatever happens.
"""

import argparse
import os
import signal
import sys
import threading
import time
import traceback

from bench.childio import Commands, emit

HOST = '127.0.0.1'
#: Bounds: commands per process, and reads per pin per run.
MAX_COMMANDS = 1000
MAX_READS = 2_000_000
#: How long a run may take beyond its window (a read stuck on a server).
RUN_MARGIN = 15.0


class Reader(threading.Thread):
    """Reads one pin as fast as it can within [start, end): count and round trips."""

    def __init__(self, pin, start, end):
        super().__init__(name=f'reader-GPIO{pin._gpio}', daemon=True)
        self.pin, self.start_at, self.end = pin, start, end
        self.latency_us = []
        self.error = None

    def run(self):
        try:
            self.read_all()
        except Exception as exc:
            self.error = f'{type(exc).__name__}: {exc}'

    def read_all(self):
        wait = self.start_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        clock, pin, samples, end = time.perf_counter_ns, self.pin, self.latency_us, self.end
        for _ in range(MAX_READS):
            started = clock()
            pin.state
            samples.append((clock() - started) / 1000)
            if time.monotonic() >= end:
                return


def run_window(pins, start, seconds):
    """One run: every pin read concurrently from *start* for *seconds*."""
    readers = [Reader(pin, start, start + seconds) for pin in pins]
    for reader in readers:
        reader.start()
    join_by = start + seconds + RUN_MARGIN
    for reader in readers:
        reader.join(max(0.0, join_by - time.monotonic()))
    latency = [round(x, 1) for reader in readers for x in reader.latency_us]
    return {'reads': len(latency), 'latency_us': latency,
            'errors': [r.error for r in readers if r.error],
            'stuck': sum(1 for r in readers if r.is_alive())}


def serve(args):
    from remoteio_factory import RemoteIOFactory

    gpios = [int(g) for g in args.gpios.split(',')]
    factory = RemoteIOFactory(host=HOST, port=args.port)
    try:
        pins = []
        for gpio in gpios:
            pin = factory.pin(gpio)
            pin.function = 'output'
            pins.append(pin)
        emit({'ready': {'pid': os.getpid(), 'gpios': gpios}})
        commands = Commands()
        for _ in range(MAX_COMMANDS):
            command = commands.next(args.lifetime)
            if command is not None and 'run' in command:
                run = command['run']
                emit({'result': run_window(pins, float(run['start']), float(run['seconds']))})
            else:
                return
    finally:
        factory.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.readclient',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--gpios', required=True, help='comma-separated GPIO numbers')
    p.add_argument('--lifetime', type=float, default=600.0,
                   help='seconds after which the client ends itself (default: %(default)s)')
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, lambda signum, frame: os._exit(3))
    signal.alarm(max(1, int(args.lifetime)))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    try:
        serve(args)
    except Exception as exc:
        emit({'error': f'{type(exc).__name__}: {exc}', 'traceback': traceback.format_exc()})
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
