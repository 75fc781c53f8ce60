"""
``python -m bench [--quick] [--only PHASE,...] [--json PATH]``: benchmark
remoteio-factory against servers started for the run.

The run starts, each in its own process: our server (``remoteio-server
--host 127.0.0.1 --port 0 --backend mock --mock-wire 0:1 --mock-spi
mcp3008:0``, two spare workers), the **reference server**
(:mod:`bench.reference`: one process, a thread per connection, gpiozero mock pins
in-process, speaking our protocol: the floor for a Python server) and a
plain Python **TCP echo** server (:mod:`bench.echo`: the floor for any round
trip between two Python processes). Both protocol servers are driven
through the same client library (``RemoteIOFactory``, gpiozero devices, the
seed API).

**Comparisons** (:mod:`bench.compare`). Each figure is measured on our
server, on the reference server and beside them the echo, interleaved (ours,
reference, echo, ours, …), 3 repetitions (5 in a full run); a figure is the
median of the per-repetition medians, with their range. Each is measured in
two placements, *same CPU* (client and both server trees pinned to one CPU)
and *cross CPU* (client on one CPU, servers on the other), and each ratio
is between numbers of the same placement. Affinities are restored afterwards.

1. ``round_trips``: gpiozero read (``pin.state`` of a claimed output),
   write→read, and a read right after writes posted to 1 pin and to 26 pins
   (GPIO 2..27), in µs. Targets: read and write→read ≤ 1.5× the reference
   server; read after writes to 26 pins ≤ 1.5× read after a write to 1 pin
   (our server; the reference's for information). Every read must show the
   write before it.
2. ``seed_api``: ``RemoteServer(host, port).pin(17, 'g').on(time_ms=1)``,
   from the call until the server has accepted the task (each task's end
   waited for, untimed). Target ≤ 1.5× the reference server.

**Our server alone** (unpinned):

3. ``pipelined``: N writes posted as fast as possible on 1 pin and on 8
   pins (each pin alternating 1/0), then one read per pin (a read waits
   until every earlier write has been carried out): writes/s from the first
   write to the last read (target ≥ 30 000/s); the server's per-pin
   ``writes`` counter must have grown by exactly what was posted.
4. ``claimed``: ``OutputDevice(gpio)`` on each of GPIO 2..27 with a new
   factory (median claim, target ≤ 10 ms); then, those 26 pins claimed,
   **idle CPU** over 5 s (2 s with --quick) of the server and every process
   below it (utime + stime from ``/proc``; target ≤ 1 % of one core) and
   **memory**: USS and PSS from ``smaps_rollup`` (target: USS ≤ 100 MiB).
5. ``tasks_1_pin``: ``on(time_ms=100)`` through the seed API, waited for, 40
   times (10 with --quick): each pulse's length error from the server's
   per-pin history (target: p99 ≤ 1 ms).
6. ``tasks_26_pins``: the same on GPIO 2..27 at once, 20 rounds (5 with
   --quick); then all 26 blinking at 10 Hz for 10 s (3 s): period error
   (p99 ≤ 1 ms) and drift.
7. ``pulse``: gpiozero's ``PWMLED.pulse`` through the factory against a local
   ``MockFactory``: cycle length and state changes/s (ratio 0.98–1.02).

**Comparisons again:**

8. ``events``: edge on the server → gpiozero callback, on a virtual jumper
   wire (``--mock-wire 0:1``), one edge at a time, 150 per repetition (40
   with --quick): ``monotonic()`` in the callback − the edge's server time
   converted to our clock. Against the
   one-way floor, half an echo round trip in the same placement (target ≤
   4× it, the former 2× the echo round trip). Events missing, extra or of
   the wrong level: target 0.
9. ``spi``: ``MCP3008(channel=0).raw_value`` samples/s through the factory
   (one ``spi_transfer`` each) on each server's simulated MCP3008 (target ≥
   2000/s), with the echo; and on a local MockFactory (software SPI).

**Load:**

10. ``load``: 8 client processes (:mod:`bench.loadclient`) × 3 pins of GPIO
    2..25, each pin PWM at 100 Hz written at 25 Hz for 60 s (8 s with
    --quick); every write checked against the server's history and
    ``writes`` counter (none lost, duplicated or reordered), the slowest
    pin's rate (≥ 24.5 Hz), lateness and the server's CPU.
11. ``read_load``: 8 client processes (:mod:`bench.readclient`) × 3 pins,
    reading as fast as they can for 1.5 s (0.5 s with --quick) per window, on
    our server and on the reference server, interleaved, in both placements
    (the clients on the client CPU): aggregate reads/s (target ≥ 0.7× the
    reference server's) and the p99 of the reads' round trips.

**The dashboard:**

12. ``dashboard``: ``on(time_ms=100)`` on GPIO 2..27 at once, 5 rounds per
    repetition (3 with --quick), 3 repetitions with the dashboard's event
    stream (``--http``: what a browser with the page open reads, all the
    transitions of those 26 pins) open and read, interleaved with 3 without:
    the p99 |error| with the page open against the same without (target: no
    regression, ≤ 1.25× within the noise of one run), and the updates the
    stream got.

**The MQTT bridge** (:mod:`bench.mqtt`):

13. ``mqtt``: a Mosquitto broker and ``remoteio mqtt`` with one switch; a
    command published → the pin set (one at a time, median of 60; 30 with
    --quick) and commands/s in bursts of 1000 (300), each against the same
    from a direct client, 5 repetitions (3) interleaved, judged by an
    observer's server-timed transitions; none lost.

Between phases the run waits until our server is back to its spare workers.

It prints a table (figure, value and range, baseline and range, ratio, echo,
target, result) and writes everything, with the raw statistics and a
description of the machine, as JSON (default ``bench/results/latest.json``;
``--only``: ``bench/results/partial.json``). ``python -m bench.readme``
writes the README's table from that JSON. Our server's log goes to
``server.log`` beside the JSON, the load clients' stderr to
``load_clients.log`` and ``read_clients.log``. Every server is stopped at the
end, whatever happened (ours with SIGTERM, and it must take its whole
process tree with it).

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

from bench import compare, figures, harness, mqtt
from bench.figures import Figure, format_number, format_range

DEFAULT_JSON = harness.REPO_ROOT / 'bench' / 'results' / 'latest.json'
#: Where a run of selected phases (``--only``) writes, unless told: not over a whole run's.
PARTIAL_JSON = harness.REPO_ROOT / 'bench' / 'results' / 'partial.json'
SPARES = harness.SPARES
PIPELINE_GPIO = 17
PIPELINE_GPIOS = [17, 5, 6, 12, 13, 16, 20, 21]
CLAIM_GPIOS = list(range(2, 28))
TASK_GPIO = 17
TASK_GPIOS = list(range(2, 28))
#: The virtual jumper wire of the events phase (output, input): GPIO0 and 1 are
#: the board's only GPIOs that no other phase claims (they all use 2..27), so no
#: other phase drives the wire or has its pins relayed to.
EVENT_WIRE = (0, 1)
SETTLE_TIMEOUT = harness.SETTLE_TIMEOUT
#: How long the reference and echo servers may live (they end themselves then).
HELPER_LIFETIME = 1800
#: What ``--only`` can select, in the order they run.
PHASES = ('round_trips', 'seed_api', 'pipelined', 'claimed', 'tasks_1_pin', 'tasks_26_pins',
          'pulse', 'events', 'spi', 'load', 'read_load', 'dashboard', 'mqtt')


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


# Phases on our server alone ---------------------------------------------------------

def measure_pipelined(run, servers):
    """Phase 3, on one factory that is closed afterwards."""
    server = servers.ours
    factory = RemoteIOFactory(harness.HOST, server.port)
    try:
        run.measure('pipelined_1_pin', lambda: figures.measure_pipelined(
            factory, [PIPELINE_GPIO], run.plan, 'pipelined_1', server.pid))
        run.measure('pipelined_8_pins', lambda: figures.measure_pipelined(
            factory, PIPELINE_GPIOS, run.plan, 'pipelined_8', server.pid))
    finally:
        factory.close()


def measure_claimed(run, servers):
    """Phase 4: claim GPIO 2..27 with a new factory, then watch the idle server."""
    server = servers.ours
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


def measure_on_1_pin(run, servers):
    """Phase 5, on its own connection."""
    server = servers.ours
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


def measure_26_pins(run, servers):
    """Phase 6, on one connection holding GPIO 2..27."""
    server = servers.ours
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


class EventStream:
    """The dashboard's event stream, read on a thread as a browser would; counts the updates."""

    def __init__(self, url):
        import threading
        import urllib.request
        self.updates = 0
        self._response = urllib.request.urlopen(url + 'events', timeout=30)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        try:
            for line in self._response:
                if line.startswith(b'event: changes'):
                    self.updates += 1
        except (OSError, ValueError):
            pass

    def close(self):
        self._response.close()


