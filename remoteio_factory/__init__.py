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

from remoteio_factory._version import __version__
from remoteio_factory.exc import (
    RemoteIOAuthError, RemoteIOConfigError, RemoteIOConnectionError, RemoteIOError,
    RemoteIOFactoryClosed, RemoteIOPinError, RemoteIOProtocolError)
from remoteio_factory.devices import LED, PWMLED
from remoteio_factory.factory import RemoteIOFactory
from remoteio_factory.pin import RemoteIOPin
from remoteio_factory.seed import RemotePin, RemoteServer
from remoteio_factory.status import server_status

__all__ = [
    'RemoteIOFactory', 'RemoteIOPin', 'server_status',
    'RemoteServer', 'RemotePin', 'LED', 'PWMLED',
    'RemoteIOError', 'RemoteIOConnectionError', 'RemoteIOAuthError', 'RemoteIOProtocolError',
    'RemoteIOPinError', 'RemoteIOFactoryClosed', 'RemoteIOConfigError', '__version__',
]
