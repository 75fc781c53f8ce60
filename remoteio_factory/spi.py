"""
SPI through the remoteio server: one request per transfer.

Flow: gpiozero SPI device (``MCP3008``) → **RemoteIOSPI** → connection → wire
(``spi_open``, ``spi_transfer``, ``spi_config``, ``spi_close``) → server →
the bus's worker → the Pi's SPI (hardware SPI on the hardware bus pins, else
software SPI, bit-banged on the Pi).

The bus's pins (clock, MOSI, MISO, select) are reserved in the factory (so a
device of this script on one of them raises ``GPIOPinInUse``, as locally) and
claimed on the server as one unit (another client gets ``GPIOPinInUse``).
``close()`` releases them and waits until the server has freed them. After a
lost connection is re-established, the bus is opened again on first use.
"""

import threading

from gpiozero.exc import DeviceClosed, GPIOPinInUse, SPIBadArgs
from gpiozero.mixins import SharedMixin
from gpiozero.pins import Factory, SPI

from remoteio_factory.exc import RemoteIOConnectionError

SETTINGS = ('clock_mode', 'lsb_first', 'select_high', 'bits_per_word', 'rate')
#: The select GPIO of each device of the Pi's hardware SPI bus 0 (CE0, CE1).
HARDWARE_DEVICES = {8: 0, 7: 1}


def _gpio(pin):
    """gpiozero hands the pins over as ``'GPIO11'`` (or None for a missing MOSI/MISO)."""
    if pin is None or isinstance(pin, int):
        return pin
    return int(str(pin)[4:])


class RemoteIOSPI(SPI):
    """An SPI interface on the remote Pi; see the module docstring."""

    def __init__(self, clock_pin, mosi_pin, miso_pin, select_pin, pin_factory):
        self._connection = None
        self._settings = {}
        self._lock = threading.Lock()
        super().__init__(pin_factory=pin_factory)
        self._pins = {'clock': _gpio(clock_pin), 'mosi': _gpio(mosi_pin),
                      'miso': _gpio(miso_pin), 'select': _gpio(select_pin)}
        names = [f'GPIO{g}' for g in self._pins.values() if g is not None]
        # reserved here only: the server claims them together (spi_open), not one by one
        Factory.reserve_pins(pin_factory, self, *names)
        try:
            self._open()
        except BaseException:
            Factory.release_all(pin_factory, self)
            self._connection = None
            raise
        pin_factory._spi_buses.add(self)

    def _open(self, connection=None):
        factory = self.pin_factory
        connection = connection or factory._live_connection()
        fields = dict(self._pins)
        fields.update((k, v) for k, v in self._settings.items()
                      if k in ('clock_mode', 'lsb_first', 'select_high', 'bits_per_word', 'rate'))
        try:
            reply = connection.request('spi_open', **fields)
        except GPIOPinInUse as exc:
            raise GPIOPinInUse(f'{exc} (another client of the remoteio server)') from None
        self._connection = connection
        self._apply(reply)

    def _apply(self, reply):
        self._settings = {k: reply.get(k) for k in SETTINGS}
        self._hardware = reply.get('hardware')

    def _request(self, op, **fields):
        """A request for the bus (opened again on a new connection after a reconnect)."""
        factory = self.pin_factory
        while True:
            self._check_open()
            connection = factory._live_connection()
            try:
                if connection is not self._connection:
                    with self._lock:
                        if connection is not self._connection:
                            self._open(connection)
                return connection.request(op, bus=self._pins['select'], **fields)
            except RemoteIOConnectionError:
                if connection.broken is None or not factory._recovering():
                    raise

    # gpiozero's SPI interface ------------------------------------------------

    def transfer(self, data):
        return self._request('spi_transfer', data=[int(w) for w in data])['data']

    def read(self, n):
        return self._request('spi_transfer', count=int(n))['data']

    def write(self, data):
        return len(self.transfer(data))

    def _configure(self, name, value):
        self._apply(self._request('spi_config', **{name: value}))

    def _get_clock_mode(self):
        return self._settings['clock_mode']

    def _set_clock_mode(self, value):
        value = int(value)
        if not 0 <= value <= 3:
            raise SPIBadArgs('clock_mode must be 0, 1, 2 or 3')
        self._configure('clock_mode', value)

    def _get_lsb_first(self):
        return self._settings['lsb_first']

    def _set_lsb_first(self, value):
        self._configure('lsb_first', bool(value))

    def _get_select_high(self):
        return self._settings['select_high']

    def _set_select_high(self, value):
        self._configure('select_high', bool(value))

    def _get_bits_per_word(self):
        return self._settings['bits_per_word']

    def _set_bits_per_word(self, value):
        self._configure('bits_per_word', int(value))

    def _get_rate(self):
        return self._settings['rate']

    def _set_rate(self, value):
        self._configure('rate', value)

    # Closing -----------------------------------------------------------------

    @property
    def closed(self):
        return self._connection is None

    def _start_close(self):
        """Send the bus's close; return what the factory's release wait takes, or None."""
        with self._lock:
            connection, self._connection = self._connection, None
        if connection is None or connection.closed or connection.broken is not None:
            return None
        try:
            return self, connection, connection.send('spi_close', bus=self._pins['select'])
        except Exception:
            return None

    def close(self):
        """Release the bus's pins on the server; returns once they are free (or the timeout)."""
        factory = self.pin_factory
        pending = self._start_close()
        if pending is not None:
            factory._await_releases([pending])
        factory._spi_buses.discard(self)
        Factory.release_all(factory, self)
        super().close()

    def _conflicts_with(self, other):
        return True

    def __repr__(self):
        try:
            self._check_open()
        except DeviceClosed:
            return 'SPI(closed)'
        # gpiozero's own forms: hardware SPI by its port and device, software SPI by its pins
        pins = self._pins
        if self._hardware and pins['select'] in HARDWARE_DEVICES:
            return f'SPI(port=0, device={HARDWARE_DEVICES[pins["select"]]})'
        return 'SPI(' + ', '.join(f"{role}_pin='GPIO{gpio}'" for role, gpio in pins.items()
                                 if gpio is not None) + ')'


class RemoteIOSPIShared(SharedMixin, RemoteIOSPI):
    @classmethod
    def _shared_key(cls, clock_pin, mosi_pin, miso_pin, select_pin, pin_factory):
        # shared within one factory (one remote Pi, one client), never across factories
        return (id(pin_factory), clock_pin, select_pin)

