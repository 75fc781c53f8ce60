"""
``python -m bench [--quick] [--json PATH]``: benchmark remoteio-factory
against a server of its own.

The run starts a fresh ``remoteio-server --host 127.0.0.1 --port 0 --backend
mock`` (two spare workers, the default) and a plain Python TCP echo server
(:mod:`bench.echo`), each in its own process, and measures:

1. **Baseline**: round trips of 32-byte messages to the echo server
   (TCP_NODELAY at both ends); median and p99 in µs.
2. **Round trips through the factory**: ``pin = factory.pin(17)`` as an
   output, then ``pin.state = 1/0`` followed by a read of ``pin.state``,
   timed per pair; and reads alone. Median and p99 in µs, and the ratio of
   the medians to the echo's (target for write→read: ≤ 2.0×). Every read
   must show the write before it.
3. **Pipelined writes**, one client, on 1 pin and on 8 pins: N writes
   posted as fast as possible (each pin alternating 1/0), then one read per
   pin (a read waits until every earlier write has been carried out).
   Writes per second from the first write to the last read (target ≥
   20000/s). The server's per-pin ``writes`` counter (``status``) must have
   grown by exactly what was posted to that pin.
4. **Pin claim**: time to construct ``OutputDevice(gpio, pin_factory=...)``
   on each of GPIO 2..27 (26 pins) with a new factory; median in ms
   (target ≤ 10 ms).
5. **Idle CPU** with those 26 pins claimed, over 5 s (2 s with --quick):
   utime + stime from ``/proc/PID/stat`` of the server and every process
   below it (zygote, workers), as % of one core
   (target ≤ 1 %).
6. **Memory** with those 26 pins claimed: USS (Private_Clean +
   Private_Dirty) and PSS from ``/proc/PID/smaps_rollup`` of the same
   processes; total (target: USS ≤ 100 MB) and the median per worker.

It prints a table (figure, value, baseline, ratio, target, result) and
writes everything, with the raw statistics and a description of the
machine, as JSON (default ``bench/results/latest.json``). The server's log
goes to ``server.log`` beside the JSON. Both servers are stopped at the end,
whatever happened (the remoteio server with SIGTERM, and it must take its
whole process tree with it).

Exit status: 0 every target met, 1 a target missed, 2 a measurement failed.
"""

import argparse
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from remoteio_factory import RemoteIOFactory

from bench import figures, harness
from bench.figures import Figure, format_number

DEFAULT_JSON = harness.REPO_ROOT / 'bench' / 'results' / 'latest.json'
SPARES = 2
ROUND_TRIP_GPIO = 17
PIPELINE_GPIOS = [17, 5, 6, 12, 13, 16, 20, 21]
CLAIM_GPIOS = list(range(2, 28))
#: How long to wait for the server's workers to come and go between phases.
SETTLE_TIMEOUT = 20.0


class Run:
    """What a run has measured so far: rows, details per phase, and errors."""

    def __init__(self, plan):
        self.plan = plan
        self.started = datetime.now(timezone.utc).isoformat(timespec='seconds')
        self.figures = []
        self.details = {}
        self.errors = []

    def measure(self, phase, measurement):
        """Run ``measurement()`` → (figures, details); record an error as an ERROR row."""
        try:
            rows, details = measurement()
        except Exception as exc:
            self.fail(phase, exc)
            return None
        self.figures.extend(rows)
        self.details[phase] = details
        return details

    def fail(self, phase, exc):
        error = f'{type(exc).__name__}: {exc}'
        self.errors.append({'phase': phase, 'error': error, 'traceback': traceback.format_exc()})
        self.figures.append(Figure(f'{phase}_error', f'{phase}: {error}'[:70], None, '',
                                   error=error))


# Phases ---------------------------------------------------------------------------

def measure_client(run, server, echo_details):
    """Phases 2 and 3, on one factory that is closed afterwards."""
    factory = RemoteIOFactory(harness.HOST, server.port)
    try:
        pin = figures.output_pin(factory, ROUND_TRIP_GPIO)
        if echo_details is None:
            echo_details = {'round_trip_us': {'median': None, 'p99': None}}
        run.measure('round_trips',
                    lambda: figures.measure_round_trips(pin, echo_details, run.plan))
        run.measure('pipelined_1_pin', lambda: figures.measure_pipelined(
            factory, [ROUND_TRIP_GPIO], run.plan, 'pipelined_1', server.pid))
        run.measure('pipelined_8_pins', lambda: figures.measure_pipelined(
            factory, PIPELINE_GPIOS, run.plan, 'pipelined_8', server.pid))
    finally:
        factory.close()


