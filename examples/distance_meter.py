"""
An HC-SR04 distance sensor (trigger GPIO23, echo GPIO24): the closer an
object, the brighter an LED on GPIO13. Plain gpiozero.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 distance_meter.py [SECONDS]

The echo's edges are timed by the server, so the distance does not depend
on the network. On the virtual Pi (remoteio-server --backend mock
--mock-circuit examples/virtual_pi.circuit), move the object with
"remoteio part hcsr04_23 0.25" (metres).
"""

import sys
from time import monotonic, sleep

from gpiozero import PWMLED, DistanceSensor

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
sensor = DistanceSensor(echo=24, trigger=23, max_distance=1, queue_len=3)
led = PWMLED(13)
shown = None
deadline = monotonic() + seconds
while monotonic() < deadline:
    distance = sensor.distance
    led.value = 1 - distance        # 0 m: full brightness, 1 m or more: off
    if shown is None or abs(distance - shown) >= 0.05:
        shown = distance
        print(f'object at {distance * 100:.0f} cm: LED brightness {led.value:.2f}', flush=True)
    sleep(0.1)
# (no sensor.close() here: gpiozero's DistanceSensor closes its trigger before it
# stops its reading thread, which may then write to the closed trigger; at exit
# gpiozero stops its threads first, then closes the pins)
