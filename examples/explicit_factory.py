"""
Choose the remote Pi in the script instead of with environment variables:
pass a RemoteIOFactory as pin_factory. Also shows how a pin error from the
server arrives as gpiozero's own exception.

    python3 explicit_factory.py [HOST [PORT]]
"""

import sys
from time import sleep

from gpiozero import LED, GPIOPinInUse
from remoteio_factory import RemoteIOFactory

host = sys.argv[1] if len(sys.argv) > 1 else 'localhost'
port = int(sys.argv[2]) if len(sys.argv) > 2 else 8509

factory = RemoteIOFactory(host=host, port=port)
print(f'connected to {factory.host}:{factory.port}: Raspberry Pi {factory.board_info.model}, '
      f'backend {factory.backend}')

led = LED('BOARD11', pin_factory=factory)   # any gpiozero pin name: GPIO17 here
led.blink(on_time=0.2, off_time=0.2, n=5, background=False)

other_client = RemoteIOFactory(host=host, port=port)
try:
    LED(17, pin_factory=other_client)
except GPIOPinInUse as exc:
    print(f'a second client cannot take GPIO17: {exc}')
other_client.close()

led.on()
sleep(0.5)
factory.close()   # releases GPIO17; the server switches it off