def measure_dashboard(run, servers):
    """Phase 12: the timing of 26 pins with the dashboard open and updating, and without."""
    import statistics
    server = servers.ours
    url = server.ready_line.split('dashboard=')[1].split()[0]
    remote = RemoteServer(harness.HOST, server.port)
    rounds = 3 if run.plan.name == 'quick' else 5
    p99 = {True: [], False: []}
    updates = []
    try:
        pins = claim_task_pins(run, server, remote, TASK_GPIOS, 'dashboard')
        for _ in range(3):
            for opened in (False, True):
                stream = EventStream(url) if opened else None
                try:
                    _, details = figures.measure_on_tasks(
                        remote, pins, rounds, run.plan.loop_seconds, 'dashboard', 'dashboard')
                finally:
                    if stream is not None:
                        updates.append(stream.updates)
                        stream.close()
                p99[opened].append(details['error_ms']['p99_abs'])
    finally:
        remote.close()

    def summary(values):
        return statistics.median(values), min(values), max(values)
    value, low, high = summary(p99[True])
    base, base_low, base_high = summary(p99[False])
    rows = [
        Figure('dashboard_on26_p99_ms', f'on(time_ms=100) p99 |error|, {len(TASK_GPIOS)} pins, '
                                        f'dashboard open', value, 'ms', baseline=base,
               baseline_name='dashboard closed', low=low, high=high, baseline_low=base_low,
               baseline_high=base_high, target=figures.Target(1.25, on_ratio=True), repeats=3),
        Figure('dashboard_updates', 'dashboard stream: updates received per repetition',
               statistics.median(updates), 'count', low=min(updates), high=max(updates),
               target=figures.Target(1, at_most=False)),
    ]
    return rows, {'p99_ms_open': p99[True], 'p99_ms_closed': p99[False], 'updates': updates,
                  'rounds': rounds}


