"""
A push button on GPIO4 lights an LED on GPIO27 while it is held: plain gpiozero.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 button_led.py [SECONDS]

On a Pi: a button from GPIO4 to ground, an LED (with its resistor) on GPIO27.
On the virtual Pi (remoteio-server --backend mock --mock-circuit
examples/virtual_pi.circuit), press it with "remoteio part button4 on" and
release it with "remoteio part button4 off".
"""

import sys
from time import sleep

from gpiozero import LED, Button

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
button = Button(4)
led = LED(27)


def pressed():
    led.on()
    print('button pressed: LED on', flush=True)


def released():
    led.off()
    print('button released: LED off', flush=True)


button.when_pressed = pressed
button.when_released = released
sleep(seconds)
