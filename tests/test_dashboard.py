"""
The browser dashboard (--http): the real page in headless Chromium (Debian's
package, driven by Playwright), against a real server and gpiozero clients.

Each test checks what a person would see or do: a client's LED shows on the
page within 0.5 s; a click on a mock input fires a client's Button; a
read-only token sees but cannot drive; a blink's edges are on the timeline.
A screenshot of the page is saved in tests/artifacts/.
"""

import os
import shutil
import time

import pytest
from gpiozero import LED, Button

from conftest import ServerProcess, wait_for
from test_security import NETNS_HOST, netns  # noqa: F401 (a fixture)

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
ARTIFACTS = os.path.join(os.path.dirname(__file__), 'artifacts')
#: Chromium as root, offline, in a sandbox of its own making.
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync']

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason='Chromium is not installed '
                                '(.ci/run installs Debian\'s chromium package)')


@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope='module')
def board():
    proc = ServerProcess('--http', '0', '--mock-wire', '5:6')
    proc.dashboard = proc.ready_line.split('dashboard=')[1].split()[0]
    yield proc
    proc.stop()


def open_page(browser, url):
    page = browser.new_page(viewport={'width': 1400, 'height': 900})
    page.goto(url)
    return page


def until(page, expression, timeout=5.0):
    """
    Wait until *expression* (JavaScript) is true in the page. Evaluated through
    the DevTools protocol, not in the page: the page's Content-Security-Policy
    forbids eval, as it should, and Playwright's own wait_for_function uses it.
    The page draws on its next animation frame: an element may not be there yet
    (hence ``?.`` in the expressions that look for one).
    """
    wait_for(lambda: page.evaluate(expression), timeout=timeout, interval=0.02,
             message=expression)


def level_of(page, gpio):
    return page.locator(f'td.level[data-gpio="{gpio}"]').inner_text()


def test_an_led_turned_on_by_a_client_shows_within_half_a_second(browser, board):
    page = open_page(browser, board.dashboard)
    factory = board.factory()
    try:
        until(page, 'window.remoteioState && window.remoteioState.status !== null')
        led = LED(17, pin_factory=factory)
        started = time.monotonic()
        led.on()
        until(page, "document.querySelector('td.level[data-gpio=\"17\"]')?.innerText.includes('high')", timeout=2.0)
        assert time.monotonic() - started < 0.5
        os.makedirs(ARTIFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTIFACTS, 'dashboard.png'), full_page=True)
        led.off()
        until(page, "document.querySelector('td.level[data-gpio=\"17\"]')?.innerText.includes('low')", timeout=2.0)
    finally:
        factory.close()
        page.close()


def test_a_click_on_a_mock_input_fires_a_clients_button(browser, board):
    factory = board.factory()
    page = open_page(browser, board.dashboard)
    try:
        button = Button(22, pin_factory=factory)      # pull-up: pressed when driven low
        presses = []
        button.when_pressed = lambda: presses.append(time.monotonic())
        page.wait_for_selector('button[data-drive="22"][data-state="0"]')
        page.click('button[data-drive="22"][data-state="0"]')
        wait_for(lambda: presses, timeout=5, message='when_pressed')
        page.click('button[data-drive="22"][data-state=""]')     # let go: the pull-up again
        wait_for(lambda: not button.is_pressed, timeout=5, message='the release')
        button.close()
    finally:
        factory.close()
        page.close()


def test_the_timeline_shows_a_blinks_edges(browser, board):
    factory = board.factory()
    page = open_page(browser, board.dashboard)
    try:
        until(page, 'window.remoteioState && window.remoteioState.status !== null')
        led = LED(27, pin_factory=factory)
        led.blink(on_time=0.1, off_time=0.1, n=4, background=False)
        until(page, '(window.remoteioState.traces[27] || []).length >= 8', timeout=3.0)
        trace = page.evaluate('window.remoteioState.traces[27]')
        levels = [level for _, level in trace]
        assert levels[-8:] == [1, 0] * 4
        times = [t for t, _ in trace][-8:]
        assert all(0.05 < b - a < 0.3 for a, b in zip(times, times[1:]))   # the server's times
        led.close()
    finally:
        factory.close()
        page.close()


def test_a_read_only_token_sees_but_cannot_drive(browser, tmp_path):
    tokens = tmp_path / 'tokens'
    tokens.write_text('viewer the_teacher_looks_touches_nothing all ro\n'
                      'writer the_group_that_drives_the_pins all rw\n')
    proc = ServerProcess('--http', '0', '--tokens', str(tokens))
    url = proc.ready_line.split('dashboard=')[1].split()[0]
    factory = proc.factory(token='the_group_that_drives_the_pins')
    page = open_page(browser, url)
    try:
        page.wait_for_selector('#login', state='visible')
        page.fill('#secret', 'not the token at all, no')
        page.click('#login button')
        until(page, "document.getElementById('error').innerText.includes('wrong token')")
        page.fill('#secret', 'the_teacher_looks_touches_nothing')
        page.click('#login button')
        until(page, 'window.remoteioState && window.remoteioState.status !== null')
        led = LED(17, pin_factory=factory)
        led.on()
        until(page, "document.querySelector('td.level[data-gpio=\"17\"]')?.innerText.includes('high')")
        assert page.locator('button[data-drive]').count() == 0      # no controls
        status = page.evaluate("""async () => (await fetch('/api/drive', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({pin: 22, state: 0})})).status""")
        assert status == 403
        assert 'read-only' in page.locator('#facts').inner_text()
    finally:
        page.close()
        factory.close()
        proc.stop()


