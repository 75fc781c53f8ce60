"""
Every message between the server's main process and a worker process, in one place.

Flow: server session → pin table → **messages (the pipe)** → pin worker.

The wire protocol (client ↔ server) is :mod:`remoteio_factory.protocol`; this
is its counterpart inside the server: what travels over the socket pair
between the pin table (:mod:`.pintable`) and a pin or SPI bus worker
(:mod:`.worker`, :mod:`.spi`). Each message is one of the named tuples below,
sent as a compact JSON array ``[kind, field, ...]`` whose fields are those of
the tuple, in order. Nothing else builds or takes apart those arrays:
:func:`encode` and :func:`decode_request` / :func:`decode_reply` do.

To a worker, always a :class:`Request`: ``seq`` numbers the requests of one
claim (1, 2, ...), ``op`` is one of :class:`Op`, ``args`` its fields, already
validated by the session, and ``request_id`` the client's request id (or null),
for errors reported later. ``signal`` (mock backend) carries ``{'version': n,
'signal': {...}}``: what the pin's net now carries (:mod:`.signals`), the
highest version winning.

From a worker (:class:`Kind` names them):

- :class:`Ready` ``(pid)``: started, its backend built; waits for its claim.
- :class:`Ok` ``(seq, result)``: request *seq* is done (or accepted, for a task).
- :class:`Err` ``(seq, error, request_id)``: request *seq* failed; *error* is a
  protocol error dict (:func:`describe_error`).
- :class:`End` ``(seq, result, error)``: the timed task started by request
  *seq* has ended (``completed``, ``replaced``, ``superseded``, ``stopped``,
  ``failed``).
- :class:`Event` ``(t, level, n)``: an input edge at server time *t*, the
  pin's *n*-th reported edge.
- :class:`Change` ``(entries)``: while the server has observers
  (:mod:`.observers`), what the pin's history gained (``{'t': ..., 'state':
  1}``, ...) and its timed tasks starting and ending (``{'t': ..., 'task':
  {...}}``, ``{'t': ..., 'task': None, 'result': 'completed'}``).
- :class:`Electrical` ``(function, level, frequency, pull, t)``: a pin on a
  net of the virtual Pi (:mod:`.circuit`) changed what it does to the net at
  server time *t* (an output's level or PWM duty, a pull, its function).

When each request is answered is the worker's business (its module docstring
says); what a worker has *taken* so far it also publishes in its shared record
(:mod:`.records`), which the pin table reads without a message at all.
"""

import json
import os
import struct
from enum import Enum
from typing import Any, NamedTuple, Optional

from remoteio_factory.protocol import CODE_FOR_EXCEPTION


class Op(str, Enum):
    """What a :class:`Request` asks a worker to do."""
    # the first request of a worker's life: which pin (or SPI bus) it serves
    CLAIM = 'claim'
    SPI_CLAIM = 'spi_claim'
    # a pin's operations, in the order the client sent them
    SETUP = 'setup'
    WRITE = 'write'
    FREQUENCY = 'frequency'
    PULL = 'pull'
    EDGES = 'edges'
    SUBSCRIBE = 'subscribe'
    TASK = 'task'
    RELEASE = 'release'
    # answered at once, whatever is queued
    READ = 'read'
    SNAPSHOT = 'snapshot'
    SYNC = 'sync'
    HALT = 'halt'
    DRIVE = 'drive'
    SIGNAL = 'signal'
    OBSERVE = 'observe'
    # an SPI bus's operations
    TRANSFER = 'transfer'
    CONFIGURE = 'configure'
    SET_CHANNEL = 'set_channel'


class Kind(str, Enum):
    """What a message from a worker is."""
    READY = 'ready'
    OK = 'ok'
    ERR = 'err'
    END = 'end'
    EVENT = 'event'
    ELECTRICAL = 'electrical'
    CHANGE = 'change'


class Request(NamedTuple):
    seq: int
    op: str
    args: dict
    request_id: Any = None


class Ready(NamedTuple):
    pid: int


class Ok(NamedTuple):
    seq: int
    result: Any


class Err(NamedTuple):
    seq: int
    error: dict
    request_id: Any = None


class End(NamedTuple):
    seq: int
    result: str
    error: Optional[dict] = None


class Event(NamedTuple):
    t: float
    level: int
    n: int


class Change(NamedTuple):
    entries: list


