"""
One client of the load phase, run in its own process by the benchmark.

``python -m bench.loadclient --port PORT --gpios 2,3,4 --count N [--rate 25]``
connects its own ``RemoteIOFactory(host='127.0.0.1', port=PORT)``, makes each
GPIO an output with PWM (``pin.frequency = 100``), and talks JSON lines:

1. prints ``{"ready": ...}`` with each pin's ``writes`` counter and the time
   of its last history entry (the *mark*: later entries are this run's);
2. reads ``{"start": T}`` from stdin (T on the machine's monotonic clock,
   which every process shares), bounded by ``--start-timeout``;
3. runs one writer thread per pin: write *k* (k = 0..N-1) goes out at the
   absolute deadline ``T + k / rate`` (a late writer does not skip: it
   catches up), with the duty cycle :func:`value` (k) so that each write can
   be told apart in the server's history; the loop is bounded by N and by
   ``N / rate + LATE_MARGIN`` seconds;
4. reads each pin once (a read waits for every earlier write), takes
   ``status(history=1000)``, and prints ``{"result": ...}``: per pin the
   writes sent, the lateness of each write, the final read, the server's
   ``writes`` counter and its history after the mark.

On a failure it prints ``{"error": ...}`` and exits with status 1. It ends
itself (SIGALRM) after ``--lifetime`` seconds whatever happens.
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
PWM_FREQUENCY = 100
#: Duty cycles encode the write's counter: ((k % VALUE_PERIOD) + 1) / VALUE_SCALE.
#: Consecutive values always differ (so each write is a recorded change), and
#: while a pin gets fewer than VALUE_PERIOD writes every value is unique, so a
#: lost, duplicated or reordered write is identified in the history.
VALUE_PERIOD = 9973
VALUE_SCALE = 10000
#: How late a writer may fall behind its last deadline before it gives up.
LATE_MARGIN = 5.0
HISTORY_LENGTH = 1000


def value(k):
    return ((k % VALUE_PERIOD) + 1) / VALUE_SCALE


def counter(duty):
    """The k (mod VALUE_PERIOD) that :func:`value` encoded in *duty*, or None."""
    if not isinstance(duty, (int, float)):
        return None
    number = round(duty * VALUE_SCALE) - 1
    return number if 0 <= number < VALUE_PERIOD else None


def pin_status(factory, gpios):
    """``{gpio: status dict}`` of *gpios* (history: up to the last 1000 entries)."""
    status = factory.status(history=HISTORY_LENGTH)
    by_gpio = {pin['gpio']: pin for pin in status['pins']}
    return {gpio: by_gpio.get(gpio, {}) for gpio in gpios}


class Writer(threading.Thread):
    """Writes value(0..count-1) to *pin* at *rate* Hz from *start* (absolute deadlines)."""

    def __init__(self, pin, start, rate, count):
        super().__init__(name=f'writer-GPIO{pin._gpio}', daemon=True)
        self.pin, self.start_at, self.rate, self.count = pin, start, rate, count
        self.sent = 0
        self.lateness = []
        self.first = self.last = None
        self.error = None

    def run(self):
        try:
            self.write_all()
        except Exception as exc:
            self.error = f'{type(exc).__name__}: {exc}'

    def write_all(self):
        period = 1.0 / self.rate
        give_up = self.start_at + self.count * period + LATE_MARGIN
        clock = time.monotonic
        for k in range(self.count):
            deadline = self.start_at + k * period
            now = clock()
            if now < deadline:
                time.sleep(deadline - now)
                now = clock()
            if now > give_up:
                self.error = f'gave up after {k} writes: {now - deadline:.3f} s behind'
                return
            self.pin.state = value(k)
            self.lateness.append(now - deadline)
            self.sent = k + 1
            if self.first is None:
                self.first = now
            self.last = now


def run(args):
    from remoteio_factory import RemoteIOFactory

    gpios = [int(g) for g in args.gpios.split(',')]
    factory = RemoteIOFactory(host=HOST, port=args.port)
    try:
        pins = []
        for gpio in gpios:
            pin = factory.pin(gpio)
            pin.function = 'output'
            pin.frequency = PWM_FREQUENCY
            pins.append(pin)
        before = pin_status(factory, gpios)
        marks = {gpio: (info.get('history') or [{'t': float('-inf')}])[-1]['t']
                 for gpio, info in before.items()}
        emit({'ready': {'pid': os.getpid(), 'gpios': gpios,
                        'writes_before': {g: before[g].get('writes') for g in gpios},
                        'marks': marks}})

        command = Commands().next(args.start_timeout)
        if command is None:
            raise EOFError('stdin closed before the start time came')
        start = float(command['start'])
        writers = [Writer(pin, start, args.rate, args.count) for pin in pins]
        for writer in writers:
            writer.start()
        join_by = start + args.count / args.rate + LATE_MARGIN + 1.0
        for writer in writers:
            writer.join(max(0.0, join_by - time.monotonic()))
        finished = time.monotonic()
        final = {}
        for gpio, pin in zip(gpios, pins):
            try:
                final[gpio] = pin.state   # waits for every earlier write to this pin
            except Exception as exc:
                final[gpio] = f'{type(exc).__name__}: {exc}'
        after = pin_status(factory, gpios)
        result = {'pid': os.getpid(), 'start': start, 'writers_finished': finished, 'pins': {}}
        for gpio, writer in zip(gpios, writers):
            info = after[gpio]
            mark = marks[gpio]
            history = info.get('history') or []
            result['pins'][gpio] = {
                'sent': writer.sent,
                'alive': writer.is_alive(),
                'error': writer.error,
                'first_write': writer.first,
                'last_write': writer.last,
                'lateness_s': writer.lateness,
                'final_read': final[gpio],
                'writes_before': before[gpio].get('writes'),
                'writes_after': info.get('writes'),
                'history_length': len(history),
                # The history overflowed: entries after the mark were dropped.
                'history_overflowed': (len(history) >= HISTORY_LENGTH
                                       and history[0]['t'] > mark),
                'history': [[entry['t'], entry['state']] for entry in history
                            if 'state' in entry and entry['t'] > mark],
                'status_error': info.get('error'),
            }
        emit({'result': result})
    finally:
        factory.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.loadclient',
                                description=__doc__.split('\n\n')[0])
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--gpios', required=True, help='comma-separated GPIO numbers')
    p.add_argument('--count', type=int, required=True, help='writes per pin')
    p.add_argument('--rate', type=float, default=25.0, help='writes per second per pin')
    p.add_argument('--start-timeout', type=float, default=60.0)
    p.add_argument('--lifetime', type=float, default=600.0,
                   help='seconds after which the client ends itself (default: %(default)s)')
    args = p.parse_args(argv)
    signal.signal(signal.SIGALRM, lambda signum, frame: os._exit(3))
    signal.alarm(max(1, int(args.lifetime)))
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if args.count >= VALUE_PERIOD:
        p.error(f'--count must be below {VALUE_PERIOD} (each value must be unique)')
    try:
        run(args)
    except Exception as exc:
        emit({'error': f'{type(exc).__name__}: {exc}', 'traceback': traceback.format_exc()})
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
