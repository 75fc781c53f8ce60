"""
Who may connect, and which pins they may drive.

Flow: client → wire → **access policy** (at accept and at hello) → server
session.

* **Protected mode**: with no token configured, only clients on this machine
  (loopback) are served; anyone else is told why and disconnected.
* **Token**: with a token, every connection must prove it knows it by a
  challenge-response (HMAC-SHA256 over a fresh random nonce per connection;
  the token never crosses the wire, a recorded answer is worthless on the
  next connection, and the comparison takes constant time). The server
  proves it knows the token too, so a client cannot be fooled by an
  impostor.
* **Scoped tokens** (``--tokens FILE``): several named tokens, each with the
  GPIOs it may claim and drive, or read-only (observe and read status, never
  claim or drive). The connection's token is found by trying the answer
  against every token (each compared in constant time, all of them every
  time); its name shows in status and logs, its secret never. ``--token-file``
  is one full-access token named ``token``.
* ``--allow-hosts`` limits the peers, ``--allow-pins`` the GPIOs that may
  be claimed. IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, how a
  dual-stack listener sees IPv4 peers) are IPv4 addresses on both sides: in
  the list and in the peer's address.
"""

import hmac
import ipaddress
import re
import secrets
from typing import FrozenSet, NamedTuple, Optional

from remoteio_factory.protocol import auth_mac


