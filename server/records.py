"""
Each claimed pin's current record, in memory shared by the server and the pin workers.

Flow: pin worker → **record** → pin table (answers a read without asking the worker).

The server creates one small table (one 64-byte slot per GPIO number) in an
anonymous shared memory file before it starts the zygote; every worker
inherits it. A pin's worker is the only writer of its GPIO's slot while it
serves the pin; the server's main process only reads. A slot holds:

``pid``
    the writer (a record of an earlier worker of the same GPIO is never taken
    for the current one);
``taken``
    the ``seq`` of the last request the worker has taken from its pipe and
    carried out as far as it goes at once (a write is applied, a task queued
    or started);
``failed``
    the ``seq`` of the last request whose failure the worker has reported (a
    read must not overtake that report on its way to the client);
``function``, ``state``, ``frequency``, ``pull``
    the pin as ``read`` would return it at that moment: level (0/1) or duty
    cycle, PWM frequency or none, pull of an input;
``live``
    the record follows the pin by itself: true for an output (only its worker
    changes it), for any pin of the mock backend (its inputs change only
    through the worker), and for an input whose worker has edge detection on
    both edges (it rewrites the record on every edge). False otherwise: then a
    read goes to the worker, which asks the backend.

The rule the pin table applies (docs/protocol.md, *Reads*): a read is answered
from the record when the record is the current worker's, live, and has taken
every request the server has sent that worker; otherwise the worker answers.

Consistency. A writer bumps a version to odd, writes the fields, a CRC-32 of
them and the next (even) version at the slot's end, then the even version at
its start. A reader copies the slot in one go and accepts it only if both
versions are equal and even and the CRC matches; it retries a few times and
otherwise falls back to asking the worker, so a torn or half-visible record
(CPUs with weak memory ordering, as the Pi's) can make a read slower, never wrong.
"""

import mmap
import os
import struct
import tempfile
import zlib
from typing import NamedTuple, Optional

#: Slots in the table: GPIO numbers 0..SLOTS-1 have a record.
SLOTS = 128
SLOT_SIZE = 64
#: head version, then the body, its CRC, and the tail version
_HEAD = struct.Struct('<Q')
_BODY = struct.Struct('<QQddIBBB1x')           # taken, failed, state, frequency, pid, function, pull, live
_TAIL = struct.Struct('<I4xQ')                 # crc, version
_SLOT = struct.Struct('<Q' + _BODY.format[1:] + _TAIL.format[1:])
_BODY_AT = _HEAD.size
_TAIL_AT = _HEAD.size + _BODY.size
#: Tries to get a consistent copy before giving up (the worker answers instead).
READ_TRIES = 3

FUNCTIONS = ('input', 'output', 'alt0', 'alt1', 'alt2', 'alt3', 'alt4', 'alt5', 'i2c', 'spi',
             'uart', 'pwm', 'gpclk', 'pcm', 'unknown')
_FUNCTION_CODE = {name: code for code, name in enumerate(FUNCTIONS)}
_NO_FUNCTION = 255
PULLS = (None, 'up', 'down', 'floating')
_PULL_CODE = {name: code for code, name in enumerate(PULLS)}
_NAN = float('nan')
_EMPTY_CRC = zlib.crc32(bytes(_BODY.size))


class Record(NamedTuple):
    pid: int
    taken: int
    failed: int              # seq of the last request whose failure the worker has sent
    function: Optional[str]
    state: object            # bool, or the duty cycle (float) while PWM runs
    frequency: Optional[float]
    pull: Optional[str]
    live: bool

    def as_read(self):
        """The reply fields of a ``read``, as a worker gives them."""
        return {'function': self.function, 'state': self.state, 'frequency': self.frequency,
                'pull': self.pull}


