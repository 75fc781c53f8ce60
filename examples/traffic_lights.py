"""
A traffic-light sequence (TrafficLights on GPIO25, 8, 7) and a two-LED board
(LEDBoard on GPIO23, 24) driven from a value source.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 traffic_lights.py
"""

from gpiozero import LEDBoard, TrafficLights
from time import sleep

lights = TrafficLights(red=25, amber=8, green=7)
board = LEDBoard(23, 24)
board.source = ((i % 2, (i + 1) % 2) for i in range(100))
for _ in range(2):
    lights.green.on()
    sleep(0.5)
    lights.green.off()
    lights.amber.on()
    sleep(0.3)
    lights.amber.off()
    lights.red.on()
    sleep(0.5)
    lights.amber.on()
    sleep(0.3)
    lights.off()
board.source = None
board.off()