class Electrical(NamedTuple):
    function: str
    level: float
    frequency: Optional[float]
    pull: Optional[str]
    t: float


_KIND_OF = {Ready: Kind.READY, Ok: Kind.OK, Err: Kind.ERR, End: Kind.END, Event: Kind.EVENT,
            Electrical: Kind.ELECTRICAL, Change: Kind.CHANGE}
_REPLY_CLASS = {kind.value: cls for cls, kind in _KIND_OF.items()}


def encode(message):
    """The bytes for *message* (a :class:`Request` or a reply tuple)."""
    if type(message) is Request:
        fields = [message.seq, message.op.value if isinstance(message.op, Op) else message.op,
                  message.args, message.request_id]
    else:
        fields = [_KIND_OF[type(message)].value, *message]
    return json.dumps(fields, separators=(',', ':')).encode('utf-8')


def decode_request(raw):
    """A :class:`Request` from the bytes of one."""
    seq, op, args, request_id = json.loads(raw)
    return Request(seq, op, args, request_id)


def decode_reply(raw):
    """A reply tuple (:class:`Ok`, :class:`Err`, ...) from the bytes of one."""
    fields = json.loads(raw)
    return _REPLY_CLASS[fields[0]](*fields[1:])


def ok_then_history(seq, result, history_items):
    """
    The bytes of ``Ok(seq, result + {'history': [...]})`` where the history is
    a list of entries already encoded as JSON text (a worker keeps its history
    that way, so a status asking for 1000 entries costs a join, not an encoding
    that would hold up the pin's timing).
    """
    head = encode(Ok(seq, result))            # ...}]
    return head[:-2] + b',"history":[' + ','.join(history_items).encode() + b']}]'


def pin_error(code, message, type='RemoteIOPinError'):
    """A protocol error dict (the ``error`` of :class:`Err` and :class:`End`)."""
    return {'code': code, 'type': type, 'message': message}


def describe_error(exc):
    """Map an exception raised by the backend to a protocol error dict."""
    for cls in type(exc).__mro__:
        if cls.__module__ == 'gpiozero.exc' and cls.__name__ in CODE_FOR_EXCEPTION:
            return pin_error(CODE_FOR_EXCEPTION[cls.__name__], str(exc) or cls.__name__,
                             cls.__name__)
    if type(exc).__module__ == 'gpiozero.exc':
        return pin_error('backend_error', str(exc) or type(exc).__name__, type(exc).__name__)
    code = getattr(exc, 'code', None)
    if type(exc).__name__ == 'ProtocolError' and isinstance(code, str):
        return pin_error(code, str(exc))
    return pin_error('backend_error', f'{type(exc).__name__}: {exc}', 'PinError')


class FrameReader:
    """
    A worker's end of its pipe, read the way :class:`multiprocessing.connection.Connection`
    frames it (a 4-byte big-endian length, then the bytes), but all that has
    arrived in one ``read``: :meth:`fill` once select says the pipe is readable,
    then :meth:`next` for each complete message (None when there is no more).
    *chunk* is kept small: each read allocates that much, and every page a
    worker touches is a page of its own (a worker's requests are tens of bytes).
    """

    _HEADER = struct.Struct('!i')

    def __init__(self, fd, chunk=8192):
        self.fd = fd
        self.chunk = chunk
        self._buffer = bytearray()
        self._offset = 0

    def fill(self):
        """Read what the pipe holds (it must be readable); EOFError when the server has gone."""
        data = os.read(self.fd, self.chunk)
        if not data:
            raise EOFError('the server closed the pipe')
        if self._offset:
            del self._buffer[:self._offset]
            self._offset = 0
        self._buffer += data

    @property
    def ready(self):
        """True if a complete message is buffered."""
        size = self._size()
        return size is not None and len(self._buffer) - self._offset - 4 >= size

    def _size(self):
        if len(self._buffer) - self._offset < 4:
            return None
        size = self._HEADER.unpack_from(self._buffer, self._offset)[0]
        if size < 0:
            raise ValueError('a message on the pipe is too large')   # (never sent: 2 GiB)
        return size

    def next(self):
        """The next complete message's bytes, or None."""
        size = self._size()
        if size is None:
            return None
        start = self._offset + 4
        if len(self._buffer) - start < size:
            return None
        self._offset = start + size
        return bytes(self._buffer[start:start + size])
