"""
The comparisons: each figure measured on our server, on the reference server
(:mod:`bench.reference`, the floor for a Python server speaking our protocol)
and beside them the TCP echo (:mod:`bench.echo`, the floor for any round trip
between two Python processes), all through the same client library, in the
same run, interleaved: ours, reference, echo, ours, reference, echo, … The
machine is noisy (a VM, other work), so a figure is the median of the
per-repetition medians, with their range, and every ratio is between numbers
taken minutes apart at most, in the same placement.

**Placements.** On a small VM a round trip between two processes costs
severalfold more when they share a CPU than when each has its own, and an
unpinned run lands on either. So every figure is measured twice:

* *same CPU*: this process (the client) and every process of each server's
  tree (ours: main process, zygote, workers) pinned to one CPU;
* *cross CPU*: the client on one CPU, the servers' trees on the other.

Affinities are set on every thread (:func:`bench.harness.pinned`) and
restored afterwards. With one CPU only *same CPU* is measured.

Each ``measure_*`` function here returns ``(figures, details)`` like those of
:mod:`bench.figures`.
"""

import os
import statistics
import time
from dataclasses import dataclass

from gpiozero import MCP3008

from remoteio_factory import RemoteIOFactory, RemoteServer

from bench import figures, harness
from bench.figures import Figure, Target, summary, timed_loop

OURS, REFERENCE, ECHO = 'ours', 'reference', 'echo'
#: The pins of the round-trip figures: GPIO 2..27, GPIO17 the one read.
ALL_GPIOS = list(range(2, 28))
READ_GPIO = 17
#: Targets, as ratios measured in the same run and placement.
ROUND_TRIP_LIMIT = 1.5          # ours ≤ 1.5× the reference server
FAN_OUT_LIMIT = 1.5             # read after 26 writes ≤ 1.5× read after 1 write
SEED_ON_LIMIT = 1.5             # seed-API on() call ≤ 1.5× the reference server's
READ_LOAD_FLOOR = 0.7           # 8 clients' aggregate reads/s ≥ 0.7× the reference's
#: Round trips before each subject's measurement in a repetition (not counted).
WARMUP = 20
#: The seed-API task measured: on for 1 ms (its end is waited for, untimed).
ON_CALL_MS = 1
TASK_TIMEOUT = 5.0
#: The read-load phase: 8 client processes × 3 pins (GPIO 2..25).
READ_CLIENTS = 8
READ_PINS_PER_CLIENT = 3
READ_LOAD_GPIOS = list(range(2, 2 + READ_CLIENTS * READ_PINS_PER_CLIENT))
READ_READY_TIMEOUT = 60.0
#: From sending the start time of a read window to the window.
READ_START_DELAY = 0.1
READ_RESULT_MARGIN = 30.0


# Placements and interleaving -----------------------------------------------------------

@dataclass(frozen=True)
class Placement:
    """Where the client and the servers run (CPU numbers)."""
    key: str
    label: str
    client_cpu: int
    server_cpu: int


