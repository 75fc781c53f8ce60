"""
The remoteio wire protocol, version 1: framing, limits, field validation and
error codes. Both halves import this module: the client's connection
(:mod:`remoteio_factory.connection`) and the server's session
(:mod:`remoteio_server.session`). ``docs/protocol.md`` is the specification;
this module is its reference implementation.

Every message is one JSON object, UTF-8 encoded, on one line ending in ``\\n``,
at most :data:`MAX_MESSAGE` bytes long including the newline.
"""

import hashlib
import hmac
import json

PROTOCOL_VERSION = 1
DEFAULT_PORT = 8509
MAX_MESSAGE = 65536

#: The authentication scheme of protocol v1 (see :func:`auth_mac`).
AUTH_SCHEME = 'hmac-sha256'

#: Largest request id a client may use (fits an IEEE double exactly).
MAX_ID = 2**53 - 1

#: Highest PWM frequency (Hz) the server accepts.
MAX_FREQUENCY = 1_000_000.0

#: Largest duration of a timed task: one week.
MAX_TIME_MS = 7 * 24 * 3600 * 1000
#: Largest cycle count of a blink or pulse.
MAX_COUNT = 10**9

MODES = ('wait', 'nowait')
EDGES = ('none', 'falling', 'rising', 'both')
#: Longest debounce time (seconds) the server accepts.
MAX_BOUNCE = 10.0
FUNCTIONS = ('input', 'output')
PULLS = ('up', 'down', 'floating')

#: The error codes of protocol v1, mapped to the gpiozero exception class the
#: client raises for them (by name; the client resolves the names).
ERROR_CODES = {
    'malformed': 'RemoteIOProtocolError',        # not JSON, not an object
    'message_too_large': 'RemoteIOProtocolError',
    'bad_request': 'RemoteIOProtocolError',      # a field is missing or of the wrong type
    'unknown_op': 'RemoteIOProtocolError',
    'hello_required': 'RemoteIOProtocolError',
    'unsupported_protocol': 'RemoteIOProtocolError',
    'invalid_pin': 'PinInvalidPin',
    'pin_in_use': 'GPIOPinInUse',
    'not_claimed': 'RemoteIOPinError',
    'pin_closed': 'RemoteIOPinError',            # the pin is finishing its work (soft close)
    'superseded': 'RemoteIOPinError',            # nowait: a later request replaced this one
    'invalid_state': 'PinInvalidState',
    'invalid_function': 'PinInvalidFunction',
    'invalid_pull': 'PinInvalidPull',
    'fixed_pull': 'PinFixedPull',
    'set_input': 'PinSetInput',
    'pwm_unsupported': 'PinPWMUnsupported',
    'pwm_fixed_value': 'PinPWMFixedValue',
    'edge_detect_unsupported': 'PinEdgeDetectUnsupported',
    'invalid_edges': 'PinInvalidEdges',
    'invalid_bounce': 'PinInvalidBounce',
    'mock_only': 'RemoteIOError',                # drive: the backend is a real one
    'backend_error': 'RemoteIOPinError',
    'worker_died': 'RemoteIOPinError',
    'auth_required': 'RemoteIOAuthError',        # a request before a successful auth
    'auth_failed': 'RemoteIOAuthError',          # wrong token: the connection is closed
    'not_allowed': 'PinInvalidPin',              # the server's --allow-pins excludes the pin
    'limit': 'RemoteIOError',
    'timeout': 'RemoteIOError',                  # the server gave up waiting (e.g. for other pins)
    'shutting_down': 'RemoteIOError',
}

#: gpiozero exception class name -> error code, for errors raised by a backend.
CODE_FOR_EXCEPTION = {
    'PinInvalidPin': 'invalid_pin',
    'GPIOPinInUse': 'pin_in_use',
    'PinInvalidState': 'invalid_state',
    'PinInvalidFunction': 'invalid_function',
    'PinInvalidPull': 'invalid_pull',
    'PinFixedPull': 'fixed_pull',
    'PinSetInput': 'set_input',
    'PinPWMUnsupported': 'pwm_unsupported',
    'PinPWMFixedValue': 'pwm_fixed_value',
    'PinEdgeDetectUnsupported': 'edge_detect_unsupported',
    'PinInvalidEdges': 'invalid_edges',
    'PinInvalidBounce': 'invalid_bounce',
}


class ProtocolError(ValueError):
    """A message broke protocol v1. *code* is one of :data:`ERROR_CODES`."""

    def __init__(self, code, message, id=None):
        super().__init__(message)
        self.code = code
        self.id = id


def _reject_constant(name):
    # json accepts NaN, Infinity and -Infinity by default; the protocol does not
    raise ValueError(f'{name} is not valid JSON')


_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_encoder = json.JSONEncoder(separators=(',', ':'), allow_nan=False)


def encode(message):
    """Return *message* (a dict) as one protocol line (bytes)."""
    return (_encoder.encode(message) + '\n').encode('utf-8')