def measure_pulse(run, servers):
    """Phase 7."""
    factory = RemoteIOFactory(harness.HOST, servers.ours.port)
    try:
        run.measure('pulse', lambda: figures.measure_pulse(factory, run.plan.pulse_cycles))
    finally:
        factory.close()


def measure_load(run, servers, results_dir):
    """Phase 10: the clients are processes of their own."""
    server = servers.ours
    run.measure('load', lambda: figures.measure_load(
        server.pid, server.port, run.plan, results_dir / 'load_clients.log', SPARES,
        SETTLE_TIMEOUT))


# The run ----------------------------------------------------------------------------

def phase_table(run, results_dir):
    """``(phase, measure(servers))`` in the order they run."""
    plan = run.plan

    def compared(phase, measurement):
        return lambda servers: run.measure(phase, lambda: measurement(servers))

    return (
        ('round_trips', compared('round_trips',
                                 lambda s: compare.measure_round_trips(s, plan))),
        ('seed_api', compared('seed_api', lambda s: compare.measure_seed_api(s, plan))),
        ('pipelined', lambda s: measure_pipelined(run, s)),
        ('claimed', lambda s: measure_claimed(run, s)),
        ('tasks_1_pin', lambda s: measure_on_1_pin(run, s)),
        ('tasks_26_pins', lambda s: measure_26_pins(run, s)),
        ('pulse', lambda s: measure_pulse(run, s)),
        ('events', compared('events', lambda s: compare.measure_events(s, plan, EVENT_WIRE))),
        ('spi', compared('spi', lambda s: compare.measure_spi(s, plan))),
        ('load', lambda s: measure_load(run, s, results_dir)),
        ('read_load', compared('read_load', lambda s: compare.measure_read_load(
            s, plan, results_dir / 'read_clients.log'))),
        ('dashboard', lambda s: run.measure('dashboard', lambda: measure_dashboard(run, s))),
        ('mqtt', lambda s: run.measure('mqtt', lambda: mqtt.measure_mqtt(s.ours, plan))),
    )


