"""
The pin worker: one process per claimed pin, owning one gpiozero pin of the
local backend, with its own task queue.

Flow: client → wire → server session → **pin worker** → gpiozero pin.

A worker is started (by :mod:`remoteio_server.spawner`) before any client
asks for it: it builds its backend factory, says ``ready`` and sleeps on its
pipe. A ``claim`` binds it to one GPIO for the rest of its life.

From then on it keeps a queue of *jobs*: plain operations (``write``,
``setup``, ``frequency``, ``pull``) and timed tasks (:mod:`.tasks`). In
``wait`` mode jobs run strictly one after another, a finite task to its end;
an endless task ends when the next job arrives. In ``nowait`` mode a new job
pre-empts the running task and supersedes whatever is queued (each
superseded task is reported to its sender). Reads and snapshots are answered
at once. ``release`` is a soft close: what was accepted is carried out
(wait: the whole queue; nowait: the running task), endless tasks are
stopped, then the pin's PWM is stopped, it is returned to an input (as
gpiozero closes a pin) and the worker ends.

The worker sleeps whenever it has nothing to do: on its pipe when idle, or
until the next deadline of the running task (absolute deadlines on the
monotonic clock, so a long blink never drifts). It never polls.

The messages on its pipe are those of :mod:`.messages`. Timed tasks are
answered when accepted; reads, snapshots, ``sync`` and ``halt`` (the server is
stopping: end the running task, drop the queue) at once; ``setup``,
``frequency``, ``pull`` and ``release`` when they have run; a write only if
it fails, or when it has run if asked to (``reply``). ``sync`` therefore tells the
server that every write sent before it has been taken.

After each request it takes, and after each change of the pin (a task's
level, an input's edge), the worker publishes the pin's record in shared
memory (:mod:`.records`): the server answers most reads from it.
"""

import gc
import json
import logging
import os
import select
import shutil
import signal
import threading
import time
from collections import deque

from gpiozero.exc import PinPWMFixedValue, PinPWMUnsupported, PinSetInput

from remoteio_server import messages, records
from remoteio_server.backends import BUILD_AT_CLAIM, CAPABILITIES, build_factory
from remoteio_server.messages import (
    Change, Electrical, End, Err, Event, Ok, Op, Ready, decode_request, describe_error, encode,
    ok_then_history, pin_error)
from remoteio_server.signals import Signal
from remoteio_factory.tasks import Task

# Preloaded by the spawner so that every worker starts with gpiozero imported.
import gpiozero  # noqa: F401
import gpiozero.pins.mock  # noqa: F401
import remoteio_server.virtualpin  # noqa: F401

log = logging.getLogger('remoteio_server.worker')

#: Transitions kept per pin.
HISTORY_LENGTH = 1000
#: Jobs that may wait in one pin's queue; more are refused (``limit``).
MAX_QUEUE = 10000
#: PWM frequency a task starts when it needs PWM on a pin that has none (gpiozero's default).
DEFAULT_PWM_FREQUENCY = 100.0

#: Jobs answered with a result when they have run (the others are acknowledged
#: when accepted, with ``done``).
RESULT_OPS = frozenset({'setup', 'frequency', 'pull', 'edges', 'subscribe', 'release'})
#: Backends whose pins do no debouncing of their own: the worker does it.
SOFTWARE_BOUNCE = frozenset({'mock'})
#: Backends whose debouncing reports the level a bouncing input settles at.
SETTLED_BOUNCE = frozenset({'mock', 'lgpio', 'pigpio'})
#: Jobs that configure the pin without setting its level: they run at once, in
#: both modes, and neither wait for the running task nor end it.
CONFIG_OPS = frozenset({'frequency', 'pull', 'edges', 'subscribe'})
EDGE_LEVELS = {'both': (0, 1), 'rising': (1,), 'falling': (0,), 'none': ()}
#: Edges of a wired input's signal a worker that woke late plays at once, each with its own
#: stamp (64: 160 ms late at the 200 Hz limit); later than that it jumps to the level now.
WAVE_CATCH_UP = 64


def pack(message):
    """Encode *message* (JSON) for the pipe (history entries are kept encoded this way)."""
    return json.dumps(message, separators=(',', ':')).encode('utf-8')


def _task_fields(args):
    """A task request's fields for :class:`Task` (without the worker's own)."""
    return {key: value for key, value in args.items() if key != 'reply'}