def placements():
    """Same CPU, and (with two CPUs or more) cross CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    same = Placement('same_cpu', 'same CPU', cpus[0], cpus[0])
    if len(cpus) < 2:
        return [same]
    return [same, Placement('cross_cpu', 'cross CPU', cpus[0], cpus[1])]


@dataclass
class Servers:
    """The three servers of a run (:class:`bench.harness.ChildProcess` each)."""
    ours: object
    reference: object
    echo: object

    @property
    def roots(self):
        return [self.ours.pid, self.reference.pid, self.echo.pid]

    def port(self, subject):
        return {OURS: self.ours.port, REFERENCE: self.reference.port,
                ECHO: self.echo.port}[subject]


def interleave(servers, plan, subjects, client_pids=()):
    """
    For each placement, pin the processes, then *plan.repeats* times call
    each of *subjects* (``{name: measure}``, in order) in turn; ``measure()``
    returns ``{metric: number}`` for that repetition. Returns
    ``{placement.key: {name: [per-repetition dict]}}`` and the placements.
    """
    results, used = {}, placements()
    for placement in used:
        per = results[placement.key] = {name: [] for name in subjects}
        with harness.pinned(placement.client_cpu, placement.server_cpu, servers.roots,
                            client_pids):
            for _ in range(plan.repeats):
                for name, measure in subjects.items():
                    per[name].append(measure())
    return results, used


def series(results, placement, subject, metric):
    """The per-repetition values of *metric* for *subject* in *placement*."""
    return [rep[metric] for rep in results[placement.key][subject]
            if rep.get(metric) is not None]


def spread(values):
    """(median, min, max) of *values*, or Nones."""
    if not values:
        return None, None, None
    return statistics.median(values), min(values), max(values)


def comparison(key, name, unit, placement, values, baseline=None, echo=None, target=None,
               baseline_name='reference server', note=''):
    """A figure from per-repetition values: median, range, baseline and echo alike."""
    value, low, high = spread(values)
    base, base_low, base_high = spread(baseline or [])
    echo_median, echo_low, echo_high = spread(echo or [])
    return Figure(f'{key}_{placement.key}', f'{name} [{placement.label}]', value, unit,
                  baseline=base, target=target, note=note, low=low, high=high,
                  baseline_low=base_low, baseline_high=base_high,
                  baseline_name=baseline_name if baseline else '',
                  placement=placement.label, echo=echo_median, echo_low=echo_low,
                  echo_high=echo_high, repeats=len(values))


def echo_measure(servers, plan):
    """The echo's subject: the median round trip (µs) of *plan.compare_samples*."""
    def measure():
        samples = figures.echo_samples(servers.echo.port, plan.compare_samples,
                                       plan.loop_seconds)
        return {'echo_us': statistics.median(samples)}
    return measure


def settle(servers, pins):
    """Wait (bounded) until our server has a worker for each claimed pin plus its spares."""
    return harness.wait_for_workers(servers.ours.pid, pins + harness.SPARES,
                                    harness.SETTLE_TIMEOUT)


def details_of(results, used):
    """The per-repetition values of every subject, for the JSON."""
    return {placement.key: {'client_cpu': placement.client_cpu,
                            'server_cpu': placement.server_cpu,
                            'repetitions': results[placement.key]}
            for placement in used}


# Round trips: read, write→read, read after writes to 1 and to 26 pins -------------------

class RoundTrips:
    """
    One factory on one server with GPIO 2..27 claimed as outputs; the round
    trips of one repetition (medians, µs), and reads that did not show the
    write before them.
    """

    def __init__(self, port, plan):
        self.factory = RemoteIOFactory(harness.HOST, port)
        self.samples, self.seconds = plan.compare_samples, plan.loop_seconds
        self.fan_out_samples = plan.fan_out_samples
        self.stale = 0
        try:
            self.pins = [figures.output_pin(self.factory, gpio) for gpio in ALL_GPIOS]
        except BaseException:
            self.factory.close()
            raise
        self.pin = self.pins[ALL_GPIOS.index(READ_GPIO)]

    def read_after_writes(self, pins, i):
        """Post a write of *i*'s parity to each of *pins*; time the read of GPIO17 after them."""
        state = i & 1
        for pin in pins:
            pin.state = state
        started = time.perf_counter_ns()
        got = self.pin.state
        elapsed = (time.perf_counter_ns() - started) / 1000
        if got != state:
            self.stale += 1
        return elapsed

    def measure(self):
        pin, n, seconds = self.pin, self.samples, self.seconds
        timed_loop(lambda i: pin.state, WARMUP, seconds)
        read_us, _ = timed_loop(lambda i: pin.state, n, seconds)
        pair_us, shown = timed_loop(lambda i: figures.write_then_read(pin, i), n, seconds)
        self.stale += shown.count(False)
        one = figures.bounded_calls(lambda i: self.read_after_writes([pin], i), n, seconds)
        many = figures.bounded_calls(lambda i: self.read_after_writes(self.pins, i),
                                     self.fan_out_samples, seconds)
        return {'read_us': statistics.median(read_us),
                'write_read_us': statistics.median(pair_us),
                'read_after_1_write_us': statistics.median(one),
                'read_after_26_writes_us': statistics.median(many),
                'read_p99_us': figures.percentile(sorted(read_us), 99),
                'write_read_p99_us': figures.percentile(sorted(pair_us), 99)}

    def close(self):
        self.factory.close()


