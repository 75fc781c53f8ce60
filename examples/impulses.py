"""
Impulses and timed sequences run by the server (the reason remoteio exists):
the client sends one message per task and the server's pin worker does the
timing, so it does not depend on the network.

    REMOTEIO_HOST=my-pi python3 impulses.py

Shows the seed API (RemoteServer) and the drop-in gpiozero LED/PWMLED with
``time_ms``.
"""

import os

from remoteio_factory import LED, PWMLED, RemoteIOFactory, RemoteServer

host = os.environ.get('REMOTEIO_HOST', 'localhost')
port = int(os.environ.get('REMOTEIO_PORT', 8509))

# The seed's API: board numbering, tasks queued on the server (wait mode).
remote = RemoteServer(host, port)
valve = remote.pin(13, 'b')                     # physical pin 13 = GPIO27
valve.on(time_ms=150)                           # a 150 ms impulse
valve.off(time_ms=100)                          # then hold off for 100 ms
valve.blink(time_ms=600, arg1=0.05, arg2=0.1)   # then blink for 0.6 s
done = valve.value(time_ms=300, arg1=1)         # then on for 0.3 s
print('all four tasks accepted; the server runs them one after another')
print('last task:', done.wait())                # wait for the end
remote.close()

# gpiozero's own LED and PWMLED, with time_ms added.
factory = RemoteIOFactory(host=host, port=port)
led = LED(17, pin_factory=factory)
led.on(time_ms=200)                              # impulse, timed on the server
led.blink(on_time=0.05, off_time=0.05, time_ms=500, background=False)
lamp = PWMLED(18, pin_factory=factory)
lamp.pulse(fade_in_time=0.3, fade_out_time=0.3, n=2, background=False)
lamp.set_value(0.5, time_ms=200)
print('lamp at', lamp.value)
factory.close()