class Job:
    """One queued operation: *task* is a :class:`Task` for timed ones."""

    __slots__ = ('seq', 'op', 'args', 'task', 'started', 'request_id')

    def __init__(self, seq, op, args, request_id=None, task=None):
        self.seq, self.op, self.args, self.task = seq, op, args, task
        self.request_id = request_id
        self.started = None


class PinWorker:
    """Carries out the jobs for one pin; see the module docstring."""

    def __init__(self, conn, factory, gpio, backend, mode, circuit=False, record=None):
        self.conn = conn
        self.record = record              # this pin's shared record (records.RecordWriter)
        self.taken = 0                    # seq of the last request taken
        self.failed = 0                   # seq of the last failure reported
        self._current = None              # the state last recorded
        self._deferred = False            # inside handle(): publish once, at its end
        self._handling = None             # ... the seq of the request it handles
        self.watching = False             # edge callbacks on both edges keep the record fresh
        self.factory = factory
        self.gpio = gpio
        self.mode = mode
        self.backend = backend
        self.pwm_capable = CAPABILITIES[backend]['pwm']
        # Edge events arrive on the backend's own thread: one lock for what
        # both threads touch (the history and the pipe).
        self._lock = threading.RLock()
        # On a net of the virtual Pi (mock): report what the pin does to the net, and
        # take the net's signal (:mod:`.circuit`, :mod:`.signals`).
        self.circuit = circuit
        self.signal = None                   # the net's Signal (None: none received)
        self.signal_version = 0
        self.signal_due = None               # monotonic time of its next change to apply
        self._signal_after = 0.0             # its changes up to here are applied
        self._electrical = None              # what was last reported to the circuit
        self.observed = False                # the server has observers: report each change
        self.bounce = None
        self.mock_level = None               # last level driven from the network (mock)
        self.events = 0
        self._last_event = None        # server time of the last edge reported
        self._last_level = None        # and its level
        self._bounce_timer = None
        self._soft_bounce = backend in SOFTWARE_BOUNCE
        self.pin = factory.pin(gpio)
        self.history = deque(maxlen=HISTORY_LENGTH)
        self.writes = 0
        self.queue = deque()
        self.running = None          # the Job of the timed task under way
        self.deadline = None         # monotonic time of its next change
        self.closing = False
        self.halted = False            # the server is stopping: no new work
        self.released = False
        self.closed_state = None       # what the pin was left as, once released
        self._level = None
        self._last = {}
        self._record()
        self.runners = {
            'write': self.run_write,
            'setup': self.run_setup,
            'frequency': self.run_frequency,
            'pull': self.run_pull,
            'edges': self.run_edges,
            'subscribe': self.run_subscribe,
            'release': self.run_release,
        }

    # State and history -----------------------------------------------------

    def read_state(self):
        if self.closed_state is not None:
            return dict(self.closed_state)
        pin = self.pin
        function = pin.function
        frequency = pin.frequency
        state = pin.state
        return {
            'function': function,
            # digital: a bool, as gpiozero's backends return it; PWM: the duty cycle
            'state': bool(state) if frequency is None else float(state),
            'frequency': frequency,
            'pull': pin.pull if function == 'input' else None,
        }

    def _record(self, now=None):
        """Append to the history every property that changed since last time."""
        with self._lock:
            if now is None:
                now = time.monotonic()
            return self._record_state(now, self.read_state())

    def _record_state(self, now, current):
        with self._lock:
            changed = False
            entries = None
            for key in ('function', 'frequency', 'state', 'pull'):
                value = current[key]
                if isinstance(value, bool):
                    value = int(value)
                if self._last.get(key, ()) != value:
                    self._last[key] = value
                    if key == 'pull':          # (not in the history: for observers only)
                        if self.observed:
                            entries = (entries or []) + [{'t': now, key: value}]
                        continue
                    # kept encoded: a status asking for 1000 entries then costs a join,
                    # not an encoding that would hold up this pin's timing
                    self.history.append(pack({'t': now, key: value}).decode())
                    changed = changed or key != 'frequency'
                    if self.observed:
                        entries = (entries or []) + [{'t': now, key: value}]
            if entries:
                self.send(Change(entries))
            self._current = current
            if not self._deferred:
                self.publish()
            if self.circuit:
                self._report_electrical(now, current)
        # MockPin keeps every change it has ever seen; a daemon must not grow.
        states = getattr(self.pin, 'states', None)
        if isinstance(states, list) and len(states) > 64:
            del states[:-1]
        return current

    def _report_electrical(self, now, current):
        """Tell the circuit what the pin now does to its net, if that changed."""
        function = current['function']
        if function == 'output':
            state = current['state']
            electrical = (function, float(state) if current['frequency'] else int(bool(state)),
                          current['frequency'], None)
            if self.signal is not None:       # an output takes no signal (see _apply_signal)
                self.signal = self.pin.signal = None
                self.signal_due = None
        else:
            electrical = (function, 0, None, current['pull'])
        if electrical != self._electrical:
            self._electrical = electrical
            self.send(Electrical(*electrical, now))

    # The net's signal (virtual Pi) ---------------------------------------------------

    def take_signal(self, args):
        """The circuit says what the pin's net carries now (an older version is ignored)."""
        version = args['version']
        if version <= self.signal_version:
            return
        self.signal_version = version
        self.signal = Signal.from_dict(args['signal'])
        self._apply_signal(time.monotonic(), replay=True)

    def _apply_signal(self, now, replay=False):
        """
        Set the input to the level its signal has at *now*, and plan its next
        change; *replay* (a new signal): first play its steps already past.
        """
        pin, signal = self.pin, self.signal
        if signal is None or pin.function != 'input':
            self.signal_due = None
            return
        pin.signal = signal
        if replay and signal.steps and signal.level is not None:
            # Steps that are already past when the signal arrives still happened (an
            # echo pulse shorter than the trip here): each is played, with its stamp.
            pin.drive_at(signal.level, signal.t)
            for t, level in signal.changes(signal.t, now):
                pin.drive_at(level, t)
        level = signal.at(now)
        if level is not None and level != int(bool(pin._state)):
            pin.drive_at(level, signal.began(now))
        self._signal_after = now
        self._record(now)
        self._plan_signal(now)

    def _plan_signal(self, now):
        pin, signal = self.pin, self.signal
        if signal is None or pin.function != 'input':
            self.signal_due = None
        else:
            # a wave's edges only for a client that listens (reads sample the wave anyway)
            self.signal_due = signal.next_change(now, edges=pin.when_changed is not None)

    def _signal_changes(self, now):
        """Apply the changes of the signal that are due, each stamped with its own time."""
        pin, signal = self.pin, self.signal
        if signal is None or pin.function != 'input':
            self.signal_due = None
            return
        for t, level in signal.changes(self._signal_after, now, limit=WAVE_CATCH_UP):
            pin.drive_at(level, t)
        level = signal.at(now)                   # (late by more than that: catch up)
        if level is not None and level != int(bool(pin._state)):
            pin.drive_at(level, signal.began(now))
        self._signal_after = now
        self._record(now)
        self._plan_signal(now)

    def snapshot(self, history=HISTORY_LENGTH):
        result = self.read_state()
        result['writes'] = self.writes
        result['events'] = self.events
        result['edges'] = self.pin.edges if self.closed_state is None and \
            result['function'] == 'input' else None
        result['bounce'] = self.bounce
        result['worker_pid'] = os.getpid()
        result['closing'] = self.closing
        result['mode'] = self.mode
        running = self.running
        if running is not None:
            elapsed = time.monotonic() - running.started
            remaining = None if running.task.endless else max(0.0, running.task.end - elapsed)
            result['task'] = {'id': running.request_id, 'kind': running.task.kind,
                              'description': running.task.describe(),
                              'elapsed': elapsed, 'remaining': remaining}
        else:
            result['task'] = None
        result['queued'] = [job.task.describe() if job.task else job.op for job in self.queue]
        result['history'] = [json.loads(e) for e in self._history_tail(history)]
        return result

    def _history_tail(self, count):
        if not count:
            return []
        items = list(self.history)
        return items[-count:]

    def send_snapshot(self, seq, count):
        """Answer a snapshot, splicing in the history as it was stored (encoded)."""
        result = self.snapshot(0)
        del result['history']
        with self._lock:
            self.taken = seq
            self.publish()                 # (the record first, as for every answer: see send)
            self.send_raw(ok_then_history(seq, result, self._history_tail(count)))

    # Plain operations --------------------------------------------------------
    # Each takes the validated args dict; a result op returns its result.

    def run_write(self, args):
        self.pin.state = args['state']
        self.writes += 1
        self._record()

    def run_setup(self, args):
        function = args['function']
        pin = self.pin
        if function == 'output' and args.get('state') is not None:
            pin.output_with_state(args['state'])
        elif function == 'input' and args.get('pull') is not None:
            self._driven(lambda: pin.input_with_pull(args['pull']))
        else:
            self._driven(lambda: setattr(pin, 'function', function))
        self.watching = False     # some backends stop reporting edges here (subscribe again)
        return self._record()

    def run_frequency(self, args):
        if args['frequency'] is not None and self.pin.function != 'output':
            raise PinPWMFixedValue(f'cannot start PWM on pin {self.pin!r}: it is not an output')
        self.pin.frequency = args['frequency']
        return self._record()

    def run_pull(self, args):
        pin = self.pin
        self._driven(lambda: setattr(pin, 'pull', args['pull']))
        self.watching = False     # lgpio re-claims the line, and drops its alert
        return self._record()

    def run_edges(self, args):
        pin = self.pin
        pin.edges = args['edges']
        pin.bounce = args['bounce']
        self.bounce = args['bounce']
        self._watch()
        return self._record()

    def run_subscribe(self, args):
        if self.signal is not None and self.pin.function == 'input':
            # A wave's edges were not played while nobody listened: the pin takes the
            # wave's level now (no event), and its edges from now on.
            now = time.monotonic()
            level = self.signal.at(now)
            handler, self.pin.when_changed = self.pin.when_changed, None
            try:
                if level is not None:
                    self.pin.drive_at(level, self.signal.began(now))
            finally:
                self.pin.when_changed = handler
            self._signal_after = now
        with self._lock:
            self._last_level = int(bool(self.pin.state))
            self._last_event = None
        self.pin.when_changed = self._on_change if args['events'] else None
        self._watch()
        if self.signal is not None:
            self._plan_signal(time.monotonic())      # (a wave's edges only for a listener)
        return self._record()

    def _watch(self):
        """Does the backend report every change of the pin to us (the record stays fresh)?"""
        self.watching = self.pin.edges == 'both' and self.pin.when_changed is not None

    def _on_change(self, ticks, state):
        """The backend saw an edge (on its own thread, or on ours for mock)."""
        factory = self.factory
        # the edge's time on the server's monotonic clock, whatever the backend's ticks are
        now = time.monotonic()
        # (mock: the ticks are the monotonic time of the change, perhaps stamped on the
        # wire before now, see virtualpin)
        t = ticks if self.backend == 'mock' else now - factory.ticks_diff(factory.ticks(), ticks)
        with self._lock:
            self._record(now)
            self.publish()         # before the event: a read after it must show the edge
            if self._soft_bounce and self.bounce and self._last_event is not None \
                    and t - self._last_event < self.bounce:
                # Chatter inside the bounce time: ignored, but once the time is
                # up the level that has settled is reported if it differs (as
                # kernel debouncing does), so the client never misses the end.
                if self._bounce_timer is None:
                    self._bounce_timer = threading.Timer(
                        max(0.0, self._last_event + self.bounce - now), self._bounce_settled)
                    self._bounce_timer.daemon = True
                    self._bounce_timer.start()
                return
            self._emit(t, int(bool(state)))

    def _bounce_settled(self):
        with self._lock:
            self._bounce_timer = None
            if self.released or self.pin.when_changed is None:
                return
            level = int(bool(self.pin.state))
            if level != self._last_level:
                if level in EDGE_LEVELS.get(self.pin.edges, (0, 1)):
                    self._emit(time.monotonic(), level)
                else:
                    self._last_level = level     # an edge the client did not ask for

    def _emit(self, t, level):
        self._last_event = t
        self._last_level = level
        self.events += 1
        self.send(Event(t, level, self.events))

    def drive(self, level):
        """Set the level of a mock input (``remoteio drive``); None lets go of it."""
        if self.backend != 'mock':
            raise PinSetInput('only the mock backend can drive a pin from the network')
        if level is None:               # let go: the pull decides again
            self.mock_level = None
            if self.pin.function == 'input':
                self.pin.pull = self.pin.pull
                self._record()
            return
        if self.pin.function != 'input':
            raise PinSetInput(f'cannot drive {self.pin!r}: it is not an input')
        self.mock_level = level
        if level:
            self.pin.drive_high()
        else:
            self.pin.drive_low()
        self._record()

    def _driven(self, change):
        """
        Make *change* (a pull or function change) on a mock input that is
        driven from the network: the driver wins over the pull, and the pull
        flipping the level for an instant is no edge.
        """
        pin = self.pin
        signal = self.signal
        if self.backend != 'mock' or (self.mock_level is None and (
                signal is None or signal.floating)):
            change()
            if signal is not None:
                self._apply_signal(time.monotonic())   # (it became an input: plan its changes)
            return
        handler = pin.when_changed
        pin.when_changed = None
        try:
            change()
            if pin.function == 'input':
                if signal is not None:
                    now = time.monotonic()
                    pin.drive_at(signal.at(now), signal.began(now))
                else:
                    self.drive(self.mock_level)
        finally:
            pin.when_changed = handler
        if signal is not None:
            self._apply_signal(time.monotonic())

    def run_release(self, args):
        """Stop PWM and return the pin to an input, as gpiozero closes a pin."""
        pin = self.pin
        try:
            pin.when_changed = None
            if self.bounce:
                # gpiozero's close leaves it set, and some backends keep it beyond
                # the pin's life (pigpiod's glitch filter): the next client would inherit it
                pin.bounce = None
                self.bounce = None
            if pin.frequency is not None:
                pin.frequency = None
                self._record()
            pin.close()
        finally:
            self._record_closed()
            with self._lock:
                self.watching = False
                if self.record is not None:
                    self.record.withdraw()
        self.released = True
        return self.snapshot()

    def _record_closed(self):
        """
        Record what the pin was left as. Some backends give the line back when
        a pin closes (RPi.GPIO's ``cleanup``), after which it cannot be read:
        then it is an input of unknown level (``state`` null).
        """
        try:
            state = self.read_state()
        except Exception:
            state = {'function': 'input', 'state': None, 'frequency': None, 'pull': None}
        self._record_state(time.monotonic(), state)
        self.closed_state = state

    # Timed tasks ---------------------------------------------------------------

    def _set_level(self, level):
        if level == self._level:
            return
        pin = self.pin
        if pin.frequency is not None:
            pin.state = level
        else:
            pin.state = 1 if level >= 0.5 else 0
        self._level = level
        self._record()

    def _start_task(self, job, now):
        task = job.task
        if self.pin.function != 'output':
            raise PinSetInput(f'cannot run {task.kind} on pin {self.pin!r}: it is not an output')
        if task.uses_pwm and self.pin.frequency is None:
            if not self.pwm_capable:
                raise PinPWMUnsupported(f'{task.kind} needs PWM, which this backend lacks')
            self.pin.frequency = DEFAULT_PWM_FREQUENCY
        job.started = now
        self._level = None
        # A task's first level is set as it starts, even if it ends at once (an off()
        # of no duration between two tasks is a real, if brief, low).
        self._set_level(task.at(0.0)[0])
        self.running = job
        if self.observed:
            self.send(Change([{'t': now, 'task': {'id': job.request_id, 'kind': task.kind,
                                                  'description': task.describe()}}]))

    def _end_task(self, result, error=None, switch_off=False):
        job, self.running, self.deadline = self.running, None, None
        ended = time.monotonic()
        if switch_off:
            # (the pin first: telling observers takes a send, which must not delay the edge)
            try:
                self._set_level(job.task.pin_level(0.0))
            except Exception as exc:  # report, but the task has ended either way
                error = error or describe_error(exc)
        if self.observed:
            self.send(Change([{'t': ended, 'task': None, 'result': result}]))
        self._level = None
        self.send(End(job.seq, result, error))

    def _end_job(self, job, result, error=None):
        """A queued job that will never run."""
        if job.task is not None:
            self.send(End(job.seq, result, error))
        else:
            self.send(Err(job.seq, error or pin_error(
                'superseded', f'superseded by a later request ({self.mode} mode)'),
                job.request_id))

    # The queue -----------------------------------------------------------------

    def submit(self, job):
        if self.halted and job.op != 'release':
            # a request that was on its way when the server began to stop
            self._end_job(job, 'stopped', {'code': 'shutting_down', 'type': 'RemoteIOPinError',
                                           'message': 'the server is shutting down'})
            return
        if job.op in CONFIG_OPS and not self.closing:
            self._run_plain(job)
            return
        if self.closing:
            self._end_job(job, 'failed', {'code': 'pin_closed', 'type': 'RemoteIOPinError',
                                          'message': f'GPIO{self.gpio} is closing'})
            return
        if job.op == 'release':
            self.closing = True
            if self.mode == 'nowait':
                self._supersede_queue()
        elif self.mode == 'nowait':
            self._supersede_queue()
            if self.running is not None:
                self._end_task('superseded')
        self.queue.append(job)
        self.advance(time.monotonic())

    def halt(self):
        """
        The server is stopping: end the running task now and drop what is
        queued (each reported ``stopped``), so the pin is switched off at once
        rather than after its work; a release already queued still runs.
        """
        kept = deque()
        while self.queue:
            job = self.queue.popleft()
            if job.op == 'release':
                kept.append(job)
            else:
                self._end_job(job, 'stopped', {'code': 'pin_closed', 'type': 'RemoteIOPinError',
                                               'message': 'the server is shutting down'})
        self.queue = kept
        self.halted = True
        if self.running is not None:
            self._end_task('stopped', switch_off=True)
        self.advance(time.monotonic())

    def _supersede_queue(self):
        while self.queue:
            self._end_job(self.queue.popleft(), 'superseded')

    def advance(self, now):
        """Carry out everything that is due at *now*; set the next deadline."""
        while not self.released:
            running = self.running
            if running is not None:
                task = running.task
                elapsed = now - running.started
                if task.done(elapsed):
                    # "then off", unless another timed task follows at once and
                    # sets its own level (no glitch between back-to-back tasks)
                    follows = bool(self.queue) and self.queue[0].task is not None
                    self._end_task('completed', switch_off=not follows)
                    continue
                if task.endless and (self.queue or self.closing):
                    self._end_task('stopped' if self.closing else 'replaced')
                    continue
                try:
                    level, change = task.at(elapsed)
                    self._set_level(level)
                except Exception as exc:
                    self._end_task('failed', describe_error(exc))
                    continue
                self.deadline = None if change is None else running.started + change
                return
            if not self.queue:
                self.deadline = None
                return
            job = self.queue.popleft()
            if job.task is not None:
                if self.closing and job.task.endless:
                    self._end_job(job, 'stopped')
                    continue
                try:
                    self._start_task(job, now)
                except Exception as exc:
                    self._end_job(job, 'failed', describe_error(exc))
                continue
            self._run_plain(job)

    def _run_plain(self, job):
        try:
            result = self.runners[job.op](job.args)
        except Exception as exc:
            # Some of gpiozero's changes fail half-way (input_with_pull sets the
            # function, then the pull is refused): the record shows what the pin is now.
            try:
                self._record()
            except Exception:
                log.debug('GPIO%d: cannot read the pin after a failure', self.gpio, exc_info=True)
            self.send(Err(job.seq, describe_error(exc), job.request_id))
            return
        if job.op in RESULT_OPS or job.args.get('reply'):
            self.send(Ok(job.seq, result or {}))

    # Messages ------------------------------------------------------------------

    def handle(self, raw):
        """Take one message from the server; then publish the record (it has taken *seq*)."""
        seq, op, args, request_id = decode_request(raw)
        self._deferred = True              # one record for the whole message, at its end
        self._handling = seq               # (or before its answer: see send)
        try:
            self._handle(seq, op, args, request_id)
        finally:
            with self._lock:
                self._deferred = False
                self.taken = seq
                self.publish()

    def _handle(self, seq, op, args, request_id):
        if op == Op.READ:
            self.send(Ok(seq, self.read_state()))
        elif op == Op.SNAPSHOT:
            self.send_snapshot(seq, args.get('history', HISTORY_LENGTH))
        elif op == Op.SYNC:
            self.send(Ok(seq, {}))
        elif op == Op.HALT:
            self.halt()
            self.send(Ok(seq, {}))
        elif op == Op.OBSERVE:
            self.observed = bool(args.get('on'))
            self.send(Ok(seq, {}))
        elif op == Op.SIGNAL:
            self.take_signal(args)
            self.send(Ok(seq, {}))
        elif op == Op.DRIVE:
            try:
                self.drive(args['state'])
            except Exception as exc:
                self.send(Err(seq, describe_error(exc), request_id))
            else:
                self.send(Ok(seq, {}))
        elif len(self.queue) >= MAX_QUEUE and op != Op.RELEASE:
            error = pin_error('limit', f'GPIO{self.gpio} has {MAX_QUEUE} requests waiting '
                                       f'already', 'RemoteIOError')
            if op == Op.TASK:
                self.send(End(seq, 'failed', error))     # (its sender has been told it was accepted)
            else:
                self.send(Err(seq, error, request_id))
        elif op == Op.TASK:
            job = Job(seq, op, args, request_id, Task(**_task_fields(args)))
            self.submit(job)
            if args.get('reply', True):
                self.send(Ok(seq, {}))   # accepted; its end is reported with End
        else:
            self.submit(Job(seq, op, args, request_id))

    # The record --------------------------------------------------------------------

    def live(self):
        """True while the record follows the pin by itself (see :mod:`.records`)."""
        if self.closed_state is not None:
            return False
        function = self._current['function'] if self._current else None
        if function == 'output' or (self.backend == 'mock' and function == 'input'):
            return True
        # An input whose every change the backend reports to us; with debouncing, only
        # a backend that reports the level a bouncing pin settles at (the others drop
        # the edges of the bounce time, and with them, maybe, the last one).
        return function == 'input' and self.watching and (
            not self.bounce or self.backend in SETTLED_BOUNCE)

    def publish(self):
        """Rewrite the shared record from the last recorded state (under the lock)."""
        if self.record is not None and self._current is not None and not self.released:
            self.record.publish(self.taken, self._current, self.live(), self.failed)

    def send(self, message):
        with self._lock:
            kind = type(message)
            if kind is Err:
                # In the record before the report leaves: a read that finds the record
                # then goes to us, behind this report (docs/protocol.md §6). (Published
                # after the send, a read could be answered from the record in between,
                # with the report still in the pipe.)
                self.failed = max(self.failed, message.seq)
            if self._deferred and kind in (Ok, Err) and message.seq == self._handling:
                # The answer to the request being handled: its effects are done, and
                # whoever gets the answer may read the record next (with the worker
                # perhaps frozen right after sending): the record goes first.
                self.taken = message.seq
                self.publish()
            elif kind is Err:
                self.publish()
            self.send_raw(encode(message))

    def send_raw(self, data):
        with self._lock:
            self.conn.send_bytes(data)

    def run(self):
        """Serve the pin until it is released or the server goes away."""
        fd = self.conn.fileno()
        frames = messages.FrameReader(fd)
        while not self.released:
            if not frames.ready:
                # Sleep until a message arrives or the running task's next deadline
                # (select takes a timeout in microseconds; epoll would round to ms),
                # then take all that has arrived in one read.
                due = self.deadline
                if self.signal_due is not None and (due is None or self.signal_due < due):
                    due = self.signal_due
                timeout = None if due is None else max(0.0, due - time.monotonic())
                if select.select([fd], [], [], timeout)[0]:
                    frames.fill()
            while not self.released:
                # a flood of messages (drives, reads, status) must not hold up a deadline:
                # what is due is done before the next message is taken
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    self.advance(time.monotonic())
                if self.signal_due is not None and time.monotonic() >= self.signal_due:
                    self._signal_changes(time.monotonic())
                raw = frames.next()
                if raw is None:
                    break
                self.handle(raw)
            self.advance(time.monotonic())
            if self.signal_due is not None and time.monotonic() >= self.signal_due:
                self._signal_changes(time.monotonic())


