"""
Observers: connections that follow every pin's changes without claiming any.

Flow: pin worker (a ``change`` message, while there are observers) → pin
table's reader thread → **observer hub** → each observer's batch → its
connection (a ``changes`` push).

A connection becomes an observer with the ``observe`` request: it gets a
snapshot of the whole server (the ``status`` object) in the reply, then a
``changes`` push whenever something happened: each pin's transitions
(function, level or duty, frequency, pull, with the server's time of each),
timed tasks starting and ending, input edges, claims and releases, clients
arriving and leaving; and, in every push, the latest state of every pin that
changed.

**A slow observer costs nobody else anything.** The reader threads that take
the workers' messages only append to each observer's batch (a bounded deque
and a dict, under a lock held for the append); one flusher thread encodes the
batches and hands each to its connection's outbox, at most every
:data:`FLUSH_INTERVAL`, and only while that outbox holds less than
:data:`OUTBOX_ROOM`: an observer that does not read keeps one batch waiting,
in which old transitions give way to new ones (:data:`MAX_TRANSITIONS`, the
number given up reported as ``dropped``) and each pin's latest state simply
replaces the one before. So an observer that cannot keep up loses old
intermediate values, never the latest, and never slows a pin's worker (whose
messages are taken by the reader at once), another client, or another
observer. Workers send ``change`` messages only while there is at least one
observer.
"""

import json
import logging
import threading
import time
from collections import deque

log = logging.getLogger('remoteio_server.observers')

#: How often at most an observer gets a push (seconds): 20 updates a second.
FLUSH_INTERVAL = 0.05
#: An observer's connection gets a push only while its outbox holds less than this.
OUTBOX_ROOM = 64 * 1024
#: Transitions one observer's batch holds; older ones give way (``dropped``).
MAX_TRANSITIONS = 2000


class Observer:
    """One observing connection's batch; see the module docstring."""

    def __init__(self, session):
        self.session = session
        self.transitions = deque(maxlen=MAX_TRANSITIONS)
        self.latest = {}           # gpio -> {field: value} changed since the last push
        self.dropped = 0
        self.ready = False         # its snapshot has been sent: pushes may follow
        self._lock = threading.Lock()

    def add(self, entries, latest):
        with self._lock:
            room = self.transitions.maxlen - len(self.transitions)
            if len(entries) > room:
                self.dropped += len(entries) - room
            self.transitions.extend(entries)
            for gpio, fields in latest.items():
                self.latest.setdefault(gpio, {}).update(fields)

    def take(self):
        """The push to send (bytes), or None when there is nothing new."""
        with self._lock:
            if not self.transitions and not self.latest and not self.dropped:
                return None
            push = {'push': 'changes', 'transitions': list(self.transitions),
                    'pins': {str(g): f for g, f in self.latest.items()},
                    'dropped': self.dropped}
            self.transitions.clear()
            self.latest = {}
            self.dropped = 0
        return (json.dumps(push, separators=(',', ':')) + '\n').encode()


class Hub:
    """Every observer of the server, and the flusher thread that feeds them."""

    def __init__(self, on_switch=None):
        self._observers = {}            # session -> Observer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._on_switch = on_switch     # called with True/False as observers come and go
        self._switch = threading.Lock()  # (so that the calls keep the order of the changes)
        self._thread = None

    @property
    def active(self):
        """True while anybody observes (workers then report their changes)."""
        return bool(self._observers)

    def add(self, session):
        """*session* observes from now on; its pushes wait for :meth:`started`."""
        with self._switch:
            with self._lock:
                observer = self._observers.get(session)
                if observer is not None:
                    return observer
                observer = self._observers[session] = Observer(session)
                first = len(self._observers) == 1
                if self._thread is None:
                    self._thread = threading.Thread(target=self._flush_loop,
                                                    name='remoteio-observers', daemon=True)
                    self._thread.start()
            if first and self._on_switch is not None:
                self._on_switch(True)
        return observer

    def observing(self, session):
        return session in self._observers

    def started(self, observer):
        """Its snapshot is on its way: what happened since may follow."""
        observer.ready = True
        self._wake.set()

    def remove(self, session):
        with self._switch:
            with self._lock:
                gone = self._observers.pop(session, None)
                last = gone is not None and not self._observers
            if last and self._on_switch is not None:
                self._on_switch(False)

    def publish(self, entries, latest):
        """
        Transitions (dicts with ``pin`` and ``t``) and each pin's latest fields
        (gpio -> dict): appended to every observer's batch (never blocks).
        """
        with self._lock:
            observers = list(self._observers.values())
        if not observers:
            return
        for observer in observers:
            observer.add(entries, latest)
        self._wake.set()

    def pin_changes(self, gpio, entries):
        """A pin's worker reported *entries* (``{'t': ..., 'state': 1}``, ...)."""
        latest = {}
        transitions = []
        for entry in entries:
            transitions.append(dict(entry, pin=gpio))
            latest.update({k: v for k, v in entry.items() if k not in ('t', 'result')})
        self.publish(transitions, {gpio: latest})

    def event(self, gpio, **fields):
        """Something the server itself saw (a claim, a release): one transition."""
        entry = dict(fields, t=time.monotonic())
        if gpio is not None:
            entry['pin'] = gpio
        self.publish([entry], {gpio: dict(fields)} if gpio is not None else {})

    def close(self):
        self._stop = True
        self._wake.set()

    def _flush_loop(self):
        while not self._stop:
            self._wake.wait()
            self._wake.clear()
            started = time.monotonic()
            with self._lock:
                observers = [o for o in self._observers.values() if o.ready]
            waiting = False
            for observer in observers:
                channel = getattr(observer.session, 'channel', None)
                if channel is None or observer.session.closed:
                    continue
                if channel.queued >= OUTBOX_ROOM:
                    waiting = True          # it has not read what it got: keep coalescing
                    continue
                data = observer.take()
                if data is not None:
                    try:
                        channel.post(data)
                    except Exception:       # (a connection closing meanwhile)
                        log.debug('an observer push failed', exc_info=True)
            if waiting:
                self._wake.set()            # look again after the interval
            time.sleep(max(0.0, FLUSH_INTERVAL - (time.monotonic() - started)))
