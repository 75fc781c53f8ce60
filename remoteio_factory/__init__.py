"""
remoteio-factory: remote GPIO for gpiozero.

:class:`RemoteIOFactory` is a gpiozero pin factory whose pins live on a
remote Raspberry Pi running ``remoteio-server`` (:mod:`remoteio_server`).
Select it with ``GPIOZERO_PIN_FACTORY=remoteio`` (and ``REMOTEIO_HOST`` /
``REMOTEIO_PORT``) to run unmodified gpiozero scripts against the remote Pi,
or pass ``RemoteIOFactory(host=..., port=...)`` as ``pin_factory=``.

Flow: gpiozero device → :mod:`.factory` / :mod:`.pin` → :mod:`.connection`
→ wire (:mod:`.protocol`, ``docs/protocol.md``) → server.
"""

import importlib
from typing import TYPE_CHECKING

from remoteio_factory._version import __version__

# What the package offers, by the module that defines it, imported when first used
# (PEP 562): the server imports the modules both halves share (protocol, tasks) without
# loading the client, and gpiozero with it, into its main process.
_EXPORTS = {
    'RemoteIOFactory': 'factory', 'RemoteIOPin': 'pin', 'server_status': 'status',
    'RemoteServer': 'seed', 'RemotePin': 'seed', 'LED': 'devices', 'PWMLED': 'devices',
    'RemoteIOError': 'exc', 'RemoteIOConnectionError': 'exc', 'RemoteIOAuthError': 'exc',
    'RemoteIOProtocolError': 'exc', 'RemoteIOPinError': 'exc', 'RemoteIOFactoryClosed': 'exc',
    'RemoteIOConfigError': 'exc',
}

if TYPE_CHECKING:                                           # pragma: no cover
    from remoteio_factory.devices import LED, PWMLED
    from remoteio_factory.exc import (
        RemoteIOAuthError, RemoteIOConfigError, RemoteIOConnectionError, RemoteIOError,
        RemoteIOFactoryClosed, RemoteIOPinError, RemoteIOProtocolError)
    from remoteio_factory.factory import RemoteIOFactory
    from remoteio_factory.pin import RemoteIOPin
    from remoteio_factory.seed import RemotePin, RemoteServer
    from remoteio_factory.status import server_status


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    'RemoteIOFactory', 'RemoteIOPin', 'server_status',
    'RemoteServer', 'RemotePin', 'LED', 'PWMLED',
    'RemoteIOError', 'RemoteIOConnectionError', 'RemoteIOAuthError', 'RemoteIOProtocolError',
    'RemoteIOPinError', 'RemoteIOFactoryClosed', 'RemoteIOConfigError', '__version__',
]