class Terminated(BaseException):
    """SIGTERM: the server wants this worker gone now (see :func:`main`)."""


def _terminate(signum, frame):
    raise Terminated


def main(conn, backend, revision, auto=False):
    """
    Entry point of a worker process (the spawner's target). Builds the
    backend, waits for its pin, then serves it until released.

    SIGTERM (the server cutting the worker short: shutdown, or a worker that
    stopped reading) ends it at once, but not before its pin is switched off
    and returned to an input, as when the server goes away.
    """
    signal.signal(signal.SIGTERM, _terminate)
    _raise_priority()
    workdir = own_workdir()
    try:
        _main(conn, backend, revision, auto)
    except Terminated:
        pass
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


#: A worker's own directory inside LG_WD: ``worker-PID``.
_WORKDIR = 'worker-'


def own_workdir():
    """
    Give this worker a working directory of its own for lgpio, inside ``LG_WD``.

    lgpio makes its notification FIFOs in ``LG_WD`` (it changes into it as it is
    imported) and names them by handle numbers that count from 0 in every
    process (``.lgd-nfy0``, ...): workers sharing one directory take each
    other's FIFOs, and one left by a worker that was killed makes the next
    worker's ``notify_open`` fail ("could not build its backend"). The
    directories of workers that have ended are swept here too.
    """
    base = os.environ.get('LG_WD')
    if not base or not os.path.isdir(base):
        return None
    try:
        for name in os.listdir(base)[:1000]:
            if name.startswith(_WORKDIR) and name[len(_WORKDIR):].isdigit() and \
                    not os.path.exists(f'/proc/{name[len(_WORKDIR):]}'):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        own = os.path.join(base, f'{_WORKDIR}{os.getpid()}')
        shutil.rmtree(own, ignore_errors=True)      # an ended worker's, whose pid this is now
        os.mkdir(own, 0o700)
    except OSError:
        return None
    os.environ['LG_WD'] = own
    return own


