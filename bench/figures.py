"""
The rows of the report (:class:`Figure`, :class:`Target`), the sizes of a
run (:class:`Plan`), and the measurements of our server alone, plus the
helpers :mod:`bench.compare` uses for the comparisons (echo round trips, the
event wire, MCP3008 samples). Each ``measure_*`` function runs one kind of
measurement and returns its :class:`Figure` rows and a dict of details for
the JSON report. Every timed loop is bounded both in count and in time
(:func:`timed_loop`); when the time bound cuts a loop short, the figures are
computed from what was done and the details say how many samples that was.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Optional

from gpiozero import DigitalInputDevice, DigitalOutputDevice, OutputDevice, PWMLED
from gpiozero.pins.mock import MockFactory, MockPWMPin

from bench import harness, loadclient

MESSAGE_SIZE = 32
WARMUP = 200


# Rows --------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """
    A limit on a figure's value, or on its ratio to the baseline; with
    *lower*, a range: ``lower ≤ number ≤ limit``.
    """
    limit: float
    at_most: bool = True
    on_ratio: bool = False
    lower: Optional[float] = None

    def met_by(self, figure):
        number = figure.ratio if self.on_ratio else figure.value
        if number is None:
            return None
        if self.lower is not None:
            return self.lower <= number <= self.limit
        return number <= self.limit if self.at_most else number >= self.limit

    def describe(self, unit):
        if self.lower is not None:
            if self.on_ratio:
                return f'{self.lower:.2f}–{self.limit:.2f}×'
            return f'{format_number(self.lower, unit)}–{format_number(self.limit, unit)}'
        sign = '≤' if self.at_most else '≥'
        if self.on_ratio:
            return f'{sign} {self.limit:.1f}×'
        return f'{sign} {format_number(self.limit, unit)}'


@dataclass
class Figure:
    """
    One row of the report. A figure measured in repetitions has as its value
    the median of the per-repetition values, and *low*/*high* their range
    (likewise its baseline); a figure of :mod:`bench.compare` also names its
    *placement* and carries the TCP echo round trip measured beside it in
    that placement (*echo*, µs, with its range).
    """
    key: str
    name: str
    value: Optional[float]
    unit: str
    baseline: Optional[float] = None
    target: Optional[Target] = None
    note: str = ''
    #: Why the figure could not be measured.
    error: str = ''
    low: Optional[float] = None
    high: Optional[float] = None
    baseline_low: Optional[float] = None
    baseline_high: Optional[float] = None
    #: What the baseline is: 'reference server', 'one-way floor (½ echo)', …
    baseline_name: str = ''
    #: 'same CPU' or 'cross CPU': where client and server ran (see bench.compare).
    placement: str = ''
    echo: Optional[float] = None
    echo_low: Optional[float] = None
    echo_high: Optional[float] = None
    repeats: Optional[int] = None

    @property
    def ratio(self):
        if self.value is None or not self.baseline:
            return None
        return self.value / self.baseline

    @property
    def echo_ratio(self):
        """
        What one operation costs in TCP echo round trips (same placement): the
        value over the echo for a time, the echo's rate over the value for a rate.
        """
        if self.value is None or not self.echo:
            return None
        if self.unit == '/s':
            return 1e6 / self.value / self.echo if self.value else None
        return self.value / self.echo

    @property
    def passed(self):
        return self.target.met_by(self) if self.target else None

    def as_dict(self):
        return {
            'key': self.key, 'name': self.name, 'value': self.value, 'unit': self.unit,
            'baseline': self.baseline, 'ratio': self.ratio,
            'target': self.target.describe(self.unit) if self.target else None,
            'passed': self.passed, 'note': self.note or None, 'error': self.error or None,
            'low': self.low, 'high': self.high, 'baseline_low': self.baseline_low,
            'baseline_high': self.baseline_high, 'baseline_name': self.baseline_name or None,
            'placement': self.placement or None, 'echo_us': self.echo,
            'echo_low_us': self.echo_low, 'echo_high_us': self.echo_high,
            'echo_ratio': self.echo_ratio, 'repeats': self.repeats,
        }


def format_range(low, high, unit):
    """``'210–230'`` (without the unit), or '' without a range."""
    if low is None or high is None:
        return ''
    text = f'{format_number(low, unit)}–{format_number(high, unit)}'
    return text.replace(f' {unit}', '').replace(' /s', '') if unit else text


def format_number(value, unit):
    if value is None:
        return '—'
    if unit == '/s':
        return f'{value:,.0f} /s'
    if unit == '×':
        return f'{value:.2f}×'
    if abs(value) >= 100 or unit == 'count':
        text = f'{value:,.0f}'
    elif abs(value) >= 10:
        text = f'{value:.1f}'
    else:
        text = f'{value:.2f}'
    return text if unit == 'count' else f'{text} {unit}'


# Sizes -------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How much of everything a run does."""
    name: str
    echo_round_trips: int
    write_read_pairs: int
    reads: int
    pipelined_writes: int
    idle_seconds: float
    #: Upper bound on the time of any one timed loop.
    loop_seconds: float
    #: on(time_ms=100) tasks run one after another on one pin.
    on_repeats: int
    #: Rounds of on(time_ms=100) on 26 pins at once.
    on_rounds: int
    #: How long the 26 pins blink at 10 Hz.
    blink_seconds: float
    #: Cycles of PWMLED.pulse (1 s each), remote and local.
    pulse_cycles: int
    #: Edges sent through the virtual jumper wire, one at a time, per repetition
    #: and placement (event latency).
    event_edges: int
    #: How long the load phase's clients write (8 processes × 3 pins × 25 Hz).
    load_seconds: float
    #: Repetitions of every comparison (bench.compare): ours, reference, echo in turn.
    repeats: int = 3
    #: Round trips per subject and repetition (read, write→read, read after 1 write,
    #: echo).
    compare_samples: int = 200
    #: Reads after writes to 26 pins per subject and repetition.
    fan_out_samples: int = 50
    #: Seed-API on(time_ms) calls per subject and repetition.
    on_calls: int = 60
    #: MCP3008 samples per subject and repetition.
    spi_samples: int = 500
    #: How long the read-load clients read, per subject and repetition.
    read_load_seconds: float = 0.5


QUICK = Plan('quick', echo_round_trips=3000, write_read_pairs=1500, reads=1500,
             pipelined_writes=20000, idle_seconds=2.0, loop_seconds=8.0,
             on_repeats=10, on_rounds=5, blink_seconds=3.0, pulse_cycles=2,
             event_edges=40, load_seconds=8.0, repeats=3, compare_samples=200,
             fan_out_samples=50, on_calls=60, spi_samples=500, read_load_seconds=0.5)
FULL = Plan('full', echo_round_trips=20000, write_read_pairs=10000, reads=10000,
            pipelined_writes=100000, idle_seconds=5.0, loop_seconds=30.0,
            on_repeats=40, on_rounds=20, blink_seconds=10.0, pulse_cycles=6,
            event_edges=150, load_seconds=60.0, repeats=5, compare_samples=600,
            fan_out_samples=100, on_calls=200, spi_samples=1500, read_load_seconds=1.5)


# Helpers -----------------------------------------------------------------------

def timed_loop(step, count, seconds):
    """
    Call ``step(i)`` for i in 0..count-1, or until *seconds* have passed, and
    return ``(microseconds per call, results)``.
    """
    durations, results = [], []
    deadline = time.monotonic() + seconds
    clock = time.perf_counter_ns
    for i in range(count):
        started = clock()
        result = step(i)
        durations.append((clock() - started) / 1000)
        results.append(result)
        if time.monotonic() > deadline:
            break
    return durations, results


def bounded_calls(step, count, seconds):
    """``[step(i) for i in range(count)]``, cut short once *seconds* have passed."""
    results = []
    deadline = time.monotonic() + seconds
    for i in range(count):
        results.append(step(i))
        if time.monotonic() > deadline:
            break
    return results


def output_pin(factory, gpio):
    """The factory's pin *gpio*, claimed and made an output."""
    pin = factory.pin(gpio)
    pin.function = 'output'
    return pin


def summary(samples):
    """Median, p99 and friends of *samples*, for the details."""
    if not samples:
        return {'count': 0}
    ordered = sorted(samples)
    return {
        'count': len(samples),
        'median': statistics.median(ordered),
        'p99': percentile(ordered, 99),
        'mean': statistics.fmean(ordered),
        'min': ordered[0],
        'max': ordered[-1],
    }


def percentile(samples, pct):
    if len(samples) < 2:
        return samples[0]
    return statistics.quantiles(samples, n=100, method='inclusive')[pct - 1]


# The floor: TCP echo (compared beside every figure of bench.compare) ------------------

def echo_round_trip(sock, payload):
    sock.sendall(payload)
    received = 0
    while received < len(payload):  # at most len(payload) reads
        chunk = sock.recv(len(payload) - received)
        if not chunk:
            raise ConnectionError('the echo server closed the connection')
        received += len(chunk)


def echo_samples(port, count, seconds):
    """Round trips (µs) of *count* 32-byte messages on a new connection, after a warm-up."""
    payload = b'x' * MESSAGE_SIZE
    with socket.create_connection((harness.HOST, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        timed_loop(lambda i: echo_round_trip(sock, payload), WARMUP, seconds)
        durations, _ = timed_loop(lambda i: echo_round_trip(sock, payload), count, seconds)
    return durations


def write_then_read(pin, i):
    """Write *i*'s parity, read it back: True if the read shows the write."""
    state = i & 1
    pin.state = state
    return pin.state == state


# 3. Pipelined writes ---------------------------------------------------------------

#: Writes per second a client must be able to post (and the server carry out).
PIPELINED_TARGET = 30000

def writes_counters(factory, gpios):
    """
    The server's ``writes`` counter of each of *gpios*, from ``status`` (without
    the histories: a status of every pin's 1000 last changes is megabytes the
    server builds, which would show in the memory measured after this).
    """
    status = factory.status(history=0)
    counters = {pin['gpio']: pin.get('writes') for pin in status['pins']}
    return {gpio: counters.get(gpio) for gpio in gpios}


def post_writes(pins, total, seconds):
    """
    Post up to *total* writes round-robin over *pins*, each pin alternating
    1/0; return (writes posted per pin, last state written per pin).
    """
    posted = [0] * len(pins)
    last = [None] * len(pins)
    deadline = time.monotonic() + seconds
    count = len(pins)
    for i in range(total):
        k = i % count
        state = (posted[k] + 1) & 1
        pins[k].state = state
        posted[k] += 1
        last[k] = state
        if i % 1024 == 1023 and time.monotonic() > deadline:
            break
    return posted, last


def measure_pipelined(factory, gpios, plan, key, server_pid):
    pins = [output_pin(factory, gpio) for gpio in gpios]
    before = writes_counters(factory, gpios)
    cpu_before = harness.cpu_seconds_by_role(server_pid)
    started = time.perf_counter()
    posted, last = post_writes(pins, plan.pipelined_writes, plan.loop_seconds)
    posting = time.perf_counter() - started
    final = [pin.state for pin in pins]  # a read waits for every write sent before it
    elapsed = time.perf_counter() - started
    cpu_after = harness.cpu_seconds_by_role(server_pid)
    after = writes_counters(factory, gpios)

    executed = [after[g] - before[g] if None not in (after[g], before[g]) else None
                for g in gpios]
    total_posted = sum(posted)
    lost = sum(p - e for p, e in zip(posted, executed) if e is not None)
    # Per pin, the server must have carried out exactly what was posted.
    miscounted = sum(abs(p - e) for p, e in zip(posted, executed) if e is not None)
    unknown = executed.count(None)
    wrong_final = sum(1 for got, want in zip(final, last) if want is not None and got != want)
    count = len(pins)
    label = f'{count} pin' + ('s' if count > 1 else '')
    figures = [
        Figure(f'{key}_writes_per_s', f'pipelined writes, {label}', total_posted / elapsed, '/s',
               target=Target(PIPELINED_TARGET, at_most=False)),
        Figure(f'{key}_writes_miscounted', f'pipelined writes, {label}: lost or extra',
               miscounted if not unknown else None, 'count', target=Target(0),
               note=f'{unknown} pins without a writes counter' if unknown else ''),
    ]
    details = {
        'pins': gpios, 'writes_posted': total_posted, 'posted_per_pin': posted,
        'executed_per_pin': executed, 'writes_lost': lost, 'writes_miscounted': miscounted,
        'seconds_posting': posting, 'seconds_until_barrier_read': elapsed,
        'posted_per_s': total_posted / posting if posting else None,
        'final_state_wrong': wrong_final,
        # Where the server spent its CPU meanwhile (workers that ended are not seen).
        'server_cpu_seconds': {role: cpu_after[role] - cpu_before.get(role, 0.0)
                               for role in cpu_after},
    }
    return figures, details


# 4. Claiming pins, idle CPU and memory -------------------------------------------

def claim_devices(factory, gpios, seconds):
    """Construct an OutputDevice on each of *gpios*; return (devices, ms for each)."""
    devices, durations = [], []
    deadline = time.monotonic() + seconds
    for gpio in gpios:
        started = time.perf_counter()
        devices.append(OutputDevice(gpio, pin_factory=factory))
        durations.append((time.perf_counter() - started) * 1000)
        if time.monotonic() > deadline:
            break
    return devices, durations


def claim_figures(gpios, durations):
    stats = summary(durations)
    figures = [
        Figure('claim_median_ms', f'pin claim (OutputDevice), median of {len(durations)}',
               stats['median'], 'ms', target=Target(10.0)),
        Figure('claim_max_ms', 'pin claim (OutputDevice), slowest', stats['max'], 'ms'),
    ]
    details = {'gpios': gpios[:len(durations)], 'ms': durations, 'ms_summary': stats}
    return figures, details


# Idle CPU --------------------------------------------------------------------

def measure_idle_cpu(server_pid, seconds, claimed):
    tree = harness.process_tree(server_pid)
    before = harness.cpu_ticks(tree)
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    after = harness.cpu_ticks(harness.process_tree(server_pid))
    # A process that appeared meanwhile counts whole; one that ended is not seen.
    used = {pid: ticks - before.get(pid, 0) for pid, ticks in after.items()}
    busy = sum(used.values()) / harness.CLOCK_TICKS_PER_SECOND
    percent = busy / elapsed * 100
    figures = [Figure('idle_cpu_percent', f'idle CPU, {claimed} pins claimed, % of one core',
                      percent, '%', target=Target(1.0))]
    details = {
        'seconds': elapsed, 'cpu_seconds': busy, 'processes': len(after),
        'resolution_percent': 100 / harness.CLOCK_TICKS_PER_SECOND / elapsed,
        'busiest': sorted(((ticks, pid, harness.command_line(pid)[:80])
                           for pid, ticks in used.items() if ticks), reverse=True)[:5],
    }
    return figures, details


# Memory ---------------------------------------------------------------------

def measure_memory(server_pid, claimed):
    roles = harness.server_roles(server_pid)
    memory = {pid: harness.memory_kb(pid) for pids in roles.values() for pid in pids}
    memory = {pid: kb for pid, kb in memory.items() if kb is not None}

    def total(kind, pids=None):
        return sum(kb[kind] for pid, kb in memory.items() if pids is None or pid in pids) / 1024

    workers = [pid for pid in roles['workers'] if pid in memory]
    worker_uss = [memory[pid]['uss'] / 1024 for pid in workers]
    worker_pss = [memory[pid]['pss'] / 1024 for pid in workers]
    figures = [
        Figure('memory_uss_total_mib', f'memory USS, server tree ({len(memory)} processes)',
               total('uss'), 'MiB', target=Target(100.0)),
        Figure('memory_pss_total_mib', 'memory PSS, server tree', total('pss'), 'MiB'),
        Figure('memory_uss_worker_mib', f'memory USS per worker, median of {len(workers)}',
               statistics.median(worker_uss) if worker_uss else None, 'MiB'),
        Figure('memory_pss_worker_mib', 'memory PSS per worker, median',
               statistics.median(worker_pss) if worker_pss else None, 'MiB'),
    ]
    details = {
        'claimed_pins': claimed,
        'by_role_mib': {role: {'processes': len(pids), 'uss': total('uss', pids),
                              'pss': total('pss', pids)}
                       for role, pids in roles.items()},
        'per_process_kb': {str(pid): dict(kb, cmd=harness.command_line(pid)[:80])
                           for pid, kb in memory.items()},
    }
    return figures, details


# 5–6. Server-timed tasks ---------------------------------------------------------
# The timing is read from the server's per-pin history: each state change is
# recorded by the pin's worker, on its monotonic clock, right after the change.
# Only the entries after a mark (the time of each pin's last entry before the
# measurement) count, so earlier phases and claims do not mix in.

#: History entries the server keeps per pin (and the most ``status`` returns).
HISTORY_LENGTH = 1000
ON_MS = 100
BLINK_ON_S = BLINK_OFF_S = 0.05
#: Extra seconds to wait for a task's end beyond its own length.
TASK_WAIT_MARGIN = 5.0
#: What the seed project's server did, for comparison (not a baseline: a
#: different server, measured elsewhere).
SEED_ON_100MS = {'pins': 8, 'median_ms': 3.9, 'max_ms': 9.5,
                 'text': 'seed server, 8 pins: +3.9 ms median, +9.5 ms max'}


def histories(factory, gpios):
    """``{gpio: history}`` of *gpios* from the server's ``status``."""
    status = factory.status(history=HISTORY_LENGTH)
    by_gpio = {pin['gpio']: pin.get('history') or [] for pin in status['pins']}
    return {gpio: by_gpio.get(gpio, []) for gpio in gpios}


def history_marks(factory, gpios):
    """``{gpio: t of its last history entry}``: what comes later is the measurement's."""
    return {gpio: history[-1]['t'] if history else float('-inf')
            for gpio, history in histories(factory, gpios).items()}


def state_changes(history, mark):
    """``[(t, state)]`` of the state changes after *mark*; raises if some were dropped."""
    if len(history) >= HISTORY_LENGTH and history[0]['t'] > mark:
        raise RuntimeError(f'the server history ({HISTORY_LENGTH} entries per pin) overflowed: '
                           'changes after the mark were dropped')
    return [(entry['t'], entry['state']) for entry in history
            if 'state' in entry and entry['t'] > mark]


def pulse_errors(changes, seconds):
    """
    Pair each change to 1 with the change to 0 right after it; return
    (signed errors of the pulse lengths against *seconds*, changes not paired).
    """
    errors, unpaired, i = [], 0, 0
    while i < len(changes):  # at most len(changes) steps, each consumes 1 or 2
        if changes[i][1] == 1 and i + 1 < len(changes) and changes[i + 1][1] == 0:
            errors.append(changes[i + 1][0] - changes[i][0] - seconds)
            i += 2
        else:
            unpaired += 1
            i += 1
    return errors, unpaired


def error_summary_ms(errors_s):
    """Signed median, and p99 / max of the absolute errors, in ms (plus the rest, for the JSON)."""
    if not errors_s:
        return {'count': 0, 'median': None, 'p99_abs': None, 'max_abs': None}
    signed = sorted(e * 1000 for e in errors_s)
    absolute = sorted(abs(e) for e in signed)
    return {
        'count': len(signed),
        'median': statistics.median(signed),
        'mean': statistics.fmean(signed),
        'min': signed[0],
        'max': signed[-1],
        'median_abs': statistics.median(absolute),
        'p99_abs': percentile(absolute, 99),
        'max_abs': absolute[-1],
    }


def error_rows(key, label, stats, note=''):
    """Rows for signed median, p99 |error| (target ≤ 1 ms) and max |error|."""
    count = stats['count']
    return [
        Figure(f'{key}_median_ms', f'{label}, median of {count} (signed)', stats['median'], 'ms',
               note=note),
        Figure(f'{key}_p99_ms', f'{label}, p99 |error|', stats['p99_abs'], 'ms',
               target=Target(1.0)),
        Figure(f'{key}_max_ms', f'{label}, max |error|', stats['max_abs'], 'ms'),
    ]


def switch_off(remote, pins):
    """
    Drive every one of *pins* low (an ``off`` task, waited for) so that the
    first rising edge of a measurement is a change the history records; return
    the GPIOs that were high before (``RemoteServer.pin`` makes a pin an output
    without setting its level: GPIO2 and 3 have pull-ups and start high).
    """
    status = remote.factory.status(history=0)
    high = sorted(pin['gpio'] for pin in status['pins']
                  if pin['gpio'] in {p.gpio for p in pins} and pin.get('state'))
    for handle in [pin.off() for pin in pins]:
        handle.wait(TASK_WAIT_MARGIN)
    return high


def run_on_round(pins, time_ms):
    """on(time_ms) on every one of *pins* at once; wait for all; return how each ended."""
    handles = [pin.on(time_ms=time_ms) for pin in pins]
    timeout = time_ms / 1000 + TASK_WAIT_MARGIN
    return [handle.wait(timeout) for handle in handles]


def measure_on_tasks(remote, pins, rounds, seconds, key, label, note=''):
    """
    *rounds* rounds of ``on(time_ms=100)`` on all *pins* (RemotePins of
    *remote*) at once, one round after the other (each waits for every task
    to complete), bounded by *seconds*; the duration error of every pulse
    from the server's history.
    """
    factory = remote.factory
    gpios = [pin.gpio for pin in pins]
    high_before = switch_off(remote, pins)
    marks = history_marks(factory, gpios)
    results = []
    deadline = time.monotonic() + seconds
    done_rounds = 0
    for _ in range(rounds):
        results.extend(run_on_round(pins, ON_MS))
        done_rounds += 1
        if time.monotonic() > deadline:
            break
    after = histories(factory, gpios)

    errors, per_pin, unpaired, missing, worst = [], {}, 0, 0, []
    for gpio in gpios:
        pin_errors, pin_unpaired = pulse_errors(state_changes(after[gpio], marks[gpio]),
                                                ON_MS / 1000)
        worst.extend((abs(e), gpio, k) for k, e in enumerate(pin_errors))
        errors.extend(pin_errors)
        unpaired += pin_unpaired
        missing += abs(done_rounds - len(pin_errors))
        per_pin[gpio] = error_summary_ms(pin_errors)
    not_completed = sum(1 for result in results if result != 'completed')
    stats = error_summary_ms(errors)
    figures = error_rows(key, label, stats, note) + [
        Figure(f'{key}_faulty', f'{label}: tasks not completed or edges amiss',
               not_completed + unpaired + missing, 'count', target=Target(0)),
    ]
    details = {
        'pins': gpios, 'rounds': done_rounds, 'tasks': len(results), 'time_ms': ON_MS,
        'error_ms': stats, 'error_ms_per_pin': per_pin,
        'results': {result: results.count(result) for result in set(results)},
        'not_completed': not_completed, 'unpaired_changes': unpaired,
        'pulses_missing_or_extra': missing, 'pins_high_before_switching_off': high_before,
        # The ten largest |errors|: (ms, gpio, index of the pulse on that pin).
        'worst_errors': [(round(e * 1000, 3), gpio, k)
                         for e, gpio, k in sorted(worst, reverse=True)[:10]],
        'errors_ms': [round(e * 1000, 4) for e in errors],
    }
    return figures, details


def measure_blink(remote, pins, seconds, key='blink_26'):
    """
    Every one of *pins* blinks at 10 Hz (50 ms on, 50 ms off) for *n* cycles
    (about *seconds*), all at once; from the server's history: the error of
    each period between rising edges, and each rising edge's drift from
    where the first one says it should be.
    """
    factory = remote.factory
    gpios = [pin.gpio for pin in pins]
    period = BLINK_ON_S + BLINK_OFF_S
    cycles = max(2, round(seconds / period))
    high_before = switch_off(remote, pins)
    marks = history_marks(factory, gpios)
    started = time.monotonic()
    handles = [pin.blink(time_ms=0, arg1=BLINK_ON_S, arg2=BLINK_OFF_S, n=cycles) for pin in pins]
    timeout = cycles * period + TASK_WAIT_MARGIN
    results = [handle.wait(max(0.0, started + timeout - time.monotonic())) for handle in handles]
    elapsed = time.monotonic() - started
    after = histories(factory, gpios)

    period_errors, drifts, per_pin, missing, worst = [], [], {}, 0, []
    for gpio in gpios:
        rises = [t for t, state in state_changes(after[gpio], marks[gpio]) if state == 1]
        missing += abs(cycles - len(rises))
        pin_periods = [b - a - period for a, b in zip(rises, rises[1:])]
        worst.extend((abs(e), gpio, k + 1, rises[k + 1] - started) for k, e in
                     enumerate(pin_periods))
        pin_drifts = [t - rises[0] - k * period for k, t in enumerate(rises)]
        period_errors.extend(pin_periods)
        drifts.extend(pin_drifts[1:])
        per_pin[gpio] = {
            'rising_edges': len(rises),
            'period_error_ms': error_summary_ms(pin_periods),
            'final_drift_ms': pin_drifts[-1] * 1000 if pin_drifts else None,
            'max_abs_drift_ms': max((abs(d) * 1000 for d in pin_drifts), default=None),
        }
    not_completed = sum(1 for result in results if result != 'completed')
    stats = error_summary_ms(period_errors)
    drift = error_summary_ms(drifts)
    label = f'blink 10 Hz, {len(pins)} pins, period error'
    figures = error_rows(key + '_period', label, stats) + [
        Figure(f'{key}_drift_max_ms', f'blink 10 Hz, {len(pins)} pins, max |drift| of a rising edge',
               drift['max_abs'], 'ms', note=f'over {cycles} cycles'),
        Figure(f'{key}_faulty', f'blink 10 Hz, {len(pins)} pins: tasks not completed or '
               'rising edges missing', not_completed + missing, 'count', target=Target(0)),
    ]
    details = {
        'pins': gpios, 'cycles': cycles, 'on_s': BLINK_ON_S, 'off_s': BLINK_OFF_S,
        'seconds': elapsed, 'period_error_ms': stats, 'drift_ms': drift,
        'per_pin': per_pin, 'not_completed': not_completed,
        'rising_edges_missing_or_extra': missing, 'pins_high_before_switching_off': high_before,
        # The ten largest |period errors|: (ms, gpio, index of the rising edge, its time
        # in s after the blinks were started, on the same monotonic clock: same machine).
        'worst_period_errors': [(round(e * 1000, 3), gpio, k, round(t, 4))
                                for e, gpio, k, t in sorted(worst, reverse=True)[:10]],
        'results': {result: results.count(result) for result in set(results)},
    }
    return figures, details


# 7. gpiozero's PWMLED.pulse, remote vs local ----------------------------------------

PULSE_GPIO = 18
PULSE_FADE_S = 0.5


def timed_pulse(led, cycles):
    """Run *cycles* of ``led.pulse`` in the foreground; return the seconds it took."""
    started = time.perf_counter()
    led.pulse(fade_in_time=PULSE_FADE_S, fade_out_time=PULSE_FADE_S, n=cycles, background=False)
    return time.perf_counter() - started


def pulse_remote(factory, cycles):
    """``(seconds, state changes the server recorded)`` of a pulse through *factory*."""
    led = PWMLED(PULSE_GPIO, pin_factory=factory)
    try:
        marks = history_marks(factory, [PULSE_GPIO])
        seconds = timed_pulse(led, cycles)
        _ = led.pin.state  # a read: every write sent before it has been carried out
        changes = state_changes(histories(factory, [PULSE_GPIO])[PULSE_GPIO], marks[PULSE_GPIO])
    finally:
        led.close()
    span = changes[-1][0] - changes[0][0] if len(changes) > 1 else None
    return seconds, len(changes), span


def pulse_local(cycles):
    """``(seconds, state changes)`` of the same pulse on a local MockFactory."""
    factory = MockFactory(pin_class=MockPWMPin)
    try:
        led = PWMLED(PULSE_GPIO, pin_factory=factory)
        try:
            pin = factory.pin(PULSE_GPIO)
            pin.clear_states()
            seconds = timed_pulse(led, cycles)
            # clear_states() leaves one entry (the state then), which is no change
            changes = len(pin.states) - 1
        finally:
            led.close()
    finally:
        factory.close()
    return seconds, changes


def measure_pulse(factory, cycles):
    remote_s, remote_changes, remote_span = pulse_remote(factory, cycles)
    local_s, local_changes = pulse_local(cycles)
    remote_rate, local_rate = remote_changes / remote_s, local_changes / local_s
    ratio_target = Target(1.02, on_ratio=True, lower=0.98)
    label = f'PWMLED.pulse(0.5, 0.5), {cycles} cycles'
    figures = [
        Figure('pulse_cycle_s', f'{label}: cycle length (vs local mock)', remote_s / cycles, 's',
               baseline=local_s / cycles, target=ratio_target),
        Figure('pulse_write_rate', f'{label}: state changes/s (vs local mock)', remote_rate,
               '/s', baseline=local_rate, target=ratio_target),
    ]
    details = {
        'gpio': PULSE_GPIO, 'cycles': cycles, 'fade_in_s': PULSE_FADE_S,
        'fade_out_s': PULSE_FADE_S,
        'remote': {'seconds': remote_s, 'state_changes': remote_changes,
                   'changes_per_s': remote_rate,
                   'server_span_s': remote_span},
        'local_mock': {'seconds': local_s, 'state_changes': local_changes,
                       'changes_per_s': local_rate},
    }
    return figures, details


# 8. Edge events: latency from the server's edge to the client's callback ------------

#: Edges sent (and waited for) before the measured ones.
EVENT_WARMUP = 20
#: How long to wait for the callback of one edge.
EVENT_TIMEOUT = 2.0
#: How long to wait after the last edge for events that should not come.
EVENT_QUIET = 0.2
EVENT_PATH = ('edge time taken by the server\'s pin worker when the mock backend reports the '
              'change; covers worker → server main process → TCP → client reader → '
              'dispatcher thread → callback')


class EdgeRecorder:
    """
    A ``pin.when_changed`` handler: records ``(monotonic(), ticks, state)`` of
    each call and sets :attr:`arrived`. gpiozero keeps only a weak reference
    to a handler: whoever installs one must hold on to it.
    """

    def __init__(self):
        self.calls = []
        self.arrived = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, ticks, state):
        now = time.monotonic()
        with self._lock:
            self.calls.append((now, ticks, state))
        self.arrived.set()

    def count(self):
        with self._lock:
            return len(self.calls)

    def since(self, index):
        with self._lock:
            return self.calls[index:]


def send_edges(out, recorder, count, seconds, first_state):
    """
    Toggle *out* *count* times (bounded by *seconds*), one edge at a time:
    write, then wait (bounded) for the callback. Returns one
    ``(monotonic before the write, state written, [calls from the write to
    the next edge's])`` per edge.
    """
    edges = []
    deadline = time.monotonic() + seconds
    state = first_state
    for _ in range(count):
        seen = recorder.count()
        recorder.arrived.clear()
        before = time.monotonic()
        if state:
            out.on()
        else:
            out.off()
        recorder.arrived.wait(EVENT_TIMEOUT)
        edges.append((before, state, seen))
        state = 1 - state
        if time.monotonic() > deadline:
            break
    # Each edge's calls: from its write to the next edge's write (or to now).
    calls = recorder.since(0)
    ends = [seen for _, _, seen in edges[1:]] + [len(calls)]
    return [(before, state, calls[seen:end])
            for (before, state, seen), end in zip(edges, ends)]


class Wire:
    """
    The two devices on the server's virtual jumper wire (``--mock-wire
    OUT:IN``) and the recorder of the input's callbacks: an edge of the output
    makes one of the input. :meth:`edges` sends some and returns their samples.
    """

    def __init__(self, factory, out_gpio, in_gpio):
        self.factory = factory
        self.out_gpio, self.in_gpio = out_gpio, in_gpio
        self.recorder = EdgeRecorder()   # the strong reference the pin's weak one needs
        self.out = self.inp = None
        try:
            self.out = DigitalOutputDevice(out_gpio, pin_factory=factory)
            self.inp = DigitalInputDevice(in_gpio, pin_factory=factory)
            # Replaces gpiozero's own handler (which calls when_activated/
            # when_deactivated without the ticks): the same pin-level callback.
            self.inp.pin.when_changed = self.recorder
        except BaseException:
            self.close()
            raise
        self.next_state = 1 - int(bool(self.out.value))  # the write must change the output
        self.warmup = self.edges(EVENT_WARMUP, EVENT_TIMEOUT * EVENT_WARMUP)

    @property
    def offset(self):
        """The factory's estimate of the server's clock minus ours."""
        return getattr(getattr(self.factory, '_connection', None), 'clock_offset', None)

    def edges(self, count, seconds):
        """Send *count* edges (bounded by *seconds*); return their analysis (:func:`edge_samples`)."""
        sent = send_edges(self.out, self.recorder, count, seconds, self.next_state)
        if sent:
            self.next_state = 1 - sent[-1][1]
        return edge_samples(sent, self.offset)

    def close(self):
        """
        Count the calls that come late, then close both devices. A read of the
        input first: the server then makes sure the output's worker has taken
        every (posted) write. Without it, releasing the output right after a
        posted write makes the connection's next barrier (the factory's
        closing ``bye``) fail with "the worker of GPIO0 ended unexpectedly" (a
        server problem: it syncs a pin that is being released).
        """
        late = 0
        if self.inp is not None and self.out is not None:
            before = self.recorder.count()
            time.sleep(EVENT_QUIET)
            late = self.recorder.count() - before
            _ = self.inp.pin.state
        for device in (self.inp, self.out):
            if device is not None:
                device.close()
        self.inp = self.out = None
        return late


def edge_samples(edges, offset):
    """
    From :func:`send_edges`' result: the latency of each edge (server's edge
    time converted to our clock → callback), the round trip (before the
    write → callback), and the edges missing, extra or of the wrong level.
    """
    latency_us, round_trip_us, corrected_us = [], [], []
    missing = wrong_state = extra = edge_before_write = 0
    for before, state, calls in edges:
        if not calls:
            missing += 1
            continue
        extra += len(calls) - 1
        called, ticks, got = calls[0]
        if int(bool(got)) != state:
            wrong_state += 1
            continue
        latency_us.append((called - ticks) * 1e6)
        round_trip_us.append((called - before) * 1e6)
        if offset is not None:
            # Same machine, one monotonic clock: the server's own edge time is
            # ticks + offset, so this is the latency without the offset's error.
            corrected_us.append((called - ticks - offset) * 1e6)
        if ticks < before:
            edge_before_write += 1
    return {'edges': len(edges), 'latency_us': latency_us, 'write_to_callback_us': round_trip_us,
            'latency_us_without_offset': corrected_us, 'missing': missing, 'extra': extra,
            'wrong_state': wrong_state, 'edge_time_before_write': edge_before_write}


# 10. Load: many clients writing, each in its own process -------------------------------------

LOAD_CLIENTS = 8
LOAD_PINS_PER_CLIENT = 3
#: GPIO 2..25: 24 pins, none of them the event phase's wire (GPIO0 → GPIO1).
LOAD_GPIOS = list(range(2, 2 + LOAD_CLIENTS * LOAD_PINS_PER_CLIENT))
#: Writes per second per pin, and the least a pin must get at the server.
LOAD_RATE = 25.0
LOAD_MIN_RATE = 24.5
#: Seconds for the clients to start, connect, claim their pins and say ready.
LOAD_READY_TIMEOUT = 30.0
#: From sending the start time to the first deadline.
LOAD_START_DELAY = 1.0
#: Beyond the writes' own length: for the final reads, the status and the report.
LOAD_RESULT_MARGIN = 30.0


def sleep_until(moment):
    time.sleep(max(0.0, moment - time.monotonic()))


def load_client_message(client, by, kind):
    """The client's next message (waiting until *by*), which must be of *kind*."""
    message = client.read_message(max(0.0, by - time.monotonic()))
    if 'error' in message:
        raise RuntimeError(f'{client.name} failed: {message["error"]}')
    if kind not in message:
        raise RuntimeError(f'{client.name}: expected {kind!r}, got {sorted(message)}')
    return message[kind]


def analyse_load_pin(gpio, pin):
    """
    One pin's writes against the server: the values it recorded after the
    mark (the last ≤ 1000 changes) must be the tail of what was sent, and its
    ``writes`` counter must have grown by exactly the writes sent.
    """
    sent = pin['sent']
    values = [loadclient.value(k) for k in range(sent)]
    times = [t for t, _ in pin['history']]
    states = [state for _, state in pin['history']]
    overflowed = pin['history_overflowed']
    counters = [loadclient.counter(state) for state in states]
    known = [k for k in counters if k is not None and k < sent]
    unknown = len(counters) - len(known)          # values this client never sent
    duplicated = len(known) - len(set(known))
    # Out of order: a write recorded before an earlier one (each at its first appearance,
    # so that a duplicate counts as a duplicate only).
    seen, firsts = set(), []
    for k in known:
        if k not in seen:
            seen.add(k)
            firsts.append(k)
    reordered = sum(1 for a, b in zip(firsts, firsts[1:]) if b < a)
    # Without overflow every write must be there; with it, those from the oldest kept one.
    first_kept = 0 if not overflowed else (min(known) if known else sent)
    lost = len(set(range(first_kept, sent)) - set(known))
    before, after = pin['writes_before'], pin['writes_after']
    executed = after - before if None not in (before, after) else None
    counter_lost = max(0, sent - executed) if executed is not None else 0
    counter_extra = max(0, executed - sent) if executed is not None else 0
    tail_equal = bool(states) and states == values[-len(states):] and (
        overflowed or len(states) == len(values))
    final_ok = bool(values) and pin['final_read'] == values[-1]
    intervals = [b - a for a, b in zip(times, times[1:])]
    client_span = (pin['last_write'] - pin['first_write']
                   if pin['first_write'] is not None and sent > 1 else None)
    return {
        'gpio': gpio, 'sent': sent, 'executed': executed,
        'lost': max(lost, counter_lost), 'duplicated': max(duplicated, counter_extra),
        'reordered': reordered, 'unknown_values': unknown,
        'lost_in_history': lost, 'duplicated_in_history': duplicated,
        'counter_lost': counter_lost, 'counter_extra': counter_extra,
        'history_changes': len(states), 'history_overflowed': overflowed,
        'history_tail_equal': tail_equal, 'final_read': pin['final_read'],
        'final_read_ok': final_ok,
        'writer_error': pin['error'], 'writer_alive': pin['alive'],
        'status_error': pin['status_error'],
        # Rates: changes recorded by the server over its history's span, and the client's.
        'server_rate_hz': (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None,
        'server_span_s': times[-1] - times[0] if times else None,
        'client_rate_hz': (sent - 1) / client_span if client_span else None,
        'server_interval_error_ms': error_summary_ms([i - 1 / LOAD_RATE for i in intervals]),
        'amiss': not (tail_equal and final_ok) or unknown > 0 or bool(pin['error'])
        or pin['alive'] or bool(pin['status_error']),
    }


def run_load_clients(server_pid, port, count, log, expected_workers, settle_timeout):
    """
    Start the clients, wait until all are ready and the server has settled,
    start them together and take the server's CPU (and the clients') over
    the writes; return what each said, and what happened meanwhile.
    """
    groups = [LOAD_GPIOS[i:i + LOAD_PINS_PER_CLIENT]
              for i in range(0, len(LOAD_GPIOS), LOAD_PINS_PER_CLIENT)]
    seconds = count / LOAD_RATE
    lifetime = LOAD_READY_TIMEOUT + LOAD_START_DELAY + seconds + LOAD_RESULT_MARGIN + 30
    clients, run = [], {'groups': groups, 'failures': [], 'stops': []}
    try:
        for gpios in groups:
            clients.append(harness.start_load_client(port, gpios, count, LOAD_RATE, log,
                                                     lifetime))
        ready_by = time.monotonic() + LOAD_READY_TIMEOUT
        run['ready'] = [load_client_message(client, ready_by, 'ready') for client in clients]
        run['workers_before'] = harness.wait_for_workers(server_pid, expected_workers,
                                                         settle_timeout)
        run['load_average_before'] = os.getloadavg()
        start = time.monotonic() + LOAD_START_DELAY
        for client in clients:
            client.send({'start': start})
        pids = [client.pid for client in clients]
        sleep_until(start)
        cpu_before, clients_before = harness.cpu_ticks_by_role(server_pid), harness.cpu_ticks(pids)
        wall_before = time.monotonic()
        sleep_until(start + seconds)
        cpu_after, clients_after = harness.cpu_ticks_by_role(server_pid), harness.cpu_ticks(pids)
        run['cpu_seconds'] = harness.cpu_seconds_between(cpu_before, cpu_after)
        run['cpu_window_s'] = time.monotonic() - wall_before
        run['cpu_window_late_s'] = wall_before - start
        run['client_cpu_seconds'] = {
            pid: (ticks - clients_before.get(pid, 0)) / harness.CLOCK_TICKS_PER_SECOND
            for pid, ticks in clients_after.items()}
        run['load_average_after'] = os.getloadavg()
        results_by = time.monotonic() + LOAD_RESULT_MARGIN
        run['results'] = []
        for client in clients:
            try:
                run['results'].append(load_client_message(client, results_by, 'result'))
            except Exception as exc:
                run['failures'].append({'client': client.name, 'error': f'{type(exc).__name__}: {exc}'})
    finally:
        for client in clients:
            run['stops'].append(client.stop())
    return run


def measure_load(server_pid, port, plan, log_path, spares, settle_timeout):
    """
    8 client processes, each with its own factory and 3 pins (GPIO 2..25),
    each pin written at 25 Hz (PWM duty cycles that encode a counter) for
    ``plan.load_seconds``; then every write is checked against the server's
    history and ``writes`` counter.
    """
    count = max(2, round(plan.load_seconds * LOAD_RATE))
    if count >= loadclient.VALUE_PERIOD:
        raise ValueError(f'{count} writes per pin: the values would repeat')
    with open(log_path, 'w') as log:
        run = run_load_clients(server_pid, port, count, log, len(LOAD_GPIOS) + spares,
                               settle_timeout)

    pins, lateness_ms = [], []
    for result in run['results']:
        for gpio, pin in result['pins'].items():
            pins.append(analyse_load_pin(int(gpio), pin))
            lateness_ms.extend(late * 1000 for late in pin['lateness_s'])
    failed_clients = len(run['failures'])
    reported = {pin['gpio'] for pin in pins}
    unreported = [gpio for gpio in LOAD_GPIOS if gpio not in reported]
    planned = count * len(LOAD_GPIOS)
    sent = sum(pin['sent'] for pin in pins)
    lost = sum(pin['lost'] for pin in pins)
    duplicated = sum(pin['duplicated'] for pin in pins)
    reordered = sum(pin['reordered'] for pin in pins)
    amiss = sum(1 for pin in pins if pin['amiss']) + len(unreported)
    rates = [pin['server_rate_hz'] for pin in pins]
    slowest = None if None in rates or unreported or not rates else min(rates)
    late = summary(lateness_ms)

    window = run['cpu_window_s']
    by_role = {role: sum(used.values()) for role, used in run['cpu_seconds'].items()}
    percent = {role: used / window * 100 for role, used in by_role.items()}
    total = sum(by_role.values()) / window * 100
    worker_seconds = sorted(run['cpu_seconds'].get('workers', {}).values())
    label = (f'load: {LOAD_CLIENTS} clients × {LOAD_PINS_PER_CLIENT} pins × {LOAD_RATE:g} Hz, '
             f'{count / LOAD_RATE:g} s')
    cpu = 'server CPU under load, % of one core'
    figures = [
        Figure('load_writes_sent', f'{label}: writes sent', sent, 'count',
               target=Target(planned, at_most=False), note=f'{planned} planned'),
        Figure('load_writes_lost', 'load: writes lost', lost, 'count', target=Target(0)),
        Figure('load_writes_duplicated', 'load: writes duplicated', duplicated, 'count',
               target=Target(0)),
        Figure('load_writes_reordered', 'load: writes reordered', reordered, 'count',
               target=Target(0)),
        Figure('load_pins_amiss', 'load: pins whose history/final read ≠ writes sent', amiss,
               'count', target=Target(0),
               note=f'{failed_clients} clients failed' if failed_clients else ''),
        Figure('load_rate_min_hz', f'load: write rate per pin at the server, slowest of '
               f'{len(LOAD_GPIOS)}', slowest, 'Hz', target=Target(LOAD_MIN_RATE, at_most=False)),
        Figure('load_lateness_p99_ms', f'load: client write lateness, p99 of {late["count"]}',
               late.get('p99'), 'ms', note='monotonic() at the write − its absolute deadline'),
        Figure('load_cpu_server_percent', f'{cpu}: main process', percent.get('server'), '%'),
        Figure('load_cpu_zygote_percent', f'{cpu}: zygote', percent.get('zygote'), '%'),
        Figure('load_cpu_workers_percent',
               f'{cpu}: {len(worker_seconds)} workers together', percent.get('workers'), '%'),
        Figure('load_cpu_total_percent', f'{cpu}: total', total, '%'),
    ]
    details = {
        'clients': LOAD_CLIENTS, 'pins_per_client': LOAD_PINS_PER_CLIENT,
        'groups': run['groups'], 'rate_hz': LOAD_RATE, 'writes_per_pin': count,
        'pwm_frequency': loadclient.PWM_FREQUENCY,
        'value': f'((k % {loadclient.VALUE_PERIOD}) + 1) / {loadclient.VALUE_SCALE}',
        'writes_planned': planned, 'writes_sent': sent, 'lost': lost,
        'duplicated': duplicated, 'reordered': reordered, 'pins_amiss': amiss,
        'pins_unreported': unreported, 'client_failures': run['failures'],
        'lateness_ms': late,
        'server_rate_hz': summary([r for r in rates if r is not None]),
        'client_rate_hz': summary([p['client_rate_hz'] for p in pins
                                   if p['client_rate_hz'] is not None]),
        'cpu_window_s': window, 'cpu_window_started_late_s': run['cpu_window_late_s'],
        'cpu_seconds_by_role': by_role, 'cpu_percent_by_role': percent,
        'cpu_percent_total': total,
        'processes_by_role': {role: len(used) for role, used in run['cpu_seconds'].items()},
        'worker_cpu_percent': summary([s / window * 100 for s in worker_seconds]),
        'clients_cpu_percent': {str(pid): s / window * 100
                                for pid, s in run['client_cpu_seconds'].items()},
        'clients_cpu_percent_total': sum(run['client_cpu_seconds'].values()) / window * 100,
        'workers_before_start': run['workers_before'],
        'load_average_before': run['load_average_before'],
        'load_average_after': run['load_average_after'],
        'client_stops': run['stops'], 'client_log': str(log_path),
        'per_pin': pins,
    }
    return figures, details


# 9. SPI: MCP3008 samples per second through the factory ---------------------------

SPI_VALUE = 0.5
SPI_TARGET = 2000.0


def _local_mcp3008_class():
    from gpiozero.pins.mock import MockSPIDevice

    class LocalMCP3008(MockSPIDevice):
        """gpiozero's MockSPIDevice as an MCP3008 (bit by bit, as gpiozero's own tests mock it)."""

        code = int(SPI_VALUE * 1024)

        def on_start(self):
            super().on_start()
            self.start = None

        def on_bit(self):
            if self.start is None:
                if self.rx_buf[-1]:
                    self.start = self.rx_bit
            elif self.rx_bit - self.start == 4:     # SGL/DIFF and D2..D0 are in
                # a sample clock, the null bit, then the result MSB first
                self.tx_buf = [0, 0] + [(self.code >> b) & 1 for b in range(9, -1, -1)]
    return LocalMCP3008


def spi_samples_per_s(device, samples, seconds):
    """Samples/s of ``device.value`` over *samples* reads (or *seconds*)."""
    expected = int(SPI_VALUE * 1024)
    start = time.perf_counter()
    deadline = start + seconds
    count = 0
    while count < samples and time.perf_counter() < deadline:
        if device.raw_value != expected:
            raise AssertionError(f'MCP3008 read {device.raw_value}, not {expected}')
        count += 1
    return count / (time.perf_counter() - start)


def spi_local_rates(plan, samples):
    """
    For comparison: the same MCP3008 on a local MockFactory (software SPI,
    bit-banged in this process), samples/s of *plan.repeats* repetitions.
    """
    from gpiozero import Device, MCP3008
    factory = MockFactory()
    previous, Device.pin_factory = Device.pin_factory, factory   # gpiozero's SPI bus needs it
    chip = _local_mcp3008_class()(11, 10, 9, 8, pin_factory=factory)
    try:
        device = MCP3008(channel=0, pin_factory=factory)
        try:
            return [spi_samples_per_s(device, samples, plan.loop_seconds)
                    for _ in range(plan.repeats)]
        finally:
            device.close()
    finally:
        chip.close()
        factory.close()
        Device.pin_factory = previous