def round_trip_figures(results, used):
    rows = []
    for placement in used:
        rows += round_trip_rows(results, placement)
    return rows


def round_trip_rows(results, placement):
    """The round-trip figures of one placement."""
    def get(subject, metric):
        return series(results, placement, subject, metric)
    echo = get(ECHO, 'echo_us')
    return [
        comparison('read_us', 'gpiozero read (pin.state), median', 'µs', placement,
                   get(OURS, 'read_us'), get(REFERENCE, 'read_us'), echo,
                   Target(ROUND_TRIP_LIMIT, on_ratio=True)),
        comparison('write_read_us', 'write→read round trip, median', 'µs', placement,
                   get(OURS, 'write_read_us'), get(REFERENCE, 'write_read_us'), echo,
                   Target(ROUND_TRIP_LIMIT, on_ratio=True)),
        comparison('read_after_1_write_us', 'read after a write to 1 pin, median', 'µs',
                   placement, get(OURS, 'read_after_1_write_us'),
                   get(REFERENCE, 'read_after_1_write_us'), echo),
        comparison('read_after_26_writes_us', 'read after writes to 26 pins, median', 'µs',
                   placement, get(OURS, 'read_after_26_writes_us'),
                   get(OURS, 'read_after_1_write_us'), echo,
                   Target(FAN_OUT_LIMIT, on_ratio=True),
                   baseline_name='our server: read after a write to 1 pin'),
        comparison('reference_read_after_26_writes_us',
                   'reference server: read after writes to 26 pins, median', 'µs',
                   placement, get(REFERENCE, 'read_after_26_writes_us'),
                   get(REFERENCE, 'read_after_1_write_us'), echo,
                   baseline_name='reference server: read after a write to 1 pin'),
    ]


def measure_round_trips(servers, plan):
    """
    gpiozero's read (``pin.state`` of a claimed output), write→read, and the
    read after writes to 1 and to 26 pins (the writes posted, the read
    timed: our server makes a read wait until the connection's other pins
    have taken what was sent to them), on both servers, with the echo.
    """
    sides = {}
    try:
        for subject in (OURS, REFERENCE):
            sides[subject] = RoundTrips(servers.port(subject), plan)
        workers = settle(servers, len(ALL_GPIOS))
        results, used = interleave(servers, plan, {
            OURS: sides[OURS].measure, REFERENCE: sides[REFERENCE].measure,
            ECHO: echo_measure(servers, plan)})
    finally:
        for side in sides.values():
            side.close()
    stale = {subject: side.stale for subject, side in sides.items()}
    rows = round_trip_figures(results, used) + [
        Figure('stale_reads', 'reads not showing the write before them (both servers)',
               sum(stale.values()), 'count', target=Target(0)),
    ]
    details = {'gpios': ALL_GPIOS, 'read_gpio': READ_GPIO, 'samples': plan.compare_samples,
               'samples_after_26_writes': plan.fan_out_samples,
               'workers_before': workers, 'stale_reads': stale,
               'placements': details_of(results, used)}
    return rows, details


# The seed API: RemoteServer(...).pin(17, 'g').on(time_ms=...) -------------------------------

class SeedCalls:
    """A RemoteServer with GPIO17; one repetition: the round trip of on() calls."""

    def __init__(self, port, calls, seconds):
        self.remote = RemoteServer(harness.HOST, port)
        self.calls, self.seconds = calls, seconds
        self.not_completed = 0
        try:
            self.pin = self.remote.pin(READ_GPIO, 'g')
        except BaseException:
            self.remote.close()
            raise

    def call(self):
        """One on(time_ms) call, timed until the server has accepted it; its end waited for."""
        started = time.perf_counter_ns()
        handle = self.pin.on(time_ms=ON_CALL_MS)
        elapsed = (time.perf_counter_ns() - started) / 1000
        if handle.wait(TASK_TIMEOUT) != 'completed':
            self.not_completed += 1
        return elapsed

    def measure(self):
        for _ in range(3):
            self.call()
        calls = figures.bounded_calls(lambda i: self.call(), self.calls, self.seconds)
        return {'on_call_us': statistics.median(calls)}

    def close(self):
        self.remote.close()


