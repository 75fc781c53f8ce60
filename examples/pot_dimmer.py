"""
A potentiometer read through an MCP3008 ADC dims an LED on GPIO12: plain gpiozero.

    GPIOZERO_PIN_FACTORY=remoteio REMOTEIO_HOST=my-pi python3 pot_dimmer.py [SECONDS]

On a Pi: an MCP3008 on SPI bus 0 (CE0), the potentiometer's wiper on its
channel 0, an LED on GPIO12. Each MCP3008 reading is one round trip: the
server runs the SPI transfer. On the virtual Pi (remoteio-server --backend
mock --mock-circuit examples/virtual_pi.circuit), turn the knob with
"remoteio part pot0 0.7".
"""

import sys
from time import monotonic, sleep

from gpiozero import MCP3008, PWMLED

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10
pot = MCP3008(channel=0)
led = PWMLED(12)
shown = None
deadline = monotonic() + seconds
while monotonic() < deadline:
    led.value = pot.value          # (led.source = pot does the same, in a thread of its own)
    if shown is None or abs(led.value - shown) >= 0.1:
        shown = led.value
        print(f'potentiometer at {pot.value:.2f}: LED brightness {led.value:.2f}', flush=True)
    sleep(0.05)
