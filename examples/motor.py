"""
Drive a motor on GPIO20 (forward) and GPIO21 (backward) at a few speeds.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 motor.py
"""

from gpiozero import Motor
from time import sleep

motor = Motor(forward=20, backward=21)
for speed in (0.25, 0.5, 1.0):
    motor.forward(speed)
    sleep(0.5)
motor.backward(0.5)
sleep(0.5)
motor.stop()
print('motor stopped; is_active =', motor.is_active)
