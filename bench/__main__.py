"""
``python -m bench [--quick] [--only PHASE,...] [--json PATH]``: benchmark remoteio-factory
against a server of its own.

The run starts a fresh ``remoteio-server --host 127.0.0.1 --port 0 --backend
mock --mock-wire 0:1`` (two spare workers, the default) and a plain Python
TCP echo server (:mod:`bench.echo`), each in its own process, and measures:

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

7. **Timed task, 1 pin busy**: ``RemoteServer(...).pin(17, 'g').on(time_ms=100)``,
   waited for, 40 times (10 with --quick); the error of each pulse's length
   (its 0 edge − its 1 edge − 100 ms) from the server's per-pin history (the
   worker records each change right after making it). Signed median, and p99
   and max of |error|, in ms (target: p99 ≤ 1 ms). For comparison, the seed
   project's server: +3.9 ms median, +9.5 ms max with 8 pins.
8. **Timed task, 26 pins busy**: the same on GPIO 2..27 at once, 20 rounds
   (5 with --quick); every pulse's error together (target: p99 ≤ 1 ms).
9. **Blink edges**: GPIO 2..27 all blinking at 10 Hz (50 ms on, 50 ms off)
   for *n* cycles, 10 s (3 s with --quick); from the history, each period
   between rising edges − 100 ms (signed median, p99 and max of |error|;
   target: p99 ≤ 1 ms) and each rising edge's drift from the first one plus
   k × 100 ms (max |drift|).
10. **gpiozero's PWMLED.pulse**: ``PWMLED(18).pulse(0.5, 0.5, n=6,
    background=False)`` (n=2 with --quick) through a factory and on a local
    ``MockFactory(pin_class=MockPWMPin)``: the cycle length (wall clock / n)
    and the rate of state changes (server history, resp. the mock pin's
    ``states``), remote against local (target: ratio 0.98–1.02).

11. **Event latency**: the server runs with a virtual jumper wire
    (``--mock-wire 0:1``: input GPIO1 follows output GPIO0, the two GPIOs no
    other phase claims). ``DigitalOutputDevice(0)`` is toggled 500 times
    (100 with --quick), one edge at a time (write, wait for the callback);
    ``DigitalInputDevice(1)``'s pin has ``when_changed`` set to a recorder,
    which gets the edge's ``ticks`` (the server's edge time converted to our
    ``monotonic()``). Latency = ``monotonic()`` in the callback − ticks;
    median (target ≤ 2.0× the echo median) and p99 in µs. The edge time is
    taken by the input's worker when the mock backend reports the change,
    so the figure covers worker → server main process → TCP → client
    reader → dispatcher thread → callback. Informational: the round trip
    from just before the write to the callback. Events missing, extra or of
    the wrong level are counted (target 0).

12. **Load**: 8 client processes (``python -m bench.loadclient``), each with
    its own ``RemoteIOFactory`` and 3 pins of GPIO 2..25 (24 pins), each
    pin an output with PWM at 100 Hz, written at 25 Hz (absolute deadlines,
    one writer thread per pin) for 60 s (8 s with --quick), all starting
    together. Each write's duty cycle encodes its counter (``((k % 9973) +
    1) / 10000``: unique per pin, never equal to the one before), so the
    server's history (the last ≤ 1000 changes of each pin), after a final
    read of each pin, must equal the tail of what was sent, and its
    ``writes`` counter must have grown by what was sent. Writes sent (target:
    all planned), lost, duplicated and reordered (target 0), pins whose
    history or final read is amiss (target 0), the slowest pin's rate at the
    server (target ≥ 24.5 Hz), the clients' write lateness against the
    deadlines (p99) and the server's CPU over the 60 s (main process, zygote,
    workers, total; % of one core). The clients' stderr goes to
    ``load_clients.log`` beside the JSON.

Phases 7 to 9 also count tasks that did not complete and edges that are
missing or extra (target 0).

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
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from remoteio_factory import RemoteIOFactory, RemoteServer

from bench import figures, harness
from bench.figures import Figure, format_number

DEFAULT_JSON = harness.REPO_ROOT / 'bench' / 'results' / 'latest.json'
#: Where a run of selected phases (``--only``) writes, unless told: not over a whole run's.
PARTIAL_JSON = harness.REPO_ROOT / 'bench' / 'results' / 'partial.json'
SPARES = 2
ROUND_TRIP_GPIO = 17
PIPELINE_GPIOS = [17, 5, 6, 12, 13, 16, 20, 21]
CLAIM_GPIOS = list(range(2, 28))
TASK_GPIO = 17
TASK_GPIOS = list(range(2, 28))
#: The virtual jumper wire of phase 11 (output, input): GPIO0 and 1 are the
#: board's only GPIOs that no other phase claims (they all use 2..27), so no
#: other phase drives the wire or has its pins relayed to.
EVENT_WIRE = (0, 1)
#: How long to wait for the server's workers to come and go between phases.
SETTLE_TIMEOUT = 20.0
#: What ``--only`` can select, in the order they run.
PHASES = ('echo', 'client', 'claimed', 'tasks_1_pin', 'tasks_26_pins', 'pulse', 'events',
          'spi', 'load')


class Run:
    """What a run has measured so far: rows, details per phase, and errors."""

    def __init__(self, plan, only=None):
        self.plan = plan
        #: The phases to run (``--only``); None: all of them.
        self.only = only
        self.started = datetime.now(timezone.utc).isoformat(timespec='seconds')
        self.figures = []
        self.details = {}
        self.errors = []

    def selected(self, phase):
        return self.only is None or phase in self.only

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


def claim_task_pins(run, server, remote, gpios, phase):
    """Claim *gpios* as RemotePins; wait until the server's spares are back (bounded)."""
    pins = [remote.pin(gpio, 'g') for gpio in gpios]
    workers = harness.wait_for_workers(server.pid, len(pins) + SPARES, SETTLE_TIMEOUT)
    run.details.setdefault('task_settling', {})[phase] = workers
    return pins


