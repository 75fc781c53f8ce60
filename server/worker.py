"""
The pin worker: one process per claimed pin, owning one gpiozero pin of the
local backend.

Flow: client → wire → server session → **pin worker** → gpiozero pin.

A worker is started (by :mod:`remoteio_server.spawner`) before any client
asks for it: it builds its backend factory, says ``ready`` and sleeps on its
pipe. A ``claim`` binds it to one GPIO for the rest of its life. From then on
it carries out the operations the session forwards, strictly in the order
they arrive, records every change of the pin in a bounded history, and
acknowledges what it has done. ``release`` switches the pin off, closes it
and ends the process. The worker blocks on its pipe whenever it has nothing
to do: it never polls.

The pipe carries JSON arrays (``send_bytes``), built by the server from
fields it has already validated. Messages to the worker are
``[seq, op, args]``; messages from it are ``["ready", revision]``,
``["done", seq]`` (everything up to *seq* succeeded), ``["ok", seq, result]``
and ``["err", seq, error]``.
"""

import json
import logging
import os
import signal
import time
from collections import deque

from gpiozero.exc import PinPWMFixedValue

from remoteio_factory.protocol import CODE_FOR_EXCEPTION
from remoteio_server.backends import build_factory

# Preloaded by the spawner so that every worker starts with gpiozero imported.
import gpiozero  # noqa: F401
import gpiozero.pins.mock  # noqa: F401

log = logging.getLogger('remoteio_server.worker')

#: Transitions kept per pin.
HISTORY_LENGTH = 1000


def _dumps(message):
    return json.dumps(message, separators=(',', ':')).encode('utf-8')


def describe_error(exc):
    """Map an exception raised by the backend to a protocol error dict."""
    for cls in type(exc).__mro__:
        if cls.__module__ == 'gpiozero.exc' and cls.__name__ in CODE_FOR_EXCEPTION:
            return {'code': CODE_FOR_EXCEPTION[cls.__name__], 'type': cls.__name__,
                    'message': str(exc) or cls.__name__}
    if type(exc).__module__ == 'gpiozero.exc':
        return {'code': 'backend_error', 'type': type(exc).__name__,
                'message': str(exc) or type(exc).__name__}
    return {'code': 'backend_error', 'type': 'PinError',
            'message': f'{type(exc).__name__}: {exc}'}


class PinWorker:
    """Carries out the operations for one pin; see the module docstring."""

    def __init__(self, conn, factory, gpio):
        self.conn = conn
        self.factory = factory
        self.gpio = gpio
        self.pin = factory.pin(gpio)
        self.history = deque(maxlen=HISTORY_LENGTH)
        self.writes = 0
        self._last = {}
        self.released = False
        self._record()
        self.ops = {
            'setup': self.op_setup,
            'write': self.op_write,
            'frequency': self.op_frequency,
            'pull': self.op_pull,
            'read': self.op_read,
            'snapshot': self.op_snapshot,
            'release': self.op_release,
        }

    # State and history -----------------------------------------------------

    def read_state(self):
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

    def _record(self):
        """Append to the history every property that changed since last time."""
        now = time.monotonic()
        current = self.read_state()
        for key in ('function', 'frequency', 'state'):
            value = current[key]
            if isinstance(value, bool):
                value = int(value)
            if self._last.get(key, ()) != value:
                self._last[key] = value
                self.history.append({'t': now, key: value})
        # MockPin keeps every change it has ever seen; a daemon must not grow.
        states = getattr(self.pin, 'states', None)
        if isinstance(states, list) and len(states) > 64:
            del states[:-1]
        return current

    # Operations ------------------------------------------------------------
    # Each takes the validated args dict; a return value other than None is
    # sent back as the result.

    def op_setup(self, args):
        function = args['function']
        if function == 'output' and args.get('state') is not None:
            self.pin.output_with_state(args['state'])
        elif function == 'input' and args.get('pull') is not None:
            self.pin.input_with_pull(args['pull'])
        else:
            self.pin.function = function
        return self._record()

    def op_write(self, args):
        self.pin.state = args['state']
        self.writes += 1
        self._record()

    def op_frequency(self, args):
        if args['frequency'] is not None and self.pin.function != 'output':
            raise PinPWMFixedValue(f'cannot start PWM on pin {self.pin!r}: it is not an output')
        self.pin.frequency = args['frequency']
        return self._record()

    def op_pull(self, args):
        self.pin.pull = args['pull']
        return self._record()

    def op_read(self, args):
        return self.read_state()

    def op_snapshot(self, args):
        result = self.read_state()
        result['writes'] = self.writes
        result['worker_pid'] = os.getpid()
        limit = args.get('history', HISTORY_LENGTH)
        result['history'] = list(self.history)[-limit:] if limit else []
        return result

    def op_release(self, args):
        """
        Soft close: stop PWM and return the pin to an input, as gpiozero does
        when a device is closed (so an active-low device is never driven low
        for an instant), then report and end the worker.
        """
        pin = self.pin
        try:
            if pin.frequency is not None:
                pin.frequency = None
                self._record()
            pin.close()
        finally:
            self._record()
        self.released = True
        return self.op_snapshot({})

    # Loop ----------------------------------------------------------------

    def handle(self, raw):
        seq, op, args = json.loads(raw)
        try:
            result = self.ops[op](args)
        except Exception as exc:
            self.send(['err', seq, describe_error(exc)])
            return None
        if result is not None:
            self.send(['ok', seq, result])
            return None
        return seq

    def send(self, message):
        self.conn.send_bytes(_dumps(message))

    def run(self):
        """Serve the pin until it is released or the server goes away."""
        conn = self.conn
        while not self.released:
            # Sleep until the server sends something (no polling), then take
            # everything that has arrived and acknowledge it at once.
            unacked = self.handle(conn.recv_bytes())
            while not self.released and conn.poll():
                done = self.handle(conn.recv_bytes())
                # A reply acknowledges everything before it.
                unacked = done
            if unacked is not None:
                self.send(['done', unacked])


def main(conn, backend, revision):
    """
    Entry point of a worker process (the spawner's target). Builds the
    backend, waits for its pin, then serves it until released.
    """
    # The server handles SIGINT/SIGTERM and releases pins itself; a worker that
    # died on the terminal's Ctrl+C would leave its pin in an unknown state.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        factory = build_factory(backend, revision)
    except Exception as exc:
        conn.send_bytes(_dumps(['err', 0, describe_error(exc)]))
        return
    conn.send_bytes(_dumps(['ready', os.getpid()]))
    try:
        raw = conn.recv_bytes()
    except EOFError:
        factory.close()
        return
    seq, op, args = json.loads(raw)
    if op != 'claim':
        factory.close()
        return
    try:
        worker = PinWorker(conn, factory, args['gpio'])
    except Exception as exc:
        conn.send_bytes(_dumps(['err', seq, describe_error(exc)]))
        factory.close()
        return
    worker.send(['ok', seq, worker.read_state()])
    try:
        worker.run()
    except (EOFError, OSError):
        # The server went away: leave the pin safe.
        if not worker.released:
            worker.op_release({})
    finally:
        factory.close()