def measure_seed_api(servers, plan):
    """
    The seed API's ``on(time_ms=1)`` call (``RemoteServer(host, port).pin(17,
    'g')``): from the call until the server has accepted the task (its
    acknowledgement), on both servers, with the echo. Each task's end
    (``task_end``) is waited for before the next call, untimed.
    """
    sides = {}
    try:
        for subject in (OURS, REFERENCE):
            sides[subject] = SeedCalls(servers.port(subject), plan.on_calls, plan.loop_seconds)
        settle(servers, 1)
        results, used = interleave(servers, plan, {
            OURS: sides[OURS].measure, REFERENCE: sides[REFERENCE].measure,
            ECHO: echo_measure(servers, plan)})
    finally:
        for side in sides.values():
            side.close()
    rows = [comparison('seed_on_call_us', f'seed API on(time_ms={ON_CALL_MS}) call, median',
                       'µs', placement, series(results, placement, OURS, 'on_call_us'),
                       series(results, placement, REFERENCE, 'on_call_us'),
                       series(results, placement, ECHO, 'echo_us'),
                       Target(SEED_ON_LIMIT, on_ratio=True))
            for placement in used]
    not_completed = {subject: side.not_completed for subject, side in sides.items()}
    rows.append(Figure('seed_on_not_completed', 'seed API: tasks not completed (both servers)',
                       sum(not_completed.values()), 'count', target=Target(0)))
    details = {'gpio': READ_GPIO, 'time_ms': ON_CALL_MS, 'calls': plan.on_calls,
               'not_completed': not_completed, 'placements': details_of(results, used)}
    return rows, details


# MCP3008 samples per second -----------------------------------------------------------------

class Adc:
    """``MCP3008(channel=0)`` through a factory, on the server's simulated chip (CE0)."""

    def __init__(self, port, plan):
        self.factory = RemoteIOFactory(harness.HOST, port)
        self.plan = plan
        try:
            self.factory._connection.request('set_channel', device=8, channel=0,
                                             value=figures.SPI_VALUE)
            self.device = MCP3008(channel=0, pin_factory=self.factory)
        except BaseException:
            self.factory.close()
            raise
        self.transfers_before = self.transfers()

    def transfers(self):
        """The server's count of transfers on the bus (its clock pin's status)."""
        for pin in self.factory.status(history=0)['pins']:
            if pin['gpio'] == 11 and pin.get('spi'):
                return pin['spi'].get('transfers')
        return None

    def measure(self):
        for _ in range(WARMUP):
            self.device.raw_value
        return {'samples_per_s': figures.spi_samples_per_s(
            self.device, self.plan.spi_samples, self.plan.loop_seconds)}

    def close(self):
        try:
            self.device.close()
        finally:
            self.factory.close()


def measure_spi(servers, plan):
    """
    ``MCP3008(channel=0).raw_value`` through the factory (one ``spi_transfer``
    per sample), samples/s, on our server's simulated MCP3008 (``--mock-spi
    mcp3008:0``) and the reference server's, with the echo; and, for
    comparison, on a local MockFactory (software SPI, bit by bit).
    """
    sides, counted = {}, {}
    try:
        for subject in (OURS, REFERENCE):
            sides[subject] = Adc(servers.port(subject), plan)
        results, used = interleave(servers, plan, {
            OURS: sides[OURS].measure, REFERENCE: sides[REFERENCE].measure,
            ECHO: echo_measure(servers, plan)})
        for subject, side in sides.items():
            after, before = side.transfers(), side.transfers_before
            counted[subject] = after - before if None not in (after, before) else None
    finally:
        for side in sides.values():
            side.close()
    local = figures.spi_local_rates(plan, plan.spi_samples)
    rows = [comparison('spi_mcp3008_samples', 'MCP3008 samples/s through the factory', '/s',
                       placement, series(results, placement, OURS, 'samples_per_s'),
                       series(results, placement, REFERENCE, 'samples_per_s'),
                       series(results, placement, ECHO, 'echo_us'),
                       Target(figures.SPI_TARGET, at_most=False))
            for placement in used]
    value, low, high = spread(local)
    rows.append(Figure('spi_local_mock_samples', 'MCP3008 samples/s on a local MockFactory '
                       '(software SPI, this process)', value, '/s', low=low, high=high,
                       repeats=len(local)))
    details = {'samples_per_repetition': plan.spi_samples, 'value': figures.SPI_VALUE,
               'server_transfers_counted': counted, 'requests_per_sample': 1,
               'local_mock_samples_per_s': local, 'placements': details_of(results, used)}
    return rows, details


