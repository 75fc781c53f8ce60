"""
The simulated parts of the virtual Pi (mock backend only): what a circuit on a
breadboard would add to the pins.

Flow: ``remoteio part`` / protocol ``part`` → server session → pin table →
circuit (:mod:`.circuit`) → **parts** → the signals of the nets they touch.

Each part is attached on the server's command line (``--mock-part
button:4:bounce=5``) or in a circuit file (``--mock-circuit``), has a name
(``button4`` unless given with ``name=``) and one value that is set from
outside (``remoteio part button4 1``): a button's press, a sensor's
reading. The circuit asks each part what it does to the net of each GPIO it is
connected to:

- :meth:`Part.drive`: a strong driver (a closed switch, a sensor's push-pull
  output): a :class:`~remoteio_server.signals.Signal`, or None when it drives
  nothing (an open switch);
- :meth:`Part.weak`: a resistive one, which any driver overrides (the light
  sensor's resistor charging its capacitor);
- :meth:`Part.observe`: what the net now carries (the HC-SR04 watches its
  trigger); returns the GPIOs whose nets the part changes in answer.

Every time is on the server's monotonic clock.
"""

import re

from remoteio_server.signals import Signal, constant

#: Speed of sound the HC-SR04 simulation uses: gpiozero's DistanceSensor default (m/s).
SPEED_OF_SOUND = 343.26
#: From the trigger's falling edge to the echo's rise: the module's 8-cycle 40 kHz burst.
ECHO_DELAY = 0.0002
#: The echo pulse of an HC-SR04 that hears nothing (beyond its range).
ECHO_TIMEOUT = 0.038
#: The range an HC-SR04 measures (m).
HCSR04_RANGE = (0.02, 4.0)


class Part:
    """A simulated part; see the module docstring."""

    kind = None
    #: what its value means, for status and errors
    quantity = 'value'
    #: the GPIO roles in the order the spec gives them
    roles = ('pin',)

    def __init__(self, name, gpios, options):
        self.name = name
        self.gpios = dict(zip(self.roles, gpios))   # role -> gpio
        self.value = self.initial(options)
        self.changed = 0.0                          # when the value was last set

    def initial(self, options):
        return 0

    def parse(self, value):
        """The value from outside (a number), validated; ValueError else."""
        if value not in (0, 1) or isinstance(value, float) and not value.is_integer():
            raise ValueError(f'{self.name}: the {self.quantity} is 0 or 1')
        return int(value)

    def set(self, value, now):
        self.value = self.parse(value)
        self.changed = now

    def drive(self, gpio, now):
        return None

    def weak(self, gpio, now):
        return None

    def observe(self, gpio, signal, now):
        return ()

    def strong(self, gpio, signal, now):
        """What drives the net of *gpio* now (None: nothing), before the weak parts speak."""

    def status(self):
        return {'name': self.name, 'kind': self.kind,
                'pins': {role: gpio for role, gpio in self.gpios.items()},
                self.quantity: self.value}


class Button(Part):
    """
    A push button (or switch) between its GPIO and ground (``to=3v3``: the
    3.3 V rail). Pressed, it drives the GPIO to that rail; released, it drives
    nothing (the pin's pull decides). ``bounce=MS``: each press and release
    makes 5 edges over that many milliseconds (touch, 2 bounces, settled).
    """
    kind = 'button'
    quantity = 'pressed'

    def initial(self, options):
        to = options.pop('to', 'gnd').lower()
        if to not in ('gnd', '3v3'):
            raise ValueError(f'a {self.kind} connects to gnd or 3v3, not {to!r}')
        self.level = 0 if to == 'gnd' else 1
        self.bounce = _number(options.pop('bounce', '0'), 'bounce', 0, 1000) / 1000.0
        return 0

    def drive(self, gpio, now):
        settled = self.level if self.value else None
        if self.bounce and now < self.changed + self.bounce:
            # the contact chatters: pressed and released levels by turns, then settles
            # (from the first touch to the last, 5 edges: the bounce time)
            first = self.level if self.value else 1 - self.level
            steps = tuple((self.changed + self.bounce * k / 4, first if k % 2 == 0 else 1 - first)
                          for k in range(1, 5))
            return Signal(first, self.changed, None, steps)
        return None if settled is None else constant(settled, self.changed)


