"""
The bridge's configuration file (TOML): the broker, the remoteio servers and
the pins to expose, each with its role. Read and checked here, once, before
anything connects; every mistake is reported with where it is and what to
write instead.

Flow: **config** → bridge (:mod:`.bridge`) → broker and servers.

::

    [broker]
    host = "localhost"          # the MQTT broker
    port = 1883                 # default 1883, or 8883 with tls
    username = "remoteio"       # optional, with password or password_file
    password_file = "/etc/remoteio/mqtt-password"
    tls = false                 # true: TLS (ca_file: a private CA's certificate)

    [topics]
    base = "remoteio"           # plain topics: remoteio/<server>/<gpio>/state ...
    discovery = "homeassistant" # Home Assistant's discovery prefix; "" for none

    [servers.garage]            # a remoteio server, by a name of your choice
    host = "garage-pi.local"
    port = 8509
    token_file = "/etc/remoteio/garage.token"   # its token, if it has one

    [[pins]]
    server = "garage"
    gpio = 17
    role = "switch"             # switch, light, impulse, input or observed
    name = "Garage light"

The roles (options in brackets):

``switch``
    A digital output (Home Assistant: ``switch``), ``ON``/``OFF``. [``active_high``]
``light``
    A PWM output (``light``, JSON schema, with brightness and the effects
    ``pulse`` and ``blink``, both timed on the server). [``frequency`` in Hz,
    default 100; ``active_high``; ``fade_ms``, the pulse's fade, default 1000;
    ``blink_ms``, default 500]
``impulse``
    A timed impulse (``button``): each press runs ``on(time_ms)`` on the server.
    [``time_ms``, default 500; ``active_high``]
``input``
    A digital input (``binary_sensor``): ``ON`` while active. [``pull``: ``up``,
    ``down`` or ``floating``, default ``up``; ``active_high`` (with ``floating``
    only; else the pull decides, as gpiozero's); ``bounce_ms``;
    ``device_class``]
``observed``
    Any pin of the server, driven by another client or by nobody: read only,
    never claimed (``binary_sensor`` of its level, with its function, duty,
    frequency and owner as attributes). [``device_class``]
"""

import os
import re
import socket
import sys
from typing import Dict, List, NamedTuple, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:                                   # pragma: no cover - Python 3.9, 3.10
    import tomli as tomllib

ROLES = ('switch', 'light', 'impulse', 'input', 'observed')
#: Home Assistant's binary sensor classes (it refuses a discovery message with another).
DEVICE_CLASSES = ('battery', 'battery_charging', 'carbon_monoxide', 'cold', 'connectivity',
                  'door', 'garage_door', 'gas', 'heat', 'light', 'lock', 'moisture', 'motion',
                  'moving', 'occupancy', 'opening', 'plug', 'power', 'presence', 'problem',
                  'running', 'safety', 'smoke', 'sound', 'tamper', 'update', 'vibration',
                  'window')
#: Server names taken by the bridge's own topics (remoteio/bridge/availability).
RESERVED = ('bridge',)
PULLS = ('up', 'down', 'floating')
#: Names of servers and topic levels: letters, digits, - and _ (they go into topics and ids).
_NAME = re.compile(r'^[A-Za-z0-9_-]{1,64}$')
_TOPIC = re.compile(r'^[^#+\x00]+$')

#: What each role accepts, besides server, gpio, role and name.
_ROLE_OPTIONS = {
    'switch': {'active_high'},
    'light': {'active_high', 'frequency', 'fade_ms', 'blink_ms'},
    'impulse': {'active_high', 'time_ms'},
    'input': {'active_high', 'pull', 'bounce_ms', 'device_class'},
    'observed': {'device_class'},
}


class ConfigError(ValueError):
    """The configuration file is wrong: the message says where and what to write."""


class Broker(NamedTuple):
    host: str
    port: int
    username: Optional[str]
    password: Optional[str]
    tls: bool
    ca_file: Optional[str]
    client_id: str
    keepalive: int


class Server(NamedTuple):
    name: str
    host: str
    port: int
    token: Optional[str]
    tls: bool
    ca_file: Optional[str]


class Pin(NamedTuple):
    server: str
    gpio: int
    role: str
    name: str
    active_high: bool = True
    frequency: float = 100.0
    fade_ms: int = 1000
    blink_ms: int = 500
    time_ms: int = 500
    pull: str = 'up'
    bounce_ms: Optional[int] = None
    device_class: Optional[str] = None

    @property
    def key(self):
        """``garage/17``: the pin's place in the plain topics."""
        return f'{self.server}/{self.gpio}'


