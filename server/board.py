"""
The board the server drives, as plain data: its model and its headers.

Flow: probe process (gpiozero's ``PiBoardInfo``: :func:`describe`) → pipe →
server's main process (**Board**) → status, the pin table's GPIO names, the
virtual Pi's fixed pulls, the dashboard's header.

The server's main process never imports gpiozero: a backend is only ever
opened in the worker processes, and gpiozero with its dependencies would be
some 8 MiB of the main process's private memory for a few names and numbers.
The throw-away probe process that resolves the backend (:mod:`.backends`)
describes the board with gpiozero, as JSON; :class:`Board` is that
description.
"""

from typing import Dict, List, NamedTuple, Optional, Tuple

#: The fields of gpiozero's PiBoardInfo that the server reports (``status``'s ``board``).
SUMMARY = ('revision', 'model', 'pcb_revision', 'released', 'soc', 'manufacturer', 'memory')


class HeaderPin(NamedTuple):
    """One position on a header, as gpiozero's PinInfo names it."""
    number: int                 # the physical pin number on its header
    name: str                   # 'GPIO17', '5V', 'GND', ...
    row: int
    col: int
    pull: str                   # 'up' for a fixed physical pull-up (GPIO2, GPIO3), else ''
    gpio: Optional[int]         # the GPIO number, or None for a power or ground pin


class Header(NamedTuple):
    name: str                   # 'J8', 'P1', 'P5', ...
    rows: int
    columns: int
    pins: Tuple[HeaderPin, ...]


def describe(board_info):
    """gpiozero's ``PiBoardInfo`` → a JSON-able description (in a process that has gpiozero)."""
    headers = []
    for header in board_info.headers.values():
        pins = [[info.number, info.name, info.row, info.col, info.pull or '',
                 'gpio' in info.interfaces]
                for info in header.pins.values()]
        headers.append([header.name, header.rows, header.columns, pins])
    summary = {field: getattr(board_info, field) for field in SUMMARY}
    return {'summary': summary, 'headers': headers}


class Board:
    """The description :func:`describe` made, in the server's main process."""

    def __init__(self, description):
        self.summary = dict(description['summary'])
        self.revision = self.summary['revision']
        self.model = self.summary['model']
        self.headers: Dict[str, Header] = {}
        for name, rows, columns, pins in description['headers']:
            self.headers[name] = Header(name, rows, columns, tuple(
                HeaderPin(number, pin_name, row, col, pull,
                          int(pin_name[4:]) if is_gpio else None)
                for number, pin_name, row, col, pull, is_gpio in pins))

    def _gpio_pins(self):
        for header in self.headers.values():
            for pin in header.pins:
                if pin.gpio is not None:
                    yield pin

    def gpios(self):
        """``{gpio_number: 'GPIO17', ...}`` for every GPIO on the board's headers."""
        return {pin.gpio: pin.name for pin in self._gpio_pins()}

    def fixed_pulls(self):
        """``{gpio_number: 'up'}`` for the GPIOs with a physical pull-up (GPIO2, GPIO3)."""
        return {pin.gpio: 'up' for pin in self._gpio_pins() if pin.pull == 'up'}

    def main_header(self) -> Tuple[str, List[Tuple[Optional[HeaderPin], Optional[HeaderPin]]]]:
        """The 40- or 26-pin header (J8 or P1): its name and its rows of (left, right) pins."""
        name = 'J8' if 'J8' in self.headers else 'P1'
        header = self.headers[name]
        by_position = {(pin.row, pin.col): pin for pin in header.pins}
        return name, [(by_position.get((row, 1)), by_position.get((row, 2)))
                      for row in range(1, header.rows + 1)]