def run_phases(run, servers, results_dir):
    """Each selected phase, after our server's workers have settled to the spares."""
    settling = run.details.setdefault('settling', {})
    for phase, measurement in phase_table(run, results_dir):
        if not run.selected(phase):
            continue
        try:
            if servers.ours.process.poll() is not None:
                raise RuntimeError(f'our server has ended (exit code '
                                   f'{servers.ours.process.returncode})')
            settling[f'before_{phase}'] = harness.wait_for_workers(servers.ours.pid, SPARES,
                                                                   SETTLE_TIMEOUT)
            # Timing figures suffer from whatever else runs on the machine.
            settling[f'load_average_before_{phase}'] = os.getloadavg()
            started = time.monotonic()
            measurement(servers)
            run.details.setdefault('phase_seconds', {})[phase] = time.monotonic() - started
        except Exception as exc:
            run.fail(phase, exc)


def measure_all(run, results_dir):
    """Start the three servers, run the phases, stop the servers whatever happened."""
    echo = reference = server = None
    stops = {}
    try:
        echo = harness.start_echo_server(lifetime=HELPER_LIFETIME)
        reference = harness.start_reference_server(HELPER_LIFETIME,
                                                   results_dir / 'reference.log')
        server = harness.start_server(results_dir / 'server.log',
                                      ['--spares', str(SPARES), '--mock-spi', 'mcp3008:0',
                                       '--http', '0'],
                                      mock_wires=[EVENT_WIRE])
        run.details['server'] = {
            'ready_line': server.ready_line,
            'reference_ready_line': reference.ready_line,
            'workers_at_start': harness.wait_for_workers(server.pid, SPARES, SETTLE_TIMEOUT),
        }
        run.details['placements'] = [p.__dict__ for p in compare.placements()]
        run_phases(run, compare.Servers(server, reference, echo), results_dir)
    except Exception as exc:
        run.fail('setup', exc)
    finally:
        if server is not None:
            stops['server'] = harness.stop_server_tree(server)
        for name, helper in (('reference', reference), ('echo', echo)):
            if helper is not None:
                stops[name] = helper.stop()
    run.details['stop'] = stops
    if stops.get('server', {}).get('left_running'):
        run.errors.append({'phase': 'stop', 'error': 'server processes left running after '
                           f'it stopped: {stops["server"]["left_running"]}'})


# Report ---------------------------------------------------------------------------

COLUMNS = ('figure', 'value [range]', 'baseline [range]', 'ratio', 'TCP echo: cost', 'target',
           'result')


def result_of(figure):
    """'pass', 'FAIL', 'ERROR' or '' (no target)."""
    if figure.error:
        return 'ERROR'
    if figure.passed is None:
        return 'FAIL' if figure.target and figure.value is None else ''
    return 'pass' if figure.passed else 'FAIL'


def with_range(value, low, high, unit):
    """A number and, if it is a median of repetitions, their range in brackets."""
    text = format_number(value, unit)
    spread = format_range(low, high, unit)
    return f'{text} [{spread}]' if spread else text


def echo_cell(figure):
    """The echo beside the figure (same placement), and what the figure costs in echoes."""
    if figure.echo is None:
        return ''
    cost = f': {figure.echo_ratio:.1f}×' if figure.echo_ratio is not None else ''
    return f'{format_number(figure.echo, "µs")}{cost}'


def table_row(figure):
    return (
        figure.name,
        with_range(figure.value, figure.low, figure.high, figure.unit) if figure.unit else '',
        with_range(figure.baseline, figure.baseline_low, figure.baseline_high, figure.unit)
        if figure.baseline else '',
        f'{figure.ratio:.2f}×' if figure.ratio is not None else '',
        echo_cell(figure),
        figure.target.describe(figure.unit) if figure.target else '',
        result_of(figure),
    )


def format_table(rows):
    rows = [COLUMNS] + [table_row(figure) for figure in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    align = ['<', '>', '>', '>', '>', '<', '<']
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