class Config(NamedTuple):
    broker: Broker
    base: str
    discovery: str                 # '' for no discovery
    servers: Dict[str, Server]
    pins: List[Pin]


def load(path):
    """The :class:`Config` in the TOML file *path*; :exc:`ConfigError` if it is wrong."""
    try:
        with open(path, 'rb') as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f'cannot read the configuration {path}: {exc.strerror}') from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f'{path} is not valid TOML: {exc}') from None
    name = os.path.splitext(os.path.basename(path))[0]
    return parse(data, base_dir=os.path.dirname(os.path.abspath(path)), name=name)


def parse(data, base_dir='.', name='bridge'):
    """The :class:`Config` from *data* (a parsed TOML document); *name* (the file's)
    goes into the default client id, so two bridges on one machine do not share one."""
    _only(data, 'the configuration', {'broker', 'topics', 'servers', 'pins'})
    broker = _broker(_table(data, 'broker', 'the configuration'), base_dir, name)
    topics = _table(data, 'topics', 'the configuration')
    _only(topics, '[topics]', {'base', 'discovery'})
    base = _string(topics, 'base', '[topics]', 'remoteio')
    discovery = _string(topics, 'discovery', '[topics]', 'homeassistant')
    for what, topic in (('base', base), ('discovery', discovery)):
        if topic and (not _TOPIC.match(topic) or topic.startswith('/') or topic.endswith('/')):
            raise ConfigError(f'[topics] {what} = {topic!r}: a topic without + or #, '
                              f'and not starting or ending with /')
    if not base:
        raise ConfigError('[topics] base must not be empty')
    if discovery and (base == discovery or base.startswith(discovery + '/')
                      or discovery.startswith(base + '/')):
        raise ConfigError(f'[topics] base {base!r} and discovery {discovery!r} must not '
                          f'overlap')
    servers = {}
    for name, table in _table(data, 'servers', 'the configuration').items():
        servers[name] = _server(name, table, base_dir)
    if not servers:
        raise ConfigError('no [servers.NAME] table: name at least one remoteio server')
    pins = []
    seen = set()
    raw_pins = data.get('pins', [])
    if not isinstance(raw_pins, list):
        raise ConfigError('pins must be an array of tables: write [[pins]] before each pin')
    for index, table in enumerate(raw_pins, 1):
        pin = _pin(index, table, servers)
        if (pin.server, pin.gpio) in seen:
            raise ConfigError(f'pin {index}: GPIO{pin.gpio} of server {pin.server!r} is '
                              f'named twice')
        seen.add((pin.server, pin.gpio))
        pins.append(pin)
    if not pins:
        raise ConfigError('no [[pins]]: name at least one pin to expose')
    return Config(broker, base, discovery, servers, pins)


# The parts -----------------------------------------------------------------------------

def _broker(table, base_dir, name):
    where = '[broker]'
    _only(table, where, {'host', 'port', 'username', 'password', 'password_file', 'tls',
                         'ca_file', 'client_id', 'keepalive'})
    tls = _bool(table, 'tls', where, False)
    ca_file = _path(table, 'ca_file', where, base_dir)
    if ca_file is not None:
        tls = True
    username = _string(table, 'username', where, None)
    password = _secret(table, 'password', where, base_dir)
    if password is not None and username is None:
        raise ConfigError(f'{where}: a password needs a username')
    client_id = _string(table, 'client_id', where,
                        f'remoteio-{socket.gethostname()}-{name}')
    return Broker(host=_string(table, 'host', where, 'localhost'),
                  port=_int(table, 'port', where, 8883 if tls else 1883, 1, 65535),
                  username=username, password=password, tls=tls, ca_file=ca_file,
                  client_id=client_id[:64],
                  keepalive=_int(table, 'keepalive', where, 30, 5, 3600))


def _server(name, table, base_dir):
    where = f'[servers.{name}]'
    if not _NAME.match(name):
        raise ConfigError(f'{where}: a server name is letters, digits, - and _ (it goes '
                          f'into topics and ids)')
    if name in RESERVED:
        raise ConfigError(f'{where}: {name!r} is the bridge\'s own topic; name the server '
                          f'otherwise')
    if not isinstance(table, dict):
        raise ConfigError(f'{where} must be a table')
    _only(table, where, {'host', 'port', 'token', 'token_file', 'tls', 'ca_file'})
    ca_file = _path(table, 'ca_file', where, base_dir)
    return Server(name=name, host=_string(table, 'host', where, None, required=True),
                  port=_int(table, 'port', where, 8509, 1, 65535),
                  token=_secret(table, 'token', where, base_dir),
                  tls=_bool(table, 'tls', where, False) or ca_file is not None,
                  ca_file=ca_file)