class Switch(Button):
    kind = 'switch'
    quantity = 'on'


class MotionSensor(Part):
    """A PIR module: its output drives the GPIO high while it sees motion."""
    kind = 'pir'
    quantity = 'motion'

    def drive(self, gpio, now):
        return constant(self.value, self.changed)


class LineSensor(Part):
    """A line follower module (TCRT5000): its output is low over a dark line, high elsewhere."""
    kind = 'line'
    quantity = 'line'

    def drive(self, gpio, now):
        return constant(0 if self.value else 1, self.changed)


class DistanceSensor(Part):
    """
    An HC-SR04 on a trigger GPIO and an echo GPIO: after each falling edge of
    the trigger it raises the echo for the time sound takes to reach an object
    at the set distance (metres) and back, as gpiozero's DistanceSensor
    expects. Beyond its range (4 m) the echo lasts 38 ms, as the module's does.
    """
    kind = 'hcsr04'
    quantity = 'distance'
    roles = ('trigger', 'echo')

    def initial(self, options):
        self._trigger = 0
        self.echo = None            # (rise, fall) of the pulse under way
        self.pings = 0
        return 1.0

    def parse(self, value):
        low, high = HCSR04_RANGE
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value <= 100.0:
            raise ValueError(f'{self.name}: the distance is in metres, from 0 to 100 '
                             f'(the module measures {low:g} to {high:g} m)')
        return float(value)

    def drive(self, gpio, now):
        if gpio != self.gpios['echo']:
            return None
        if self.echo is not None and now < self.echo[1]:
            rise, fall = self.echo
            return Signal(0, rise - ECHO_DELAY, None, ((rise, 1), (fall, 0)))
        return constant(0, self.echo[1] if self.echo else 0.0)

    def observe(self, gpio, signal, now):
        if gpio != self.gpios['trigger'] or signal.wave is not None:
            return ()
        level = signal.at(now)
        falling = self._trigger == 1 and level == 0
        self._trigger = level if level is not None else self._trigger
        if not falling or (self.echo is not None and signal.t < self.echo[1]):
            return ()           # (a trigger while the echo is up is not heard)
        low, high = HCSR04_RANGE
        rise = signal.t + ECHO_DELAY
        width = ECHO_TIMEOUT if not low <= self.value <= high else \
            2.0 * self.value / SPEED_OF_SOUND
        self.echo = (rise, rise + width)
        self.pings += 1
        return (self.gpios['echo'],)

    def status(self):
        out = super().status()
        out['pings'] = self.pings
        return out