class RecordTable:
    """The shared table; see the module docstring. Create it in the server, before the zygote."""

    def __init__(self, fd=None):
        if fd is None:
            fd = _anonymous_file(SLOTS * SLOT_SIZE)
        self.fd = fd
        self._map = mmap.mmap(fd, SLOTS * SLOT_SIZE)

    @classmethod
    def inherited(cls, fd):
        """The table in a worker, from the file descriptor the zygote passed on."""
        return cls(fd)

    def close_file(self):
        """Close the file (every process that needs it has it); the mapping stays."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self):
        self.close_file()
        self._map.close()

    # The writer (a worker) ---------------------------------------------------------

    def writer(self, gpio):
        """A :class:`RecordWriter` for *gpio*'s slot, or None if it has none."""
        if not 0 <= gpio < SLOTS:
            return None
        return RecordWriter(self._map, gpio * SLOT_SIZE)

    # The reader (the server) -----------------------------------------------------------

    def read(self, gpio):
        """*gpio*'s record, or None (no slot, never written, or no consistent copy)."""
        if not 0 <= gpio < SLOTS:
            return None
        offset = gpio * SLOT_SIZE
        for _ in range(READ_TRIES):
            raw = self._map[offset:offset + _SLOT.size]
            (head, taken, failed, state, frequency, pid, function, pull, live,
             crc, tail) = _SLOT.unpack(raw)
            if head != tail or head & 1:
                continue
            if head == 0 or zlib.crc32(raw[_BODY_AT:_TAIL_AT]) != crc:
                if head == 0:
                    return None
                continue
            if pid == 0 or function == _NO_FUNCTION or pull >= len(PULLS):
                return None                     # withdrawn, or nothing a read could return
            if frequency != frequency:          # NaN: no PWM, the state is a level
                frequency = None
                state = bool(state)
            return Record(pid, taken, failed, FUNCTIONS[function], state, frequency,
                          PULLS[pull], bool(live))
        return None

    def clear(self, gpio):
        """Forget *gpio*'s record (the server, before a new worker serves it)."""
        if 0 <= gpio < SLOTS:
            self._map[gpio * SLOT_SIZE:(gpio + 1) * SLOT_SIZE] = bytes(SLOT_SIZE)


class RecordWriter:
    """One worker's end of its slot: :meth:`publish` rewrites the record."""

    def __init__(self, buffer, offset):
        self._buffer = buffer
        self._offset = offset
        self._version = _HEAD.unpack_from(buffer, offset)[0] & ~1
        self._pid = os.getpid()

    def publish(self, taken, state, live, failed=0):
        """Write the record: *state* is a worker's ``read_state()`` dict."""
        frequency = state['frequency']
        value = state['state']
        body = _BODY.pack(
            taken, failed, _NAN if value is None else float(value),
            _NAN if frequency is None else float(frequency), self._pid,
            _FUNCTION_CODE.get(state['function'], _NO_FUNCTION) if value is not None
            else _NO_FUNCTION,
            _PULL_CODE.get(state['pull'], len(PULLS)), 1 if live else 0)
        version = self._version + 2
        buffer, offset = self._buffer, self._offset
        _HEAD.pack_into(buffer, offset, version - 1)           # odd: being written
        buffer[offset + _BODY_AT:offset + _TAIL_AT] = body
        _TAIL.pack_into(buffer, offset + _TAIL_AT, zlib.crc32(body), version)
        _HEAD.pack_into(buffer, offset, version)
        self._version = version

    def withdraw(self):
        """No record any more (the pin is released): reads go to the worker, if any."""
        version = self._version + 2
        _HEAD.pack_into(self._buffer, self._offset, version - 1)
        self._buffer[self._offset + _BODY_AT:self._offset + _BODY_AT + _BODY.size] = \
            bytes(_BODY.size)
        _TAIL.pack_into(self._buffer, self._offset + _TAIL_AT, _EMPTY_CRC, version)
        _HEAD.pack_into(self._buffer, self._offset, version)
        self._version = version


_inherited = None


def adopt(fd):
    """The zygote: map the server's table (file descriptor *fd*) for every worker it forks."""
    global _inherited
    _inherited = RecordTable(fd)


def inherited():
    """The table a worker inherited from the zygote (None if the server gave none)."""
    return _inherited


def _anonymous_file(size):
    """A file descriptor of *size* zero bytes that no path names (memfd where there is one)."""
    if hasattr(os, 'memfd_create'):
        fd = os.memfd_create('remoteio-records', os.MFD_CLOEXEC)   # (pass_fds hands it on)
    else:
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, size)
    return fd
