"""
SPI through the server: unmodified gpiozero MCP3008/MCP3208 on simulated ADCs
(``--mock-spi``), one request per transfer, ownership of the bus's pins.
"""

import json
import signal
import subprocess
import sys

import pytest
from gpiozero import MCP3008, MCP3208
from gpiozero.exc import GPIOPinInUse

from conftest import start_script
from remoteio_factory.exc import RemoteIOError

SPI_PINS = (8, 9, 10, 11)


def adc(server, channel, value, device='mcp3008:0'):
    subprocess.run([sys.executable, '-m', 'remoteio_factory.cli', 'adc', str(channel), str(value),
                    '--device', device, '--host', server.host, '--port', str(server.port)],
                   check=True, capture_output=True, timeout=30)


def set_channel(factory, channel, value, device=8):
    factory._connection.request('set_channel', device=device, channel=channel, value=value)


@pytest.fixture
def spi_server(fresh_server):
    return fresh_server('--mock-spi', 'mcp3008:0', '--mock-spi', 'mcp3208:1')


def test_mcp3008_reads_every_channel(spi_server):
    factory = spi_server.factory()
    try:
        values = [0.0, 0.1, 0.25, 0.5, 0.6, 0.75, 0.9, 1.0]
        for channel, value in enumerate(values):
            set_channel(factory, channel, value)
        for channel, value in enumerate(values):
            with MCP3008(channel=channel, pin_factory=factory) as device:
                code = min(1023, int(value * 1024))
                assert device.raw_value == code
                assert device.value == pytest.approx((2 * code + 1) / 2047)
    finally:
        factory.close()


def test_cli_sets_a_channel_and_differential_mode(spi_server):
    adc(spi_server, 0, 0.75)
    adc(spi_server, 1, 0.25)
    adc(spi_server, 2, 0.5)
    adc(spi_server, 3, 0.0)
    factory = spi_server.factory()
    try:
        with MCP3008(channel=0, pin_factory=factory) as device:
            assert device.raw_value == 768
        # differential: channel 0 is CH0 - CH1, channel 1 is CH1 - CH0 (clamped at 0)
        with MCP3008(channel=0, differential=True, pin_factory=factory) as device:
            assert device.raw_value == 512
        with MCP3008(channel=1, differential=True, pin_factory=factory) as device:
            assert device.raw_value == 0
        with MCP3008(channel=2, differential=True, pin_factory=factory) as device:
            assert device.raw_value == 512
        with MCP3008(channel=3, differential=True, pin_factory=factory) as device:
            assert device.raw_value == 0
        # a value set while the bus is open is read at once
        device = MCP3008(channel=5, pin_factory=factory)
        assert device.raw_value == 0
        adc(spi_server, 5, 0.3)
        assert device.raw_value == int(0.3 * 1024)
        device.close()
    finally:
        factory.close()


