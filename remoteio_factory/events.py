"""
Delivering edge events to pins, off the socket's reader thread.

Flow: server pin worker (edge) → wire (``event`` push) → connection reader →
**EventDispatcher** (its own thread) → ``RemoteIOPin._call_when_changed`` →
the gpiozero device's handlers (``when_pressed``, …).

User callbacks often talk to the server themselves (``led.toggle()``,
``button.is_pressed``): run on the reader thread they would wait for a reply
only that thread can deliver. So the reader only queues events; one
dispatcher thread per factory delivers them, in the order they arrived, with
the server's timestamp converted to the client's ``ticks()`` clock.
"""

import logging
import queue
import threading

log = logging.getLogger('remoteio_factory')


class EventDispatcher:
    """
    Calls *deliver(gpio, ticks, state)* for each queued event on a thread of
    its own. *offset* is the server's monotonic clock minus ours.
    """

    def __init__(self, deliver, offset, name):
        self._deliver = deliver
        self.offset = offset
        self._name = name
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._lock = threading.Lock()

    def put(self, gpio, server_time, state):
        """Queue one event (called on the reader thread: never blocks)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    self._thread.start()
        self._queue.put((gpio, server_time - self.offset, state))

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._deliver(*item)
            except Exception:
                log.exception('an edge event handler failed')

    def close(self, timeout=2.0):
        """Stop after the events already queued; never waits on itself."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        if thread is not threading.current_thread():
            thread.join(timeout)
