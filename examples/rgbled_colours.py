"""
Cycle an RGB LED (GPIO9, 10, 11) through a few colours, then pulse it.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 rgbled_colours.py
"""

from gpiozero import RGBLED
from colorzero import Color
from time import sleep

led = RGBLED(red=9, green=10, blue=11)
for name in ('red', 'orange', 'green', 'blue', 'purple'):
    led.color = Color(name)
    sleep(0.4)
led.pulse(fade_in_time=0.5, fade_out_time=0.5, on_color=(0, 1, 1), n=1, background=False)
led.off()