def test_mcp3208_on_ce1(spi_server):
    factory = spi_server.factory()
    try:
        for channel in range(8):
            set_channel(factory, channel, channel / 8 + 0.01, device=7)
        for channel in range(8):
            with MCP3208(channel=channel, select_pin=7, pin_factory=factory) as device:
                assert device.raw_value == int((channel / 8 + 0.01) * 4096)
        with MCP3208(channel=4, differential=True, select_pin=7, pin_factory=factory) as device:
            assert device.raw_value == 0             # CH4 - CH5 < 0: clamped
        with MCP3208(channel=5, differential=True, select_pin=7, pin_factory=factory) as device:
            assert abs(device.raw_value - 4096 // 8) <= 1
        # nothing on CE0's MCP3008 changes
        with MCP3008(channel=0, pin_factory=factory) as device:
            assert device.raw_value == 0
    finally:
        factory.close()


def test_one_request_per_sample(spi_server):
    factory = spi_server.factory()
    try:
        set_channel(factory, 0, 0.5)
        device = MCP3008(channel=0, pin_factory=factory)
        connection = factory._connection
        sent = []
        original = connection._send

        def counting(message):
            sent.append(message.get('op'))
            return original(message)
        connection._send = counting
        before = spi_server.pin(11)['spi']['transfers']
        for _ in range(50):
            assert device.raw_value == 512
        connection._send = original
        assert spi_server.pin(11)['spi']['transfers'] - before == 50
        assert sent == ['spi_transfer'] * 50
        device.close()
    finally:
        factory.close()


def test_bus_in_use_by_another_client_and_status(spi_server):
    first = spi_server.factory()
    second = spi_server.factory()
    try:
        device = MCP3008(channel=0, pin_factory=first)
        with pytest.raises(GPIOPinInUse):
            MCP3008(channel=0, pin_factory=second)
        from gpiozero import LED
        with pytest.raises(GPIOPinInUse):
            LED(11, pin_factory=second)
        with pytest.raises(GPIOPinInUse):       # this client's own bus, as locally
            LED(10, pin_factory=first)
        out = subprocess.run(
            [sys.executable, '-m', 'remoteio_factory.cli', 'status', '--json',
             '--host', spi_server.host, '--port', str(spi_server.port)],
            check=True, capture_output=True, text=True, timeout=30).stdout
        status = json.loads(out)
        pins = {p['gpio']: p for p in status['pins']}
        owner = first._connection.hello['session']
        roles = {}
        for gpio in SPI_PINS:
            assert pins[gpio]['status'] == 'claimed'
            assert pins[gpio]['owner'] == owner
            assert pins[gpio]['function'] == 'spi'
            roles[gpio] = pins[gpio]['spi']['role']
        assert roles == {8: 'select', 9: 'miso', 10: 'mosi', 11: 'clock'}
        client = next(c for c in status['clients'] if c['id'] == owner)
        assert set(SPI_PINS) <= set(client['pins'])
        device.close()
        # close() waits until the server has freed the pins: the other client gets them at once
        other = MCP3008(channel=0, pin_factory=second)
        other.close()
    finally:
        first.close()
        second.close()
    spi_server.wait_free(*SPI_PINS)


def test_sigkill_frees_the_bus(spi_server):
    process = start_script(spi_server, """
        from gpiozero import MCP3008
        import sys
        device = MCP3008(channel=0)
        device.value
        print('ready', flush=True)
        sys.stdin.read()
    """)
    try:
        pins = {p['gpio']: p for p in spi_server.status()['pins']}
        assert all(pins[g]['status'] == 'claimed' for g in SPI_PINS)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        entries = spi_server.wait_free(*SPI_PINS, timeout=15)
        assert all(not e.get('died') for e in entries)
    finally:
        process.kill()
        process.wait()
    factory = spi_server.factory()
    try:
        with MCP3008(channel=0, pin_factory=factory) as device:
            assert device.raw_value == 0
    finally:
        factory.close()


def test_spi_settings_and_raw_transfers(spi_server):
    factory = spi_server.factory()
    try:
        set_channel(factory, 2, 0.5)
        spi = factory.spi(port=0, device=0)
        try:
            assert spi.clock_mode == 0 and spi.bits_per_word == 8
            assert not spi.lsb_first and not spi.select_high
            # gpiozero's MCP3008 command for channel 2, sent by hand
            assert spi.transfer([0x01, 0xA0, 0x00]) == [0x00, 0x02, 0x00]
            spi.clock_mode = 3
            assert spi.clock_mode == 3
            assert spi.read(3) == [0, 0, 0]            # no start bit: the chip says nothing
            assert spi.write([0x01, 0xA0, 0x00]) == 3
            spi.bits_per_word = 12                     # the same 24 bits in two words
            assert spi.transfer([0x01A, 0x000]) == [0x000, 0x200]
            spi.bits_per_word = 8
            spi.select_high = True                     # the chip's CS is active low
            assert spi.transfer([0x01, 0xA0, 0x00]) == [0, 0, 0]
        finally:
            spi.close()
        spi_server.wait_free(*SPI_PINS)
    finally:
        factory.close()


def test_set_channel_errors(spi_server, fresh_server):
    factory = spi_server.factory()
    try:
        with pytest.raises(RemoteIOError, match='no mock SPI device'):
            set_channel(factory, 0, 0.5, device=17)
        with pytest.raises(RemoteIOError, match="'channel'"):
            set_channel(factory, 8, 0.5)
        with pytest.raises(Exception, match="'value'"):
            set_channel(factory, 0, 1.5)
    finally:
        factory.close()
    plain = fresh_server()
    factory = plain.factory()
    try:
        with pytest.raises(RemoteIOError, match='no mock SPI device'):
            set_channel(factory, 0, 0.5)
        # without a simulated device the bus works and reads nothing
        with MCP3008(channel=0, pin_factory=factory) as device:
            assert device.raw_value == 0
    finally:
        factory.close()
