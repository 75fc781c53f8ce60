"""
The client's settings from the environment (``REMOTEIO_HOST``,
``REMOTEIO_PORT``, the timeouts, ``REMOTEIO_RECONNECT``), read in one place
so that a bad value is reported by the variable's name, not as a bare
``ValueError`` from deep inside.

Flow: RemoteIOFactory / ``remoteio`` command / server_status → **settings**
→ ``os.environ``.
"""

import logging
import math
import os

from remoteio_factory import protocol
from remoteio_factory.exc import RemoteIOConfigError

log = logging.getLogger('remoteio_factory')

_TRUE = ('1', 'yes', 'true', 'on')
_FALSE = ('0', 'no', 'false', 'off')
_pigpio_warned = False


def port_number(value, name='port'):
    """*value* as a TCP port number; :exc:`RemoteIOConfigError` naming *name* if it is none."""
    try:
        port = int(str(value).strip())
    except (TypeError, ValueError):
        port = None
    if port is None or not 0 < port < 65536:
        raise RemoteIOConfigError(
            f'{name}={value!r} is not a port number: it must be the remoteio server\'s TCP '
            f'port, from 1 to 65535 (remoteio-server listens on {protocol.DEFAULT_PORT} by '
            f'default)')
    return port


def env_port():
    """``REMOTEIO_PORT``, or the default port."""
    value = os.environ.get('REMOTEIO_PORT')
    if not value:
        return protocol.DEFAULT_PORT
    return port_number(value, 'REMOTEIO_PORT')


def env_host():
    """
    ``REMOTEIO_HOST``, or ``localhost``. Someone moving from pigpio's remote
    GPIO may still have ``PIGPIO_ADDR`` set and not ``REMOTEIO_HOST``: that
    would silently drive this machine's server instead, so say so (once).
    """
    global _pigpio_warned
    host = os.environ.get('REMOTEIO_HOST')
    if host:
        return host
    pigpio = os.environ.get('PIGPIO_ADDR')
    if pigpio and not _pigpio_warned:
        _pigpio_warned = True
        log.warning('PIGPIO_ADDR=%s is set but REMOTEIO_HOST is not: remoteio ignores '
                    'PIGPIO_ADDR and connects to localhost. Set REMOTEIO_HOST=%s to use '
                    'the remoteio server on that machine', pigpio, pigpio)
    return 'localhost'


def seconds(value, name, allow_zero=False):
    """*value* as a number of seconds; :exc:`RemoteIOConfigError` naming *name* if it is none."""
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if math.isnan(number) or number < 0 or (number == 0 and not allow_zero) \
            or math.isinf(number):
        raise RemoteIOConfigError(
            f'{name}={value!r} is not a number of seconds: it must be a number above 0 '
            f'(e.g. {name}=10)')
    return number


def env_seconds(name, default, allow_zero=False):
    """The environment variable *name* as seconds, or *default* when it is unset or empty."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    return seconds(value, name, allow_zero)


def env_flag(name, default):
    """The environment variable *name* as a yes/no, or *default* when it is unset or empty."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RemoteIOConfigError(f'{name}={value!r} must be 1 or 0 (also yes/no, true/false)')