# Edge events: latency against the one-way floor ---------------------------------------------

EVENT_OUTCOMES = ('missing', 'extra', 'wrong_state')


def events_measure(wire, plan, totals):
    """One repetition of the event latency; *totals* collects the edges amiss."""
    def measure():
        sample = wire.edges(plan.event_edges, plan.loop_seconds)
        for outcome in EVENT_OUTCOMES + ('edge_time_before_write', 'edges'):
            totals[outcome] = totals.get(outcome, 0) + sample[outcome]
        latency = summary(sample['latency_us'])
        trip = summary(sample['write_to_callback_us'])
        return {'latency_us': latency.get('median'), 'latency_p99_us': latency.get('p99'),
                'write_to_callback_us': trip.get('median'),
                'latency_without_offset_us': summary(
                    sample['latency_us_without_offset']).get('median')}
    return measure


def event_figures(results, used):
    rows = []
    for placement in used:
        echo = series(results, placement, ECHO, 'echo_us')
        floor = [e / 2 for e in echo]
        floor_name = 'one-way floor (½ TCP echo round trip)'
        rows += [
            comparison('event_latency_us', 'edge → gpiozero callback (wire 0→1), median', 'µs',
                       placement, series(results, placement, OURS, 'latency_us'), floor, echo,
                       baseline_name=floor_name,
                       note=figures.EVENT_PATH),
            comparison('event_latency_p99_us', 'edge → gpiozero callback, p99', 'µs',
                       placement, series(results, placement, OURS, 'latency_p99_us'), floor,
                       echo, baseline_name=floor_name),
            comparison('event_write_callback_us', 'write → callback round trip (wire), median',
                       'µs', placement, series(results, placement, OURS,
                                               'write_to_callback_us'),
                       echo, echo, baseline_name='TCP echo round trip',
                       note='informational: before out.on()/off() to the callback'),
        ]
    return rows


def measure_events(servers, plan, wire_gpios):
    """
    Edge → callback latency on our server's virtual jumper wire (``--mock-wire
    OUT:IN``): the output toggled one edge at a time (write, wait for the
    callback); latency = ``monotonic()`` in the callback − the edge's time on
    the server converted to our clock. Its floor: one way of a TCP echo
    round trip (half of it), measured beside it in the same placement.
    """
    factory = RemoteIOFactory(harness.HOST, servers.ours.port)
    totals = {}
    wire = None
    try:
        wire = figures.Wire(factory, *wire_gpios)
        results, used = interleave(servers, plan, {
            OURS: events_measure(wire, plan, totals), ECHO: echo_measure(servers, plan)})
        late = wire.close()
        warmup = wire.warmup
    finally:
        if wire is not None:
            wire.close()        # a no-op once closed
        factory.close()
    faulty = sum(totals.get(outcome, 0) for outcome in EVENT_OUTCOMES) + late
    rows = event_figures(results, used) + [
        Figure('event_faulty', 'edge events missing, extra or of the wrong level', faulty,
               'count', target=Target(0)),
    ]
    details = {'wire': {'out': wire_gpios[0], 'in': wire_gpios[1]}, 'what': figures.EVENT_PATH,
               'edges_per_repetition': plan.event_edges, 'warmup_edges': warmup['edges'],
               'totals': totals, 'late_calls': late,
               'clock_offset_us': (wire.offset * 1e6 if wire.offset is not None else None),
               'placements': details_of(results, used)}
    return rows, details


# Read load: 8 client processes × 3 pins, reading as fast as they can -----------------------