def _pin(index, table, servers):
    where = f'pin {index} ([[pins]] number {index})'
    if not isinstance(table, dict):
        raise ConfigError(f'{where} must be a table')
    role = _string(table, 'role', where, None, required=True)
    if role not in ROLES:
        raise ConfigError(f'{where}: role {role!r} is not one of {", ".join(ROLES)}')
    _only(table, f'{where} (role {role})',
          {'server', 'gpio', 'role', 'name'} | _ROLE_OPTIONS[role])
    server = _string(table, 'server', where, None if len(servers) > 1 else next(iter(servers)),
                     required=True)
    if server not in servers:
        raise ConfigError(f'{where}: server {server!r} is not one of the [servers.NAME] '
                          f'tables ({", ".join(servers)})')
    gpio = _int(table, 'gpio', where, None, 0, 53, required=True)
    fields = dict(server=server, gpio=gpio, role=role,
                  name=_string(table, 'name', where, f'{server} GPIO{gpio}'))
    if 'active_high' in table:
        fields['active_high'] = _bool(table, 'active_high', where, True)
    if 'frequency' in table:
        value = table['frequency']
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10000:
            raise ConfigError(f'{where}: frequency must be a number of Hz above 0, at most 10000')
        fields['frequency'] = float(value)
    for key, low, high in (('fade_ms', 10, 3600000), ('blink_ms', 1, 3600000),
                           ('time_ms', 1, 86400000), ('bounce_ms', 0, 10000)):
        if key in table:
            fields[key] = _int(table, key, where, None, low, high)
    if 'pull' in table:
        pull = table['pull']
        if pull not in PULLS:
            raise ConfigError(f'{where}: pull must be one of {", ".join(PULLS)}')
        fields['pull'] = pull
        if pull != 'floating' and 'active_high' in table:
            raise ConfigError(f'{where}: active_high goes with pull = "floating" only (a pull '
                              f'up makes the input active low, a pull down active high)')
    if 'device_class' in table:
        device_class = _string(table, 'device_class', where, None)
        if device_class not in DEVICE_CLASSES:
            raise ConfigError(f'{where}: device_class {device_class!r} is not one of Home '
                              f'Assistant\'s binary sensor classes ({", ".join(DEVICE_CLASSES)})')
        fields['device_class'] = device_class
    return Pin(**fields)


# Values ---------------------------------------------------------------------------------

def _table(data, key, where):
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f'{key} in {where} must be a table: write [{key}]')
    return value


def _only(table, where, allowed):
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f'{where}: unknown key {unknown[0]!r} (known: '
                          f'{", ".join(sorted(allowed))})')


def _string(table, key, where, default, required=False):
    if key not in table:
        if required and default is None:
            raise ConfigError(f'{where}: {key} is missing')
        return default
    value = table[key]
    if not isinstance(value, str):
        raise ConfigError(f'{where}: {key} must be a string (in quotes)')
    return value


def _bool(table, key, where, default):
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f'{where}: {key} must be true or false')
    return value


def _int(table, key, where, default, low, high, required=False):
    if key not in table:
        if required:
            raise ConfigError(f'{where}: {key} is missing')
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f'{where}: {key} must be a whole number from {low} to {high}')
    return value


def _path(table, key, where, base_dir):
    value = _string(table, key, where, None)
    if value is None:
        return None
    path = os.path.join(base_dir, os.path.expanduser(value))
    if not os.path.isfile(path):
        raise ConfigError(f'{where}: {key} {value!r}: no such file')
    return path


def _secret(table, key, where, base_dir):
    """*key* itself, or the first line of the file *key*_file (kept out of the config)."""
    if key in table and f'{key}_file' in table:
        raise ConfigError(f'{where}: give {key} or {key}_file, not both')
    if f'{key}_file' in table:
        path = _path(table, f'{key}_file', where, base_dir)
        try:
            with open(path, encoding='utf-8') as f:
                value = f.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f'{where}: cannot read {key}_file {path!r}: '
                              f'{getattr(exc, "strerror", None) or exc}') from None
        if not value:
            raise ConfigError(f'{where}: {key}_file {path!r} is empty')
        return value
    return _string(table, key, where, None)
