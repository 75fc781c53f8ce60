"""
Posted writes are flow-controlled by the client: a script that writes faster
than the server carries its writes out keeps a bounded backlog, so its own
heartbeats and reads are never stuck behind seconds of writes (which made the
connection count as lost, and the reconnection find its pins still held by the
old session). See ``POST_MARK`` in ``remoteio_factory/connection.py``.

The proof: the server's process is stopped (SIGSTOP), so it reads nothing; a
thread posting writes must stop once it is the window ahead, where without
the window it would fill the sockets' buffers (megabytes). Once the server
runs again, every write is carried out, on the same connection.
"""

import os
import signal
import threading

import pytest
from gpiozero import DigitalOutputDevice

from conftest import wait_for
from remoteio_factory.connection import POST_MARK, POST_MARKS_AHEAD

#: The most posts a connection may be ahead of what the server has read.
WINDOW = POST_MARK * (POST_MARKS_AHEAD + 1)
#: Writes the test posts: twenty windows (all of them fit in the sockets' buffers, so
#: without the window the poster would not stop at all).
TOTAL = 20 * WINDOW


class Poster(threading.Thread):
    """Posts TOTAL alternating writes to *device*, counting them."""

    def __init__(self, device):
        super().__init__(daemon=True)
        self.device = device
        self.posted = 0
        self.error = None

    def run(self):
        try:
            for i in range(TOTAL):
                self.device.value = i & 1
                self.posted += 1
        except BaseException as exc:
            self.error = exc


@pytest.mark.skipif(not hasattr(signal, 'SIGSTOP'), reason='needs SIGSTOP')
def test_a_script_posting_faster_than_the_server_stays_a_window_ahead(fresh_server):
    server = fresh_server()
    factory = server.factory()
    try:
        led = DigitalOutputDevice(17, pin_factory=factory)
        connection = factory._connection
        before = server.pin(17, history=0)['writes']
        poster = Poster(led)
        os.kill(server.pid, signal.SIGSTOP)
        try:
            poster.start()
            wait_for(lambda: poster.posted >= WINDOW - POST_MARK or poster.error, timeout=30,
                     message='the poster to reach the window')
            # It must not get further while the server reads nothing (a negative check:
            # with the window it cannot, whenever it is looked at).
            threading.Event().wait(1.0)
            assert poster.error is None, poster.error
            assert WINDOW - POST_MARK <= poster.posted <= WINDOW, poster.posted
            assert poster.is_alive()
        finally:
            os.kill(server.pid, signal.SIGCONT)
        poster.join(120)
        assert not poster.is_alive() and poster.error is None, poster.error
        assert led.value == (TOTAL - 1) & 1           # a read after them shows the last
        assert server.pin(17, history=0)['writes'] - before == TOTAL   # none lost
        assert factory._connection is connection and connection.broken is None
    finally:
        factory.close()
