"""
Beep a buzzer on GPIO5 three times, and switch a relay (an OutputDevice,
active low) on GPIO6.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 buzzer.py
"""

from gpiozero import Buzzer, OutputDevice
from time import sleep

buzzer = Buzzer(5)
relay = OutputDevice(6, active_high=False, initial_value=False)
buzzer.beep(on_time=0.1, off_time=0.2, n=3, background=False)
relay.on()
sleep(0.5)
relay.off()