def peer_address(host):
    """The address of a peer (an IPv4-mapped IPv6 one as IPv4, without a %scope), or None."""
    try:
        address = ipaddress.ip_address(host.split('%', 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


def is_loopback(host):
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    address = peer_address(host)
    return address is not None and address.is_loopback


def parse_pins(text):
    """``'17,18,22-27'`` → ``{17, 18, 22, 23, 24, 25, 26, 27}``."""
    pins = set()
    for part in text.split(','):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition('-')
        first, last = int(first), int(last or first)
        if first > last or first < 0:
            raise ValueError(f'bad pin range {part!r}')
        pins.update(range(first, last + 1))
    return pins


_V4_MAPPED = ipaddress.ip_network('::ffff:0:0/96')


def normalise_network(network):
    """
    An IPv4-mapped IPv6 network (``::ffff:10.0.0.5``, ``::ffff:10.0.0.0/120``)
    as the IPv4 network it stands for; any other network as it is. Peers are
    compared as IPv4 addresses too (:func:`peer_address`), so both sides meet.
    """
    if (isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96
            and network.subnet_of(_V4_MAPPED)):
        return ipaddress.IPv4Network(
            (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    return network


def parse_hosts(text):
    """``'192.168.1.0/24, 10.0.0.5, ::ffff:10.0.0.6'`` → a list of networks."""
    return [normalise_network(ipaddress.ip_network(part.strip().split('%', 1)[0], strict=False))
            for part in text.split(',') if part.strip()]


#: The shortest secret a token may have.
MIN_SECRET = 16
_TOKEN_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]{0,31}$')


class Token(NamedTuple):
    """One token: its name (for status and logs), secret, GPIOs (None: all) and access."""
    name: str
    secret: bytes
    pins: Optional[FrozenSet[int]] = None
    read_only: bool = False

    def describe(self):
        what = 'read-only' if self.read_only else (
            'all GPIOs' if self.pins is None else
            'GPIO ' + ','.join(str(g) for g in sorted(self.pins)))
        return f'{self.name} ({what})'


def read_tokens(path):
    """
    A tokens file: one token per line, ``NAME SECRET [PINS] [rw|ro]``: PINS is
    ``all`` (the default) or a list like ``17,18,22-27``; ``ro`` makes it
    read-only. ``#`` starts a comment. ValueError naming the line when one is
    wrong (a secret shorter than 16 characters, two tokens of one name or one
    secret, ...).
    """
    tokens, names, secrets_seen = [], set(), set()
    with open(path, encoding='utf-8') as file:
        for number, line in enumerate(file, 1):
            # (a comment is a whole line: a secret may hold a #)
            fields = [] if line.lstrip().startswith('#') else line.split()
            if not fields:
                continue
            where = f'{path}, line {number}'
            if len(fields) < 2 or len(fields) > 4:
                raise ValueError(f'{where}: a line is NAME SECRET [PINS] [rw|ro]')
            name, secret, rest = fields[0], fields[1], fields[2:]
            # (no error names what it read: a line missing its name would print a secret)
            if not _TOKEN_NAME.match(name):
                raise ValueError(f'{where}: a token name is a letter then up to 31 letters, '
                                 f'digits, _ . or -')
            if len(secret) < MIN_SECRET:
                raise ValueError(f'{where}: the secret must be at least {MIN_SECRET} '
                                 f'characters long (is the name missing?)')
            read_only, pins = False, None
            for field in rest:
                if field in ('ro', 'rw'):
                    read_only = field == 'ro'
                elif field != 'all':
                    try:
                        pins = frozenset(parse_pins(field))
                    except ValueError:
                        raise ValueError(f'{where}: field {rest.index(field) + 3} is neither '
                                         f'"all", a GPIO list like 17,18,22-27, nor rw/ro') \
                            from None
            if name in names or secret in secrets_seen:
                raise ValueError(f'{where}: two tokens with the same name or secret')
            names.add(name)
            secrets_seen.add(secret)
            tokens.append(Token(name, secret.encode('utf-8'), pins, read_only))
    if not tokens:
        raise ValueError(f'{path} holds no token')
    return tokens


class AccessPolicy:
    """The server's access rules; see the module docstring."""

    def __init__(self, token=None, allow_hosts=None, allow_pins=None, tokens=()):
        token = token.encode('utf-8') if isinstance(token, str) else token
        self.tokens = list(tokens)
        if token:
            self.tokens.append(Token('token', token))
        self.token = token
        if allow_hosts is not None:
            allow_hosts = [normalise_network(ipaddress.ip_network(n, strict=False))
                           for n in allow_hosts]
        self.allow_hosts = allow_hosts
        self.allow_pins = allow_pins

    @property
    def protected(self):
        """True when no token is set: loopback clients only."""
        return not self.tokens

    def admit(self, host):
        """None if a peer at *host* may connect, else the reason it may not."""
        if self.allow_hosts is not None:
            address = peer_address(host)
            if address is None:
                return f'{host} is not an address this server accepts'
            if not any(address in network for network in self.allow_hosts
                       if network.version == address.version):
                return f'{address} is not in the server\'s --allow-hosts list'
        if self.protected and not is_loopback(host):
            return ('protected mode: this remoteio server has no token, so it serves only '
                    'clients on its own machine. Start it with --token-file FILE (or '
                    'REMOTEIO_TOKEN) and give the clients the same token in REMOTEIO_TOKEN; '
                    'see docs/security.md')
        return None

    def allows_pin(self, gpio):
        return self.allow_pins is None or gpio in self.allow_pins

    def refusal(self, token, gpio=None, what='claim or drive'):
        """
        Why a client with *token* (None: a server without tokens) may not *what*
        *gpio* (None: change pins at all), or None. The protocol's sessions and
        the dashboard both ask here.
        """
        if token is not None and token.read_only:
            return f'token {token.name} is read-only: it may observe and read status, not {what}'
        if gpio is None:
            return None
        if not self.allows_pin(gpio):
            return f'GPIO{gpio} is not in the server\'s --allow-pins list'
        if token is not None and token.pins is not None and gpio not in token.pins:
            allowed = ','.join(str(g) for g in sorted(token.pins)) or 'none'
            return f'token {token.name} may not {what} GPIO{gpio} (it may: {allowed})'
        return None

    @staticmethod
    def challenge():
        """A fresh nonce for one connection."""
        return secrets.token_hex(32)

    def verify(self, nonce, mac):
        """The :class:`Token` whose answer to the challenge *nonce* is *mac*, or None."""
        if not isinstance(mac, str):
            return None
        given = mac.encode('utf-8', 'replace')
        found = None
        for token in self.tokens:       # every one, every time: no timing tells which
            if hmac.compare_digest(auth_mac(token.secret, 'client', nonce).encode(), given):
                found = token
        return found

    def proof(self, client_nonce, token):
        """Our answer to the client's challenge, with the token it proved it knows."""
        return auth_mac(token.secret, 'server', client_nonce)
