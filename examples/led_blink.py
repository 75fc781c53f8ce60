"""
Blink an LED on GPIO17 of the remote Pi: plain gpiozero, nothing remote in it.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 led_blink.py
"""

from gpiozero import LED
from time import sleep

led = LED(17)
led.blink(on_time=0.25, off_time=0.25)
sleep(4)
led.off()