def measure_on_1_pin(run, server):
    """Phase 7, on its own connection."""
    seed = figures.SEED_ON_100MS
    remote = RemoteServer(harness.HOST, server.port)
    try:
        pins = claim_task_pins(run, server, remote, [TASK_GPIO], 'on_1_pin')
        details = run.measure('on_1_pin', lambda: figures.measure_on_tasks(
            remote, pins, run.plan.on_repeats, run.plan.loop_seconds, 'on_1',
            'on(time_ms=100) error, 1 pin', note=seed['text']))
        if details is not None:
            details['seed_server'] = seed
    finally:
        remote.close()


def measure_26_pins(run, server):
    """Phases 8 and 9, on one connection holding GPIO 2..27."""
    seed = figures.SEED_ON_100MS
    remote = RemoteServer(harness.HOST, server.port)
    try:
        pins = claim_task_pins(run, server, remote, TASK_GPIOS, 'on_26_pins')
        details = run.measure('on_26_pins', lambda: figures.measure_on_tasks(
            remote, pins, run.plan.on_rounds, run.plan.loop_seconds, 'on_26',
            f'on(time_ms=100) error, {len(pins)} pins', note=seed['text']))
        if details is not None:
            details['seed_server'] = seed
        run.measure('blink_26_pins', lambda: figures.measure_blink(
            remote, pins, run.plan.blink_seconds))
    finally:
        remote.close()


def measure_pulse(run, server):
    """Phase 10."""
    factory = RemoteIOFactory(harness.HOST, server.port)
    try:
        run.measure('pulse', lambda: figures.measure_pulse(factory, run.plan.pulse_cycles))
    finally:
        factory.close()


def measure_events(run, server):
    """Phase 11, on its own factory."""
    echo = run.details.get('echo') or {'round_trip_us': {'median': None, 'p99': None}}
    factory = RemoteIOFactory(harness.HOST, server.port)
    try:
        run.measure('events', lambda: figures.measure_events(factory, *EVENT_WIRE, echo,
                                                             run.plan))
    finally:
        factory.close()


def measure_spi(run, server):
    """Phase 12a: MCP3008 on the server's simulated ADC (--mock-spi mcp3008:0)."""
    factory = RemoteIOFactory(harness.HOST, server.port)
    try:
        run.measure('spi', lambda: figures.measure_spi(factory, run.plan))
    finally:
        factory.close()