#: The scheduling priority (nice value) a pin worker asks for: its deadlines
#: should win over the server's own network work and over other programs.
WORKER_NICE = -10


def _raise_priority():
    """
    Ask for :data:`WORKER_NICE`. It takes root or CAP_SYS_NICE (the systemd
    unit grants it); without, the worker runs at the normal priority, and on a
    busy machine a deadline may then be met a few milliseconds late.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, WORKER_NICE)
    except (AttributeError, OSError):
        pass


def _main(conn, backend, revision, auto):
    # Everything inherited from the forkserver (gpiozero, the interpreter's own
    # objects) stays shared with it: keep the garbage collector from walking it,
    # which would copy every page it touches into this process.
    gc.freeze()
    # The server handles SIGINT/SIGTERM and releases pins itself; a worker that
    # died on the terminal's Ctrl+C would leave its pin in an unknown state.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    factory = None
    if backend not in BUILD_AT_CLAIM:
        try:
            factory = build_factory(backend, revision, auto)
        except Exception as exc:
            conn.send_bytes(encode(Err(0, describe_error(exc))))
            return
    conn.send_bytes(encode(Ready(os.getpid())))
    try:
        raw = conn.recv_bytes()
    except (EOFError, OSError):      # the server went away (at shutdown: reset) before a claim
        raw = None
    seq, op, args, _ = decode_request(raw) if raw is not None else (0, None, {}, None)
    if op == Op.SPI_CLAIM:              # an SPI bus, not a pin (remoteio_server.spi)
        from remoteio_server.spi import serve_bus
        try:
            if factory is None:
                factory = build_factory(backend, revision, auto)
            serve_bus(conn, factory, backend, seq, args)
        except Exception as exc:
            conn.send_bytes(encode(Err(seq, describe_error(exc))))
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if factory is not None:
                factory.close()
        return
    if op != Op.CLAIM:
        if factory is not None:
            factory.close()
        return
    try:
        if factory is None:
            factory = build_factory(backend, revision, auto)
        if backend == 'pigpio':
            _keep_monitored(factory, args['gpio'])     # before the pin's mode or pull changes
        table = records.inherited()
        worker = PinWorker(conn, factory, args['gpio'], backend, args.get('mode', 'wait'),
                           args.get('circuit', False),
                           table.writer(args['gpio']) if table is not None else None)
        if args.get('level') is not None:      # a mock input's level, set before the claim
            worker.drive(args['level'])
        worker.observed = bool(args.get('observed'))
        if args.get('signal') is not None:     # what its net carries (virtual Pi)
            worker.take_signal(args['signal'])
        if worker.circuit:                     # and what it does to the net
            worker._report_electrical(time.monotonic(), worker.read_state())
    except Exception as exc:
        conn.send_bytes(encode(Err(seq, describe_error(exc))))
        if factory is not None:
            factory.close()
        return
    with worker._lock:
        worker.taken = seq
        worker.publish()
    worker.send(Ok(seq, worker.read_state()))
    try:
        worker.run()
    except (EOFError, OSError, Terminated):
        # The server went away, or cut us short: leave the pin safe, with no one
        # to report to (a second SIGTERM must not interrupt that).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not worker.released:
            worker.send = worker.send_raw = lambda message: None
            worker.running = None
            worker.queue.clear()
            worker.run_release({})
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        factory.close()


def _keep_monitored(factory, gpio):
    """
    Have the pigpio daemon report every level change of *gpio* from the claim on.

    The pigpio library takes the levels of all GPIOs once, when its connection
    opens, and afterwards learns a level only from the daemon's reports, which
    come only for GPIOs a callback watches. A level change while nothing
    watched (a pull set before ``when_changed``) would leave it with a stale
    level, and the first real edge would then look like no change and be
    lost. A callback of our own keeps the GPIO watched for the pin's life.
    """
    import pigpio
    factory.connection.callback(gpio, pigpio.EITHER_EDGE)