def decode(line):
    """
    Decode one line (bytes, newline stripped) into a dict, or raise
    :exc:`ProtocolError` with code ``malformed``.
    """
    try:
        message = _decoder.decode(line.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError('malformed', f'message is not valid JSON: {exc}') from None
    except RecursionError:
        raise ProtocolError('malformed', 'message is nested too deeply') from None
    if not isinstance(message, dict):
        raise ProtocolError('malformed', 'message is not a JSON object')
    return message


class LineReader:
    """
    Splits a byte stream into protocol lines. :meth:`feed` returns the
    complete lines. Once a line is known to be longer than *limit* (without
    buffering more of it), :attr:`error` is set to a :exc:`ProtocolError`
    (``message_too_large``): the lines before it are still returned, nothing
    after it is.
    """

    def __init__(self, limit=MAX_MESSAGE):
        self.limit = limit
        self.error = None
        self._buffer = b''

    def feed(self, data):
        if self.error is not None:
            return []
        buffer = self._buffer + data if self._buffer else data
        lines = buffer.split(b'\n')
        self._buffer = lines.pop()
        for index, line in enumerate(lines):
            if len(line) >= self.limit:
                del lines[index:]
                self._overflow()
                return lines
        if len(self._buffer) >= self.limit:
            self._overflow()
        return lines

    def _overflow(self):
        self._buffer = b''
        self.error = ProtocolError(
            'message_too_large', f'message exceeds the limit of {self.limit} bytes')


# Field validation ----------------------------------------------------------
# Each function takes the message and the field name and returns the value,
# or raises ProtocolError naming the field. The code says what was wrong.

def _field(message, name, required=True):
    if name not in message:
        if required:
            raise ProtocolError('bad_request', f'field {name!r} is required')
        return None
    return message[name]


def is_number(value):
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def get_id(message):
    value = message.get('id')
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise ProtocolError(
            'bad_request', f"field 'id' must be an integer from 0 to {MAX_ID}")
    return value


def get_str(message, name, choices=None, code='bad_request', required=True):
    value = _field(message, name, required)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ProtocolError('bad_request', f'field {name!r} must be a string')
    if choices is not None and value not in choices:
        raise ProtocolError(
            code, f'field {name!r} must be one of {", ".join(choices)}, not {value[:40]!r}')
    return value


def get_gpio(message, valid_gpios):
    value = _field(message, 'pin')
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError('invalid_pin', "field 'pin' must be a GPIO number (an integer)")
    if value not in valid_gpios:
        raise ProtocolError('invalid_pin', f'GPIO{value} is not a GPIO pin of this board')
    return value


def get_state(message, name='state', required=True):
    value = _field(message, name, required)
    if value is None and not required:
        return None
    if not is_number(value) or not 0 <= value <= 1:
        raise ProtocolError(
            'invalid_state', f'field {name!r} must be a number from 0 to 1')
    return value


def get_frequency(message):
    value = _field(message, 'frequency')
    if value is None:
        return None
    if not is_number(value) or not 0 < value <= MAX_FREQUENCY:
        raise ProtocolError(
            'bad_request',
            f"field 'frequency' must be null or a number above 0 and at most {MAX_FREQUENCY:g}")
    return float(value)


def parse_gpio(text):
    """A GPIO number from ``'GPIO17'``, ``'BCM17'`` or ``'17'`` (for command lines); ValueError else."""
    name = str(text).strip().upper()
    for prefix in ('GPIO', 'BCM'):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return int(name)


def get_ms(message, name, default=None):
    """A duration in milliseconds (0 to :data:`MAX_TIME_MS`), returned in seconds."""
    value = message.get(name)
    if value is None:
        return default
    if not is_number(value) or not 0 <= value <= MAX_TIME_MS:
        raise ProtocolError(
            'bad_request', f'field {name!r} must be a number of milliseconds from 0 to {MAX_TIME_MS}')
    return value / 1000.0


def get_bool(message, name, default=False):
    value = message.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ProtocolError('bad_request', f'field {name!r} must be true or false')
    return value


def get_count(message, name, default, maximum):
    value = message.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise ProtocolError(
            'bad_request', f'field {name!r} must be an integer from 0 to {maximum}')
    return value


def auth_mac(token, side, nonce):
    """
    The answer to a challenge: HMAC-SHA256, keyed with the shared *token*
    (bytes), of ``"remoteio v1 <side> " + nonce`` where *side* is ``client``
    (the client answering the server's nonce) or ``server`` (the server
    answering the client's). Lower-case hex.
    """
    message = f'remoteio v1 {side} {nonce}'.encode('utf-8')
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def error_reply(id, code, message, type=None, pin=None):
    """
    Build an error reply. *type* defaults to the class named for *code*;
    *pin* is the GPIO the failed request was for, if any.
    """
    reply = {
        'id': id,
        'ok': False,
        'error': {
            'code': code,
            'type': type or ERROR_CODES.get(code, 'RemoteIOError'),
            'message': message,
        },
    }
    if pin is not None:
        reply['pin'] = pin
    return reply