class LightSensor(Part):
    """
    A light-dependent resistor from 3.3 V to its GPIO with a capacitor to
    ground, as gpiozero's LightSensor expects. While something drives the GPIO
    the capacitor follows it; once nothing does (the pin has become an input),
    it charges to the pin's high threshold in (1 − light) × ``charge_ms`` (10 ms
    unless given: gpiozero's default ``charge_time_limit``), so LightSensor
    reads the light level (0 dark … 1 bright).
    """
    kind = 'ldr'
    quantity = 'light'

    def initial(self, options):
        self.charge = _number(options.pop('charge_ms', '10'), 'charge_ms', 0.1, 10000) / 1000.0
        self.cap = 0                 # the capacitor's level while driven
        self.released = None         # when the drive let go (charging since)
        return 0.5

    def parse(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value <= 1.0:
            raise ValueError(f'{self.name}: the light level is a number from 0 (dark) to 1')
        return float(value)

    def strong(self, gpio, signal, now):
        if signal is not None:
            level = signal.at(now)
            if level is not None:
                self.cap = level
            self.released = None
        elif self.released is None:
            self.released = now

    def weak(self, gpio, now):
        start = self.released if self.released is not None else now
        if self.cap:
            return constant(1, start)
        charged = start + (1.0 - self.value) * self.charge
        if self.value <= 0.0:
            return constant(0, start)        # dark: never reaches the threshold
        return Signal(0, start, None, ((charged, 1),))


class Potentiometer(Part):
    """A potentiometer across Vref of a simulated MCP3008/MCP3208, its wiper on one channel."""
    kind = 'pot'
    quantity = 'position'
    roles = ()

    def __init__(self, name, gpios, options):
        super().__init__(name, (), options)

    def initial(self, options):
        self.adc = int(_number(options.pop('ce', '0'), 'ce', 0, 1))
        self.channel = int(_number(options.pop('channel', '0'), 'channel', 0, 7))
        return 0.0

    def parse(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0.0 <= value <= 1.0:
            raise ValueError(f'{self.name}: the position is a number from 0 to 1')
        return float(value)

    def status(self):
        out = super().status()
        out['adc'] = {'ce': self.adc, 'channel': self.channel}
        return out


KINDS = {cls.kind: cls for cls in (Button, Switch, MotionSensor, LineSensor, DistanceSensor,
                                    LightSensor, Potentiometer)}

_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_-]{0,31}$')


def _number(text, what, low, high):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f'{what} must be a number, not {text!r}') from None
    if not low <= value <= high:
        raise ValueError(f'{what} must be from {low:g} to {high:g}')
    return value


def _gpio(text):
    text = text.strip()
    digits = text[4:] if text.upper().startswith('GPIO') else text
    if not digits.isdigit():
        raise ValueError(f'{text!r} is not a GPIO (write 17 or GPIO17)')
    return int(digits)


def parse(text):
    """
    A part from its spec: ``KIND:GPIO[:GPIO...][:key=value...]``, e.g.
    ``button:4``, ``button:4:bounce=5:name=go``, ``hcsr04:23:24``, ``ldr:18``,
    ``pot:ce=0:channel=0``. ValueError with what to write else.
    """
    fields = [f.strip() for f in str(text).split(':') if f.strip()]
    if not fields or fields[0].lower() not in KINDS:
        raise ValueError(f'a mock part is KIND:GPIO..., KIND one of {", ".join(KINDS)}; '
                         f'not {text!r}')
    cls = KINDS[fields[0].lower()]
    gpios, options = [], {}
    for field in fields[1:]:
        if '=' in field:
            key, _, value = field.partition('=')
            options[key.strip().lower()] = value.strip()
        else:
            gpios.append(_gpio(field))
    if len(gpios) != len(cls.roles):
        roles = ':'.join(r.upper() for r in cls.roles) or '(no GPIO)'
        raise ValueError(f'a {cls.kind} is {cls.kind}:{roles}, not {text!r}')
    if len(set(gpios)) != len(gpios):
        raise ValueError(f'{text!r}: each GPIO of a part is a different one')
    # button4, ldr18; hcsr04_23 (a kind ending in a digit)
    joint = '_' if cls.kind[-1].isdigit() else ''
    name = options.pop('name', None) or (f'{cls.kind}{joint}{gpios[0]}' if gpios else None)
    if name is None:          # a potentiometer: by its channel (and CE1's)
        ce = options.get('ce', '0')
        name = f'{cls.kind}{options.get("channel", "0")}' + ('' if ce == '0' else f'_ce{ce}')
    if not _NAME.match(name):
        raise ValueError(f'a part name is a letter then up to 31 letters, digits, _ or -, '
                         f'not {name!r}')
    part = cls(name, gpios, options)
    if options:
        raise ValueError(f'{text!r}: a {cls.kind} takes no {", ".join(sorted(options))}')
    return part