def measure_claimed(run, server):
    """Phases 4 to 6: claim GPIO 2..27 with a new factory, then watch the idle server."""
    factory = RemoteIOFactory(harness.HOST, server.port)
    devices = []
    try:
        started = time.monotonic()
        try:
            devices, durations = figures.claim_devices(factory, CLAIM_GPIOS, run.plan.loop_seconds)
        except Exception as exc:
            run.fail('claims', exc)
            return
        run.measure('claims', lambda: figures.claim_figures(CLAIM_GPIOS, durations))
        claimed = len(devices)
        workers = harness.wait_for_workers(server.pid, claimed + SPARES, SETTLE_TIMEOUT)
        settling = run.details.setdefault('claims', {})
        settling['workers_after_settling'] = workers
        settling['seconds_until_settled'] = time.monotonic() - started
        run.measure('idle_cpu',
                    lambda: figures.measure_idle_cpu(server.pid, run.plan.idle_seconds, claimed))
        run.measure('memory', lambda: figures.measure_memory(server.pid, claimed))
    finally:
        for device in devices:
            device.close()
        factory.close()


def measure_all(run, results_dir):
    echo = server = None
    stops = {}
    try:
        echo = harness.start_echo_server(lifetime=600)
        server = harness.start_server(results_dir / 'server.log', ['--spares', str(SPARES)])
        run.details['server'] = {
            'ready_line': server.ready_line,
            'workers_at_start': harness.wait_for_workers(server.pid, SPARES, SETTLE_TIMEOUT),
        }
        echo_details = run.measure(
            'echo', lambda: figures.measure_echo(echo.pid, echo.port, run.plan))
        try:
            measure_client(run, server, echo_details)
        except Exception as exc:
            run.fail('client', exc)
        # Let the released pins' workers end before claiming every pin again.
        run.details['server']['workers_between_phases'] = harness.wait_for_workers(
            server.pid, SPARES, SETTLE_TIMEOUT)
        try:
            measure_claimed(run, server)
        except Exception as exc:
            run.fail('claimed', exc)
    except Exception as exc:
        run.fail('setup', exc)
    finally:
        if server is not None:
            stops['server'] = harness.stop_server_tree(server)
        if echo is not None:
            stops['echo'] = echo.stop()
    run.details['stop'] = stops
    if stops.get('server', {}).get('left_running'):
        run.errors.append({'phase': 'stop', 'error': 'server processes left running after '
                           f'it stopped: {stops["server"]["left_running"]}'})


# Report ---------------------------------------------------------------------------

COLUMNS = ('figure', 'value', 'baseline', 'ratio', 'target', 'result')


def table_row(figure):
    if figure.error:
        result = 'ERROR'
    elif figure.passed is None:
        result = 'FAIL' if figure.target and figure.value is None else ''
    else:
        result = 'pass' if figure.passed else 'FAIL'
    return (
        figure.name,
        format_number(figure.value, figure.unit) if figure.unit else '',
        format_number(figure.baseline, figure.unit) if figure.baseline else '',
        f'{figure.ratio:.2f}×' if figure.ratio is not None else '',
        figure.target.describe(figure.unit) if figure.target else '',
        result,
    )


def format_table(rows):
    rows = [COLUMNS] + [table_row(figure) for figure in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    align = ['<', '>', '>', '>', '<', '<']
    lines = ['  '.join(f'{cell:{a}{w}}' for cell, a, w in zip(row, align, widths)).rstrip()
             for row in rows]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def report(run, machine, seconds):
    return {
        'plan': run.plan.__dict__,
        'started': run.started,
        'seconds': seconds,
        'machine': machine,
        'figures': [figure.as_dict() for figure in run.figures],
        'details': run.details,
        'errors': run.errors,
    }


def exit_status(run):
    if run.errors:
        return 2
    return 1 if any(figure.passed is False for figure in run.figures) else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench', description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer samples (under a minute)')
    p.add_argument('--json', type=Path, default=DEFAULT_JSON, metavar='PATH',
                   help='where to write the results (default: bench/results/latest.json)')
    args = p.parse_args(argv)
    plan = figures.QUICK if args.quick else figures.FULL
    args.json.parent.mkdir(parents=True, exist_ok=True)

    machine = harness.machine_info()
    print(f'remoteio-factory benchmark ({plan.name}): {machine["cpu_model"]}, '
          f'{machine["nproc"]} CPUs, Python {machine["python"]}', flush=True)
    run = Run(plan)
    started = time.monotonic()
    measure_all(run, args.json.parent)
    seconds = time.monotonic() - started

    print(format_table(run.figures))
    for error in run.errors:
        print(f'\nerror in {error["phase"]}: {error["error"]}', file=sys.stderr)
        if error.get('traceback'):
            print(error['traceback'], file=sys.stderr)
    args.json.write_text(json.dumps(report(run, machine, seconds), indent=2, default=str) + '\n')
    print(f'\n{seconds:.1f} s; results in {args.json}')
    return exit_status(run)


if __name__ == '__main__':
    sys.exit(main())
