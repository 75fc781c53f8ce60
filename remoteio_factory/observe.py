"""
Follow a remoteio server without claiming anything: the ``observe`` request
and a live copy of the server's status kept up to date by its pushes.

Flow: server (observer hub) → wire (``changes`` pushes) → **observation** →
``remoteio watch``, your own code.

::

    from remoteio_factory.observe import Observation

    with Observation('my-pi') as seen:
        print(seen.status()['pins'])         # the latest, without asking the server
        for change in seen.wait_changes(timeout=1.0):
            print(change)                    # {'pin': 17, 't': ..., 'state': 1}, ...

The server sends a snapshot (the ``status`` object) first, then every
transition of every pin (with its server time), timed tasks starting and
ending, claims and releases, and clients coming and going. An observation that
falls behind loses old transitions (counted in :attr:`Observation.dropped`),
never a pin's latest state (docs/protocol.md, ``observe``).
"""

import threading
from collections import deque

from remoteio_factory.connection import Connection

#: Transitions kept for :meth:`Observation.wait_changes`, oldest dropped first.
KEEP = 10000


class Observation:
    """A live copy of a server's status; see the module docstring."""

    def __init__(self, host='localhost', port=None, history=20, **connection_options):
        from remoteio_factory import settings
        port = port or settings.env_port()
        self._lock = threading.Condition()
        self._changes = deque(maxlen=KEEP)
        self.dropped = 0                     # transitions the server gave up for us
        self._status = None
        self._early = []
        self.connection = Connection(host, port, on_push=self._push, **connection_options)
        try:
            status = self.connection.request('observe', history=history)
        except BaseException:
            self.connection.close()
            raise
        status.pop('id', None)
        status.pop('ok', None)
        with self._lock:
            self._status = status
            self._pins = {pin['gpio']: pin for pin in status['pins']}
            for push in self._early:        # (pushes that overtook the reply: none, but safe)
                self._apply(push)
            self._early = []

    # The pushes --------------------------------------------------------------------

    def _push(self, message):
        if message.get('push') != 'changes':
            return
        with self._lock:
            if self._status is None:
                self._early.append(message)
            else:
                self._apply(message)
            self._lock.notify_all()

    def _apply(self, push):
        self.dropped += push.get('dropped', 0)
        for transition in push.get('transitions', ()):
            self._changes.append(transition)
            if 'client' in transition:
                self._client(transition)
        for gpio, fields in push.get('pins', {}).items():
            gpio = int(gpio)
            pin = self._pins.get(gpio)
            if pin is None:
                pin = self._pins[gpio] = {'gpio': gpio, 'name': f'GPIO{gpio}', 'history': [],
                                          'function': None, 'state': None, 'frequency': None,
                                          'pull': None, 'owner': None, 'status': 'free'}
            pin.update({k: v for k, v in fields.items() if k not in ('died', 'task')})
            if 'task' in fields:
                pin['task'] = fields['task']
            if fields.get('status') == 'free':
                pin['task'] = None
        self._status['pins'] = [self._pins[g] for g in sorted(self._pins)]
        times = [t['t'] for t in push.get('transitions', ()) if 't' in t]
        if times:
            self._status['monotonic'] = max(self._status.get('monotonic', 0), max(times))

    def _client(self, transition):
        clients = self._status['clients']
        if transition.get('event') == 'connected':
            clients.append({'id': transition['client'], 'peer': transition.get('peer'),
                            'client': transition.get('name'), 'mode': None,
                            'connected': transition['t'], 'pins': []})
        elif transition.get('event') == 'gone':
            self._status['clients'] = [c for c in clients if c['id'] != transition['client']]

    # What it shows --------------------------------------------------------------------

    def status(self):
        """The server's status as it is now (a copy), kept up to date by the pushes."""
        with self._lock:
            status = dict(self._status)
            status['pins'] = [dict(p) for p in self._status['pins']]
            owners = {}
            for pin in status['pins']:
                if pin.get('owner') is not None and pin.get('status') != 'free':
                    owners.setdefault(pin['owner'], []).append(pin['gpio'])
            status['clients'] = [dict(c, pins=sorted(owners.get(c['id'], c.get('pins', []))))
                                 for c in self._status['clients']]
            return status

    def wait_changes(self, timeout=None):
        """The transitions that came since the last call (waits up to *timeout* for one)."""
        with self._lock:
            if not self._changes:
                self._lock.wait(timeout)
            changes = list(self._changes)
            self._changes.clear()
            return changes

    def close(self):
        self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
