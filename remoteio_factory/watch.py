"""
``remoteio watch``: a live picture of the server's 40-pin header.

Flow: **watch** → observation (:mod:`.observe`: the ``observe`` request, a
snapshot, then the server's pushes as the pins change) → a picture of the
header, drawn with rich (the optional ``watch`` extra), at most a few times a
second.

Every pin of the header is shown where it sits on the board: its physical
number and name, and for a GPIO its owner (client id), function, and level
(high/low) or PWM duty cycle as a bar.
"""

import time

from gpiozero.pins.pi import PiBoardInfo

from remoteio_factory.connection import Connection
from remoteio_factory.exc import RemoteIOConnectionError
from remoteio_factory.observe import Observation

BAR_WIDTH = 6
FUNCTION_LABEL = {'output': 'out', 'input': 'in'}


def header_rows(revision):
    """``[(left PinInfo, right PinInfo), ...]`` of the board's main header (J8 or P1)."""
    board = PiBoardInfo.from_revision(int(revision, 16))
    name = 'J8' if 'J8' in board.headers else 'P1'
    header = board.headers[name]
    by_position = {(info.row, info.col): info for info in header.pins.values()}
    return name, [(by_position.get((row, 1)), by_position.get((row, 2)))
                  for row in range(1, header.rows + 1)]


def level_text(pin):
    """The level of a pin's status entry as text: a bar for PWM."""
    from rich.text import Text
    state = pin.get('state')
    if state is None:
        return Text('')
    if pin.get('frequency'):
        filled = round(float(state) * BAR_WIDTH)
        return Text.assemble(('█' * filled, 'yellow'), ('░' * (BAR_WIDTH - filled), 'grey50'),
                             f' {float(state):.2f}')
    if state:
        return Text('■ high', style='bold green')
    return Text('□ low', style='grey62')



def picture(status, title):
    """A rich Table of the header, from a status dict."""
    from rich import box
    from rich.table import Table
    from rich.text import Text
    pins = {p['gpio']: p for p in status['pins'] if p['status'] in ('claimed', 'releasing')}
    header, rows = header_rows(status['board']['revision'])
    caption = f'{header}: pin 1 top left; owner: client id (see remoteio status)'
    parts = parts_line(status)
    if parts:
        caption += '\n' + parts
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), caption=caption,
                  caption_style='grey50')
    for name, justify, width in (('who', 'right', 3), ('fn', 'right', 3), ('level', 'right', 11),
                                 ('name', 'right', 6), ('pin', 'right', 2), ('pin', 'left', 2),
                                 ('name', 'left', 6), ('level', 'left', 11), ('fn', 'left', 3),
                                 ('who', 'left', 3)):
        table.add_column(name, justify=justify, no_wrap=True, min_width=width)

    def cells(info):
        if info is None:
            return ['', '', '', '']
        if 'gpio' not in info.interfaces:
            style = 'red' if info.name in ('5V', '3V3') else 'grey42'
            return ['', '', '', Text(info.name, style=style)]
        entry = pins.get(int(info.name[4:]))
        if entry is None:
            return ['', '', Text('free', style='grey42'), Text(info.name, style='cyan')]
        owner = f'#{entry["owner"]}' + ('…' if entry['status'] == 'releasing' else '')
        return [owner, FUNCTION_LABEL.get(entry.get('function'), entry.get('function') or ''),
                level_text(entry), Text(info.name, style='bold cyan')]

    for left, right in rows:
        l_owner, l_fn, l_level, l_name = cells(left)
        r_owner, r_fn, r_level, r_name = cells(right)
        table.add_row(l_owner, l_fn, l_level, l_name, str(left.number) if left else '',
                      str(right.number) if right else '', r_name, r_level, r_fn, r_owner)
    return table


def parts_line(status):
    """The virtual Pi's parts and their values, one line (empty without any)."""
    circuit = status.get('circuit') or {}
    cells = []
    for part in circuit.get('parts', ()):
        fixed = ('name', 'kind', 'pins', 'adc', 'pings')
        values = ' '.join(f'{k}={v:g}' if isinstance(v, float) else f'{k}={v}'
                          for k, v in part.items() if k not in fixed)
        cells.append(f'{part["name"]} {values}')
    shorts = [n for n in circuit.get('nets', ()) if n.get('short')]
    if shorts:
        cells.append(f'SHORT CIRCUIT on {len(shorts)} net{"s" if len(shorts) > 1 else ""}')
    return ('parts: ' + ' · '.join(cells)) if cells else ''


def title_of(status, host, port):
    board = status['board']
    clients = len(status['clients'])
    return (f'{host}:{port} · {status["backend"]} · Pi {board["model"]} · {clients} client'
            f'{"" if clients == 1 else "s"} · {time.strftime("%H:%M:%S")}')


def watch(host, port, interval=0.2, once=False, tls=None):
    """
    Draw the header until Ctrl+C (or once). It observes the server (the
    ``observe`` request: a snapshot, then the server pushes each change), so
    it asks the pins' workers nothing after the first picture.
    """
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        raise SystemExit("remoteio watch needs the rich library: "
                         "pip install 'remoteio-factory[watch]'") from None
    console = Console()
    if once:
        connection = Connection(host, port, tls=tls)
        try:
            status = connection.request('status', history=0)
            console.print(picture(status, title_of(status, host, port)))
        finally:
            connection.close()
        return
    seen = Observation(host, port, history=0, tls=tls)
    try:
        status = seen.status()
        with Live(picture(status, title_of(status, host, port)), console=console,
                  refresh_per_second=max(1, round(1 / interval)), screen=False) as live:
            while True:
                seen.wait_changes(interval)
                if seen.connection.broken is not None:
                    live.update(f'[red]connection lost: {seen.connection.broken}[/red]; '
                                f'retrying…')
                    seen.close()
                    seen = _reconnect(host, port, tls, interval)
                status = seen.status()
                live.update(picture(status, title_of(status, host, port)))
    except KeyboardInterrupt:
        pass
    finally:
        seen.close()


def _reconnect(host, port, tls, interval):
    delay = interval
    while True:
        try:
            return Observation(host, port, history=0, tls=tls)
        except RemoteIOConnectionError:
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
