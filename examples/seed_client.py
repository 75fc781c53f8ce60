"""
The seed project's client example, unchanged but for where the server is:
timed tasks on physical pin 7 (GPIO4), run by the server.

    REMOTEIO_HOST=192.168.1.38 REMOTEIO_PORT=1234 python3 seed_client.py

(with seed_server.py running on that machine, which listens on port 1234).
"""

import os

from remoteio_factory import RemoteServer

if __name__ == "__main__":
    server_ip = os.environ.get('REMOTEIO_HOST', 'localhost')  # the seed had "192.168.1.38"
    server_port = int(os.environ.get('REMOTEIO_PORT', 1234))

    remote_server = RemoteServer(server_ip, server_port)
    remote_pin = remote_server.pin(7, 'b')
    remote_pin.on(time_ms=2000)  # (Optional) Time until switch off
    remote_pin.blink()  # Blink LED
    remote_pin.pulse()  # Pulse LED
    remote_pin.off()
    remote_server.close()
