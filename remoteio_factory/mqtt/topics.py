"""
The bridge's topics and payloads: the plain layout, and Home Assistant's MQTT
discovery messages. Pure functions of the configuration (no I/O), so that the
layout is written down in one place; docs/mqtt.md describes it for people.

Flow: bridge (:mod:`.bridge`) → **topics** → broker.

Plain topics, under the base (default ``remoteio``)::

    remoteio/bridge/availability     online | offline          retained (offline: the will)
    remoteio/<server>/availability   online | offline          retained
    remoteio/<server>/<gpio>/state   ON | OFF; a light: JSON   retained
    remoteio/<server>/<gpio>/set     ON | OFF | PRESS; a light: JSON or ON/OFF/0..255
    remoteio/<server>/<gpio>/attributes   JSON (observed pins)  retained
    remoteio/<server>/<gpio>/availability online | offline (another client has the pin)

Discovery (default prefix ``homeassistant``), retained::

    homeassistant/<component>/remoteio_<server>/gpio<gpio>/config
"""

import json

from remoteio_factory._version import __version__

ON, OFF, PRESS = 'ON', 'OFF', 'PRESS'
#: An observed pin the server has never driven (Home Assistant: unknown).
UNKNOWN = 'None'
ONLINE, OFFLINE = 'online', 'offline'
#: The effects a light runs on the server (timed there, not by the bridge).
EFFECTS = ('pulse', 'blink')
#: Home Assistant's component for each role.
COMPONENT = {'switch': 'switch', 'light': 'light', 'impulse': 'button',
             'input': 'binary_sensor', 'observed': 'binary_sensor'}
ORIGIN = {'name': 'remoteio-factory', 'sw_version': __version__,
          'support_url': 'https://pypi.org/project/remoteio-factory/'}


class Topics:
    """Every topic of one bridge, from its :class:`~.config.Config`."""

    def __init__(self, config):
        self.base = config.base
        self.discovery_prefix = config.discovery
        self.bridge_availability = f'{self.base}/bridge/availability'
        #: Home Assistant says ``online`` here when it (re)starts: discovery is sent again.
        self.ha_status = f'{self.discovery_prefix}/status' if self.discovery_prefix else None

    def availability(self, server):
        return f'{self.base}/{server}/availability'

    def state(self, pin):
        return f'{self.base}/{pin.key}/state'

    def set(self, pin):
        return f'{self.base}/{pin.key}/set'

    def pin_availability(self, pin):
        """``offline`` while another client has the pin (the bridge could not claim it)."""
        return f'{self.base}/{pin.key}/availability'

    def attributes(self, pin):
        return f'{self.base}/{pin.key}/attributes'

    def set_filter(self):
        """The subscription that takes every pin's commands."""
        return f'{self.base}/+/+/set'

    def parse_set(self, topic):
        """(server, gpio) of a command topic, or None."""
        parts = topic[len(self.base) + 1:].split('/') if topic.startswith(self.base + '/') else []
        if len(parts) != 3 or parts[2] != 'set' or not parts[1].isdigit():
            return None
        return parts[0], int(parts[1])

    def discovery(self, pin):
        """The discovery topic of *pin* (None without discovery)."""
        if not self.discovery_prefix:
            return None
        return (f'{self.discovery_prefix}/{COMPONENT[pin.role]}/remoteio_{pin.server}/'
                f'gpio{pin.gpio}/config')


def unique_id(pin):
    return f'remoteio_{pin.server}_gpio{pin.gpio}'


def device(server, info=None):
    """The ``device`` block of a server's entities (*info*: its hello, once known)."""
    block = {'identifiers': [f'remoteio_{server.name}'], 'name': f'remoteio {server.name}',
             'manufacturer': 'Raspberry Pi'}
    if info:
        if info.get('model'):
            block['model'] = info['model']
        if info.get('server_version'):
            block['sw_version'] = info['server_version']
    return block


def discovery_config(topics, pin, server, info=None):
    """The discovery payload (a dict) of *pin*, on *server* (a config.Server)."""
    payload = {
        'name': pin.name,
        'unique_id': unique_id(pin),
        'device': device(server, info),
        'origin': ORIGIN,
        'availability': [{'topic': topics.bridge_availability},
                         {'topic': topics.availability(pin.server)},
                         {'topic': topics.pin_availability(pin)}],
        'availability_mode': 'all',
        'payload_available': ONLINE,
        'payload_not_available': OFFLINE,
    }
    role = pin.role
    if role == 'switch':
        payload.update(state_topic=topics.state(pin), command_topic=topics.set(pin),
                       payload_on=ON, payload_off=OFF, state_on=ON, state_off=OFF)
    elif role == 'light':
        payload.update(schema='json', state_topic=topics.state(pin),
                       command_topic=topics.set(pin), supported_color_modes=['brightness'],
                       brightness=True, brightness_scale=255, effect=True,
                       effect_list=list(EFFECTS), flash=False, transition=False)
    elif role == 'impulse':
        payload.update(command_topic=topics.set(pin), payload_press=PRESS)
    else:                                      # input, observed
        payload.update(state_topic=topics.state(pin), payload_on=ON, payload_off=OFF)
        if pin.device_class:
            payload['device_class'] = pin.device_class
        if role == 'observed':
            payload['json_attributes_topic'] = topics.attributes(pin)
    return payload


def light_state(on, brightness, effect=None):
    """A light's state payload (Home Assistant's JSON schema)."""
    state = {'state': ON if on else OFF, 'color_mode': 'brightness', 'effect': effect or None}
    if not effect:                  # (while an effect runs, its level is the effect's)
        state['brightness'] = int(brightness)
    return json.dumps(state, separators=(',', ':'))


def parse_light_command(payload):
    """
    A light command as a dict with ``state`` (``ON``/``OFF``), maybe
    ``brightness`` (0..255) and ``effect``: from Home Assistant's JSON, or
    plain ``ON``/``OFF`` or a number 0..255. ValueError when it is none of these.
    """
    text = payload.strip()
    if text.upper() in (ON, OFF):
        return {'state': text.upper()}
    if text.isdigit():
        level = int(text)
        if level > 255:
            raise ValueError('a brightness is 0..255')
        return {'state': ON if level else OFF, 'brightness': level}
    try:
        command = json.loads(text)
    except ValueError:
        raise ValueError('not ON, OFF, 0..255 or a JSON object') from None
    if not isinstance(command, dict):
        raise ValueError('not a JSON object')
    state = command.get('state')
    if not isinstance(state, str) or state.upper() not in (ON, OFF):
        raise ValueError('"state" must be "ON" or "OFF"')
    result = {'state': state.upper()}
    if 'brightness' in command:
        level = command['brightness']
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level <= 255:
            raise ValueError('"brightness" must be a number from 0 to 255')
        result['brightness'] = int(round(level))
    if 'effect' in command:
        if command['effect'] not in EFFECTS:
            raise ValueError(f'"effect" must be one of {", ".join(EFFECTS)}')
        result['effect'] = command['effect']
    return result