def measure_load(run, server, results_dir):
    """Phase 12: the clients are processes of their own."""
    run.measure('load', lambda: figures.measure_load(
        server.pid, server.port, run.plan, results_dir / 'load_clients.log', SPARES,
        SETTLE_TIMEOUT))


def measure_tasks(run, server, results_dir):
    """Phases 7 to 12, each after the server's workers have settled to the spares."""
    settling = run.details.setdefault('task_settling', {})
    for phase, measurement in (('tasks_1_pin', measure_on_1_pin),
                               ('tasks_26_pins', measure_26_pins),
                               ('pulse', measure_pulse),
                               ('events', measure_events),
                               ('spi', measure_spi),
                               ('load', lambda run, server: measure_load(run, server,
                                                                          results_dir))):
        if not run.selected(phase):
            continue
        try:
            if server.process.poll() is not None:
                raise RuntimeError(f'the server has ended (exit code {server.process.returncode})')
            settling[f'before_{phase}'] = harness.wait_for_workers(server.pid, SPARES,
                                                                   SETTLE_TIMEOUT)
            # Timing figures suffer from whatever else runs on the machine.
            settling[f'load_average_before_{phase}'] = os.getloadavg()
            measurement(run, server)
        except Exception as exc:
            run.fail(phase, exc)


def measure_all(run, results_dir):
    echo = server = None
    stops = {}
    try:
        if run.selected('echo'):
            echo = harness.start_echo_server(lifetime=600)
        server = harness.start_server(results_dir / 'server.log', ['--spares', str(SPARES), '--mock-spi', 'mcp3008:0'],
                                      mock_wires=[EVENT_WIRE])
        run.details['server'] = {
            'ready_line': server.ready_line,
            'workers_at_start': harness.wait_for_workers(server.pid, SPARES, SETTLE_TIMEOUT),
        }
        echo_details = None
        if echo is not None:
            echo_details = run.measure(
                'echo', lambda: figures.measure_echo(echo.pid, echo.port, run.plan))
        if run.selected('client'):
            try:
                measure_client(run, server, echo_details)
            except Exception as exc:
                run.fail('client', exc)
        # Let the released pins' workers end before claiming every pin again.
        run.details['server']['workers_between_phases'] = harness.wait_for_workers(
            server.pid, SPARES, SETTLE_TIMEOUT)
        if run.selected('claimed'):
            try:
                measure_claimed(run, server)
            except Exception as exc:
                run.fail('claimed', exc)
        try:
            measure_tasks(run, server, results_dir)
        except Exception as exc:
            run.fail('tasks', exc)
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
        'only': sorted(run.only) if run.only is not None else None,
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


def phase_list(text):
    phases = {name.strip() for name in text.split(',') if name.strip()}
    unknown = sorted(phases - set(PHASES))
    if unknown or not phases:
        raise argparse.ArgumentTypeError(
            f'unknown phase {", ".join(unknown) or "(none)"}: choose from {", ".join(PHASES)}')
    return phases


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench', description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='fewer samples (under a minute)')
    p.add_argument('--json', type=Path, default=None, metavar='PATH',
                   help='where to write the results (default: bench/results/latest.json)')
    p.add_argument('--only', metavar='PHASE,...', type=phase_list,
                   help=f'run only these phases ({", ".join(PHASES)}); the default JSON is '
                   f'then {PARTIAL_JSON.relative_to(harness.REPO_ROOT)}')
    args = p.parse_args(argv)
    plan = figures.QUICK if args.quick else figures.FULL
    if args.json is None:
        args.json = DEFAULT_JSON if args.only is None else PARTIAL_JSON
    args.json.parent.mkdir(parents=True, exist_ok=True)

    machine = harness.machine_info()
    only = f', only {",".join(sorted(args.only, key=PHASES.index))}' if args.only else ''
    print(f'remoteio-factory benchmark ({plan.name}{only}): {machine["cpu_model"]}, '
          f'{machine["nproc"]} CPUs, Python {machine["python"]}', flush=True)
    run = Run(plan, args.only)
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