def test_without_a_token_only_this_machine_is_served(netns):
    """The protected-mode rule, from another machine (a network namespace of the test's own)."""
    import subprocess
    import sys
    import textwrap
    proc = ServerProcess('--host', '0.0.0.0', '--http', '0')
    try:
        port = proc.ready_line.split('dashboard=')[1].split(':')[2].rstrip('/ \n')
        code = textwrap.dedent(f"""
            import urllib.request, urllib.error
            for path in ('/', '/api/info', '/events'):
                try:
                    urllib.request.urlopen('http://{NETNS_HOST}:{port}' + path, timeout=10)
                    print(path, 'served')
                except urllib.error.HTTPError as exc:
                    print(path, exc.code, exc.read().decode()[:200])
        """)
        result = subprocess.run(['ip', 'netns', 'exec', netns, sys.executable, '-c', code],
                                capture_output=True, text=True, timeout=60)
        lines = result.stdout.splitlines()
        assert len(lines) == 3 and all(' 403 ' in line and 'protected mode' in line
                                       for line in lines), result.stdout + result.stderr
    finally:
        proc.stop()


def test_a_flood_of_idle_connections_costs_a_few_seconds_at_most(board):
    """Idle connections hold a slot for the request timeout at most; the server serves on."""
    import socket
    import urllib.request
    def threads():
        return len(os.listdir(f'/proc/{board.pid}/task'))
    before = threads()
    socks = [socket.create_connection(('127.0.0.1', int(board.dashboard.rsplit(':', 1)[1]
                                                             .strip('/'))), timeout=10)
             for _ in range(150)]
    try:
        started = time.monotonic()
        wait_for(lambda: threads() >= before + 20, timeout=5, message='threads for the idle ones')
        from remoteio_server.dashboard import MAX_CONNECTIONS
        assert threads() <= before + MAX_CONNECTIONS + 2   # one per connection served, bounded

        def served():
            try:
                with urllib.request.urlopen(board.dashboard + 'api/info', timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False
        wait_for(served, timeout=15, interval=0.2, message='the dashboard to serve again')
        assert time.monotonic() - started < 8
        assert board.alive()
    finally:
        for sock in socks:
            sock.close()


# Hostile peers (no browser needed) ---------------------------------------------------------

def raw_request(url, data, timeout=10):
    """Send *data* (bytes) to the dashboard at *url*; the reply's bytes (b'' if closed)."""
    import socket
    port = int(url.rsplit(':', 1)[1].strip('/'))
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError:
            pass
        return b''.join(chunks)


def test_a_trickling_request_is_cut_off_at_its_deadline(board):
    """One header byte a second: the connection is ended after the 5 s deadline, not held."""
    import socket
    port = int(board.dashboard.rsplit(':', 1)[1].strip('/'))
    sock = socket.create_connection(('127.0.0.1', port), timeout=20)
    try:
        started = time.monotonic()
        sock.sendall(b'GET /api/info HTTP/1.1\r\n')
        closed = False
        for _ in range(20):
            try:
                sock.sendall(b'X')
                if sock.recv(1, socket.MSG_DONTWAIT) == b'':
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            time.sleep(1)                              # (the trickle itself)
        assert closed and time.monotonic() - started < 8
    finally:
        sock.close()


@pytest.mark.parametrize('length', [b'-1', b'abc', b'100000'])
def test_a_bad_content_length_is_refused_without_reading(board, length):
    reply = raw_request(board.dashboard, b'POST /api/drive HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                        b'Content-Type: application/json\r\nContent-Length: ' + length +
                        b'\r\n\r\n' + b'x' * 1000)
    assert reply.startswith(b'HTTP/1.1 400'), reply[:100]
    assert board.alive()


def test_protected_mode_refuses_other_host_names(board):
    """DNS rebinding: a page of another site resolved to 127.0.0.1 must not get in."""
    for headers in (b'Host: attacker.example\r\n', b'Host: 127.0.0.1\r\nOrigin: http://evil.test\r\n'):
        reply = raw_request(board.dashboard, b'GET /api/info HTTP/1.1\r\n' + headers + b'\r\n')
        assert reply.startswith(b'HTTP/1.1 403') and b'protected mode' in reply, reply[:200]
    reply = raw_request(board.dashboard, b'GET /api/info HTTP/1.1\r\nHost: localhost:1\r\n\r\n')
    assert reply.startswith(b'HTTP/1.1 200'), reply[:100]


def test_with_tls_a_silent_peer_does_not_stall_the_dashboard(tmp_path):
    import socket
    import ssl
    import subprocess
    from test_security import make_certificate
    try:
        cert, key = make_certificate(tmp_path, 'server')
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f'openssl cannot make test certificates here: {exc}')
    proc = ServerProcess('--http', '0', '--tls-cert', str(cert), '--tls-key', str(key))
    url = proc.ready_line.split('dashboard=')[1].split()[0]
    port = int(url.rsplit(':', 1)[1].strip('/'))
    silent = socket.create_connection(('127.0.0.1', port))     # no handshake, ever
    try:
        context = ssl.create_default_context(cafile=str(cert))
        started = time.monotonic()
        with socket.create_connection(('127.0.0.1', port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname='localhost') as tls:
                tls.sendall(b'GET /api/info HTTP/1.1\r\nHost: localhost\r\n\r\n')
                assert tls.recv(12) == b'HTTP/1.1 200'
        assert time.monotonic() - started < 2
    finally:
        silent.close()
        proc.stop()
