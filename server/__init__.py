"""
remoteio-server: the daemon that runs on the Raspberry Pi and drives its pins
for remote gpiozero clients (:mod:`remoteio_factory`).

Flow: client → wire → **server** (:mod:`.daemon`, :mod:`.session`) →
:mod:`.pintable` → pin worker process (:mod:`.worker`, started by
:mod:`.spawner`) → gpiozero pin of the local backend (:mod:`.backends`). On the mock backend the
virtual Pi's wires and parts (:mod:`.circuit`, :mod:`.parts`) sit beside the pin
table and send the wired inputs their signals (:mod:`.signals`,
:mod:`.virtualpin`). Observers (:mod:`.observers`) follow every pin's changes;
the browser dashboard (:mod:`.dashboard`, ``--http``) is one of them.

Run it with the ``remoteio-server`` command, or from Python::

    from remoteio_server import run_server

    if __name__ == '__main__':
        run_server(port=8509, mode='wait')
"""

from remoteio_factory._version import __version__
from remoteio_server.daemon import Server, run_server

__all__ = ['Server', 'run_server', '__version__']
