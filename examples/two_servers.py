"""
Drive two Raspberry Pis from one script: one factory per server.

    python3 two_servers.py HOST_A[:PORT] HOST_B[:PORT]
"""

import sys

from gpiozero import LED
from remoteio_factory import RemoteIOFactory


def factory_for(address):
    host, _, port = address.rpartition(':') if ':' in address else (address, '', '8509')
    return RemoteIOFactory(host=host, port=int(port))


pi_a = factory_for(sys.argv[1] if len(sys.argv) > 1 else 'localhost:8509')
pi_b = factory_for(sys.argv[2] if len(sys.argv) > 2 else 'localhost:8510')

led_a = LED(17, pin_factory=pi_a)
led_b = LED(17, pin_factory=pi_b)
for _ in range(5):           # a light that runs from one Pi to the other
    led_a.blink(0.1, 0.1, n=1, background=False)
    led_b.blink(0.1, 0.1, n=1, background=False)
print(f'{pi_a.host}:{pi_a.port} is a Pi {pi_a.board_info.model}, '
      f'{pi_b.host}:{pi_b.port} is a Pi {pi_b.board_info.model}')