class ReadClients:
    """The read-load clients (:mod:`bench.readclient`) of one server."""

    def __init__(self, name, port, log, lifetime):
        self.name = name
        groups = [READ_LOAD_GPIOS[i:i + READ_PINS_PER_CLIENT]
                  for i in range(0, len(READ_LOAD_GPIOS), READ_PINS_PER_CLIENT)]
        self.clients = [harness.start_read_client(port, gpios, log, lifetime)
                        for gpios in groups]
        self.errors = []
        self.stops = []

    def wait_ready(self):
        by = time.monotonic() + READ_READY_TIMEOUT
        for client in self.clients:
            message = client.read_message(max(0.0, by - time.monotonic()))
            if 'ready' not in message:
                raise RuntimeError(f'{client.name} ({self.name}): {message.get("error", message)}')

    @property
    def pids(self):
        return [client.pid for client in self.clients]

    def measure(self, seconds):
        """One window: every client reads for *seconds*; aggregate reads/s and p99 (µs)."""
        start = time.monotonic() + READ_START_DELAY
        for client in self.clients:
            client.send({'run': {'start': start, 'seconds': seconds}})
        by = start + seconds + READ_RESULT_MARGIN
        reads, latency = 0, []
        for client in self.clients:
            message = client.read_message(max(0.0, by - time.monotonic()))
            result = message.get('result')
            if result is None:
                raise RuntimeError(f'{client.name} ({self.name}): {message.get("error", message)}')
            reads += result['reads']
            latency.extend(result['latency_us'])
            self.errors.extend(result['errors'])
            if result['stuck']:
                self.errors.append(f'{client.name}: {result["stuck"]} readers stuck')
        stats = summary(latency)
        return {'reads_per_s': reads / seconds, 'p99_us': stats.get('p99'),
                'median_us': stats.get('median'), 'reads': reads}

    def stop(self):
        for client in self.clients:
            try:
                client.send({'stop': True})
            except OSError:
                pass
        self.stops = [client.stop() for client in self.clients]
        return self.stops


def measure_read_load(servers, plan, log_path):
    """
    8 client processes (:mod:`bench.readclient`), each with its own factory
    and 3 pins of GPIO 2..25, read as fast as they can for
    *plan.read_load_seconds*: the aggregate reads/s and the p99 of every
    read's round trip, our server against the reference server. The clients
    share the client CPU of each placement.
    """
    lifetime = 600
    sides = {}
    with open(log_path, 'w') as log:
        try:
            for subject in (OURS, REFERENCE):
                sides[subject] = ReadClients(subject, servers.port(subject), log, lifetime)
            for side in sides.values():
                side.wait_ready()
            workers = settle(servers, len(READ_LOAD_GPIOS))
            seconds = plan.read_load_seconds
            pids = [pid for side in sides.values() for pid in side.pids]
            results, used = interleave(servers, plan, {
                OURS: lambda: sides[OURS].measure(seconds),
                REFERENCE: lambda: sides[REFERENCE].measure(seconds)}, client_pids=pids)
        finally:
            stops = {subject: side.stop() for subject, side in sides.items()}
    label = (f'{READ_CLIENTS} clients × {READ_PINS_PER_CLIENT} pins, reads as fast as they '
             f'can, {seconds:g} s')
    rows = []
    for placement in used:
        rows += [
            comparison('read_load_reads_per_s', f'{label}: aggregate reads/s', '/s', placement,
                       series(results, placement, OURS, 'reads_per_s'),
                       series(results, placement, REFERENCE, 'reads_per_s'),
                       target=Target(READ_LOAD_FLOOR, at_most=False, on_ratio=True)),
            comparison('read_load_p99_us', f'{READ_CLIENTS} clients × {READ_PINS_PER_CLIENT} '
                       'pins: read round trip, p99', 'µs', placement,
                       series(results, placement, OURS, 'p99_us'),
                       series(results, placement, REFERENCE, 'p99_us')),
        ]
    errors = {subject: side.errors for subject, side in sides.items()}
    rows.append(Figure('read_load_errors', 'read load: reads failed or stuck (both servers)',
                       sum(len(e) for e in errors.values()), 'count', target=Target(0)))
    details = {'clients': READ_CLIENTS, 'pins_per_client': READ_PINS_PER_CLIENT,
               'gpios': READ_LOAD_GPIOS, 'seconds_per_window': seconds,
               'workers_before': workers, 'errors': {k: v[:20] for k, v in errors.items()},
               'client_stops': stops, 'client_log': str(log_path),
               'placements': details_of(results, used)}
    return rows, details
