"""
The stdin/stdout side of the benchmark's client processes
(:mod:`bench.loadclient`, :mod:`bench.readclient`): they take commands as
JSON lines on stdin and answer with JSON lines on stdout (the benchmark's end
is :class:`bench.harness.JsonLineProcess`).
"""

import json
import os
import select
import sys
import time

#: The longest command line taken (a longer one is an error).
MAX_LINE = 1 << 20


def emit(message):
    """Print *message* as one JSON line, at once."""
    sys.stdout.write(json.dumps(message) + '\n')
    sys.stdout.flush()


class Commands:
    """JSON lines from stdin, one at a time, each within a bounded wait."""

    def __init__(self):
        self._buffer = b''

    def next(self, timeout):
        """The next command (a dict); None once stdin has ended; TimeoutError after *timeout* s."""
        deadline = time.monotonic() + timeout
        fd = sys.stdin.fileno()
        while b'\n' not in self._buffer:
            if len(self._buffer) >= MAX_LINE:
                raise ValueError(f'a command line longer than {MAX_LINE} bytes')
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f'no command within {timeout} s')
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b'\n')
        return json.loads(line)
