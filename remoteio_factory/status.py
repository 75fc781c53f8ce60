"""
Asking a server what it is doing: the data behind ``remoteio status``.

Flow: **status** → connection → wire → server (``status`` request) → the
pin table's snapshot of every pin worker.
"""

from remoteio_factory import settings
from remoteio_factory.connection import DEFAULT_CONNECT_TIMEOUT, Connection


def server_status(host=None, port=None, history=20, timeout=DEFAULT_CONNECT_TIMEOUT, token=None):
    """
    Return the status of the server at *host*:*port* (defaults as for
    :class:`~remoteio_factory.RemoteIOFactory`) as a dict; *history* is how
    many of each pin's last transitions to include (at most 1000). The
    format is documented in ``docs/protocol.md`` (``status``).
    """
    if host is None:
        host = settings.env_host()
    port = settings.env_port() if port is None else settings.port_number(port)
    from remoteio_factory.factory import tls_context
    connection = Connection(host, port, connect_timeout=timeout, timeout=10.0, token=token,
                            tls=tls_context())
    try:
        reply = connection.request('status', history=history)
    finally:
        connection.close()
    reply.pop('id', None)
    reply.pop('ok', None)
    return reply
