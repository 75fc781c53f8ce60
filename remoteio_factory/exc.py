"""
Exceptions of remoteio-factory, and the mapping from the wire's typed errors
to gpiozero's own exception classes.

Flow: server error reply → **exception_for()** → raised in the caller, as the
gpiozero class that fits (``GPIOPinInUse``, ``PinInvalidPin``, …) so that
existing gpiozero code handles it.
"""

import gpiozero.exc
from gpiozero.exc import DeviceClosed, GPIOZeroError, PinError


class RemoteIOError(PinError):
    """Base class of the errors this package adds to gpiozero's."""


class RemoteIOConnectionError(RemoteIOError, ConnectionError):
    """
    The remoteio server cannot be reached, or the connection to it was lost.
    Caught by ``except PinError``, ``except GPIOZeroError``, ``except OSError``
    and ``except ConnectionError`` alike.
    """


class RemoteIOAuthError(RemoteIOConnectionError):
    """
    The server refused us: a wrong or missing token (``REMOTEIO_TOKEN``), or
    protected mode. Or the server could not prove it knows the token.
    """


class RemoteIOProtocolError(RemoteIOError, ValueError):
    """The server rejected a message as malformed (a bug in the client, or a version mismatch)."""


class RemoteIOPinError(RemoteIOError):
    """The server could not carry out an operation on a pin (e.g. its worker died)."""


class RemoteIOConfigError(RemoteIOError, ValueError):
    """A setting of the client (an environment variable or an argument) has a bad value."""


class RemoteIOFactoryClosed(DeviceClosed):
    """The :class:`~remoteio_factory.RemoteIOFactory` was closed; its pins cannot be read."""


def _exception_classes():
    classes = {
        name: cls for name, cls in vars(gpiozero.exc).items()
        if isinstance(cls, type) and issubclass(cls, GPIOZeroError)
    }
    classes.update({
        cls.__name__: cls for cls in (
            RemoteIOError, RemoteIOConnectionError, RemoteIOAuthError, RemoteIOProtocolError,
            RemoteIOPinError)
    })
    return classes


#: The classes an error reply may name: gpiozero's and ours, nothing else.
EXCEPTION_CLASSES = _exception_classes()


def exception_for(error):
    """Return the exception to raise for an error dict from the wire."""
    from remoteio_factory.protocol import ERROR_CODES
    message = str(error.get('message') or error.get('code') or 'unknown error')
    cls = EXCEPTION_CLASSES.get(error.get('type'))
    if cls is None:
        cls = EXCEPTION_CLASSES.get(ERROR_CODES.get(error.get('code')), RemoteIOError)
    return cls(message)
