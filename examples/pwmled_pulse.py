"""
Fade an LED on GPIO18 in and out (PWM), then set a fixed brightness.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 pwmled_pulse.py
"""

from gpiozero import PWMLED
from time import sleep

led = PWMLED(18)
led.pulse(fade_in_time=1, fade_out_time=1, n=2, background=False)
led.value = 0.3
sleep(0.5)
print(f'brightness read back from the Pi: {led.value:.2f}')
