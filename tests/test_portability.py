"""
The client (remoteio_factory) runs on Windows and macOS as well as Linux.

Two checks. Statically: no module of the client uses a Linux-only (or
POSIX-only) API outside a platform guard, and none imports the server
(Linux code) when it is imported. For real: a client in a Windows or a macOS
*stand-in* (a fresh interpreter whose ``sys.platform`` says so and from which
what that platform lacks has been removed: fork, os.pipe, poll/epoll, fcntl,
POSIX signals, ...) imports every client module and drives a real server,
plain and TLS, taking that platform's send-timeout path.
"""

import ast
import json
import os
import struct
import subprocess
import sys
import textwrap

import pytest

from conftest import ServerProcess
from remoteio_factory import transport

CLIENT = os.path.join(os.path.dirname(__file__), os.pardir, 'remoteio_factory')

#: Module attributes missing (or unusable as Linux uses them) on Windows or macOS.
LINUX_ONLY_NAMES = {
    'os': {'fork', 'forkpty', 'register_at_fork', 'pipe', 'pipe2', 'set_blocking',
           'get_blocking', 'setsid', 'setpgrp', 'killpg', 'getuid', 'geteuid', 'getpgid',
           'sched_getaffinity', 'sched_setaffinity', 'pidfd_open', 'eventfd', 'memfd_create',
           'mkfifo', 'uname', 'getloadavg', 'WNOHANG'},
    'select': {'poll', 'epoll', 'kqueue', 'devpoll'},
    'socket': {'AF_UNIX', 'AF_PACKET', 'AF_NETLINK', 'SO_REUSEPORT', 'SO_BINDTODEVICE',
               'TCP_KEEPIDLE', 'TCP_KEEPINTVL', 'TCP_KEEPCNT', 'TCP_USER_TIMEOUT',
               'TCP_QUICKACK', 'TCP_CORK', 'SCM_RIGHTS', 'CMSG_SPACE', 'CMSG_LEN',
               'MSG_NOSIGNAL',
               # their value is encoded per platform: only transport.set_send_timeout
               'SO_SNDTIMEO', 'SO_RCVTIMEO'},
    'signal': {'SIGKILL', 'SIGHUP', 'SIGCHLD', 'SIGUSR1', 'SIGUSR2', 'SIGPIPE', 'SIGALRM',
               'SIGQUIT', 'SIGSTOP', 'SIGCONT', 'SIGWINCH', 'pidfd_send_signal', 'alarm',
               'setitimer', 'pause', 'pthread_kill', 'pthread_sigmask', 'siginterrupt'},
    'time': {'clock_gettime', 'CLOCK_MONOTONIC_RAW', 'CLOCK_BOOTTIME'},
}
#: Modules that exist on one platform only.
PLATFORM_MODULES = {'fcntl', 'termios', 'tty', 'pty', 'pwd', 'grp', 'resource', 'posix',
                    'syslog', 'crypt', 'curses', 'msvcrt', 'winreg', '_winapi'}
LINUX_PATHS = ('/proc/', '/sys/', '/dev/', '/run/', '/tmp/', '/var/')
GUARD_WORDS = ('sys.platform', 'os.name', 'platform.system', 'hasattr(', 'getattr(')
GUARD_EXCEPTIONS = {'AttributeError', 'ImportError', 'ModuleNotFoundError', 'NameError'}


def _guarded(ancestors, node):
    """Is *node* inside an ``if`` on the platform or a ``try`` that expects it to be missing?"""
    for parent, child in zip(ancestors, ancestors[1:] + [node]):
        if isinstance(parent, (ast.If, ast.IfExp)):
            if any(word in ast.unparse(parent.test) for word in GUARD_WORDS):
                return True
        if isinstance(parent, ast.Try) and child in parent.body:
            caught = set()
            for handler in parent.handlers:
                if handler.type is not None:
                    caught.update(n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name))
            if caught & GUARD_EXCEPTIONS:
                return True
    return False


def linux_only_uses(source, filename='<client>'):
    """``[(filename, line, what)]`` for each unguarded platform-specific use in *source*."""
    tree = ast.parse(source, filename)
    aliases = {}          # local name -> module, from the file's imports
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    found = []

    def visit(node, ancestors, in_function):
        what = None
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if node.attr in LINUX_ONLY_NAMES.get(module, ()):
                what = f'{module}.{node.attr}'
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            what = next((n for n in names if n.split('.')[0] in PLATFORM_MODULES), None)
            if what is None and not in_function:
                what = next((n for n in names if n.split('.')[0] == 'remoteio_server'), None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split('.')[0]
            if top in PLATFORM_MODULES or (top == 'remoteio_server' and not in_function):
                what = f'from {node.module} import'
            elif any(a.name in LINUX_ONLY_NAMES.get(node.module, ()) for a in node.names):
                what = f'from {node.module} import ' + ', '.join(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(LINUX_PATHS):
                what = f'path {node.value!r}'
        if what and not _guarded(ancestors, node):
            found.append((filename, node.lineno, what))
        in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            if not (isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant)):
                visit(child, ancestors + [node], in_function)   # (docstrings are no paths)

    visit(tree, [], False)
    return found


def test_client_uses_no_linux_only_api_outside_a_platform_guard():
    found = []
    for name in sorted(os.listdir(CLIENT)):
        if name.endswith('.py'):
            with open(os.path.join(CLIENT, name), encoding='utf-8') as f:
                found += linux_only_uses(f.read(), name)
    # the send timeout's option itself is looked up with getattr in transport.py only
    assert found == [], '\n'.join(f'{f}:{line}: {what}' for f, line, what in found)


def test_the_check_finds_what_it_should():
    bad = textwrap.dedent('''
        import os, select, signal, socket
        import fcntl
        from remoteio_server.tasks import Task
        os.fork()
        select.poll()
        signal.SIGKILL
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, b'')
        open('/proc/self/stat')
    ''')
    assert [what for _, _, what in linux_only_uses(bad)] == [
        'fcntl', 'from remoteio_server.tasks import', 'os.fork', 'select.poll',
        'signal.SIGKILL', 'socket.SO_SNDTIMEO', "path '/proc/self/stat'"]
    good = textwrap.dedent('''
        import os, sys
        try:
            import fcntl
        except ImportError:
            fcntl = None
        if hasattr(os, 'register_at_fork'):
            os.register_at_fork(after_in_child=f)
        if sys.platform != 'win32':
            os.pipe()
        def later():
            from remoteio_server.tasks import Task
    ''')
    assert linux_only_uses(good) == []


def test_send_timeout_encodings():
    # Linux: unchanged, two native longs
    assert transport.send_timeout_value(1.5, 'timeval') == struct.pack('ll', 1, 500000)
    if sys.platform.startswith('linux'):
        assert transport.timeval(1.5) == struct.pack('ll', 1, 500000)
    # macOS: a long and an int32, padded to the long's alignment
    darwin = transport.send_timeout_value(1.5, 'darwin')
    assert len(darwin) == struct.calcsize('@ll')
    assert struct.unpack_from('@li', darwin) == (1, 500000)
    # Windows: a DWORD of milliseconds; 0 stays "no timeout", a tiny one is 1 ms
    assert [transport.send_timeout_value(s, 'win32') for s in (10, 0.25, 0.0001, 0)] == [
        10000, 250, 1, 0]


# A client in a stand-in of another platform -------------------------------------------

STAND_IN = r'''
import json, sys

# What the client needs from the standard library and gpiozero, imported for real
# before sys.platform lies (some of them look at it when imported).
import argparse, collections, errno, hashlib, hmac, itertools, logging, math, os, queue
import secrets, select, signal, socket, ssl, struct, threading, time, weakref
import gpiozero, gpiozero.exc, gpiozero.mixins, gpiozero.pins.pi, gpiozero.pins.spi
import gpiozero.threads

platform, host, port, gpio, tls_port, ca = sys.argv[1:7]
gpio = int(gpio)
MISSING = {
    'win32': {
        os: ['fork', 'forkpty', 'register_at_fork', 'pipe', 'pipe2', 'set_blocking',
             'get_blocking', 'setsid', 'killpg', 'getuid', 'geteuid', 'getpgid',
             'sched_getaffinity', 'pidfd_open', 'mkfifo', 'uname', 'WNOHANG'],
        select: ['poll', 'epoll', 'kqueue', 'devpoll'],
        socket: ['AF_UNIX', 'SO_REUSEPORT', 'TCP_USER_TIMEOUT', 'SCM_RIGHTS', 'CMSG_SPACE',
                 'MSG_NOSIGNAL', 'TCP_QUICKACK', 'TCP_CORK'],
        signal: ['SIGKILL', 'SIGHUP', 'SIGCHLD', 'SIGUSR1', 'SIGUSR2', 'SIGPIPE', 'SIGALRM',
                 'SIGQUIT', 'pidfd_send_signal', 'alarm', 'setitimer', 'pthread_kill',
                 'pthread_sigmask', 'siginterrupt'],
    },
    'darwin': {
        os: ['pipe2', 'sched_getaffinity', 'pidfd_open', 'memfd_create', 'eventfd'],
        select: ['epoll'],
        socket: ['TCP_USER_TIMEOUT', 'AF_PACKET', 'AF_NETLINK', 'SO_BINDTODEVICE',
                 'TCP_QUICKACK', 'TCP_CORK'],
        signal: ['pidfd_send_signal'],
        time: ['CLOCK_BOOTTIME'],
    },
}[platform]
for module, names in MISSING.items():
    for name in names:
        if hasattr(module, name):
            delattr(module, name)


def loopback_socketpair(family=socket.AF_INET, type=socket.SOCK_STREAM, proto=0):
    """What socket.socketpair() is on Windows: two TCP sockets connected over loopback."""
    with socket.socket(family, type, proto) as listener:
        listener.bind(('127.0.0.1', 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


if platform == 'win32':
    socket.socketpair = loopback_socketpair
for name in ('fcntl', 'termios', 'tty', 'pty', 'pwd', 'grp', 'resource', 'syslog'):
    if platform == 'win32' or name in ('fcntl', 'termios', 'tty', 'pty'):
        sys.modules[name] = None          # importing it raises ImportError
sys.platform = platform

import importlib, pkgutil
import remoteio_factory
for info in pkgutil.iter_modules(remoteio_factory.__path__):
    importlib.import_module(f'remoteio_factory.{info.name}')
from gpiozero import LED, Button
from remoteio_factory import RemoteIOFactory, transport
from remoteio_factory.connection import clock

result = {'style': transport.SEND_TIMEOUT_STYLE,
          'server_imported': 'remoteio_server' in sys.modules,
          'clock': clock.__name__}
factory = RemoteIOFactory(host, int(port), timeout=0.5)
try:
    sock = factory._connection._sock
    result['idle_timeouts'] = factory._connection._idle_timeouts
    result['socket_timeout'] = sock.gettimeout()
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.calcsize('@ll'))
    seconds, microseconds = struct.unpack('@ll', raw)      # as this (Linux) kernel reads it
    result['kernel_send_timeout'] = seconds + microseconds / 1e6
    led = LED(17, pin_factory=factory)
    button = Button(gpio, pin_factory=factory)            # pull-up: pressed when driven low
    pressed = threading.Event()
    button.when_pressed = pressed.set
    led.on()
    time.sleep(1.5)        # idle for longer than the timeout (heartbeats come every 1 s)
    factory._connection.request('drive', pin=gpio, state=0)
    result['pressed'] = pressed.wait(5)
    result['led'] = led.value
    result['active_time'] = button.active_time
    result['broken'] = factory._connection.broken
    factory._connection.request('drive', pin=gpio, state=1)
finally:
    factory.close()

if tls_port != '-':                        # TLS: the pump thread's wake-up and select()
    factory = RemoteIOFactory('127.0.0.1', int(tls_port), tls_ca=ca)
    try:
        led = LED(18, pin_factory=factory)
        for i in range(200):
            led.value = i % 2
        led.on()
        result['tls_led'] = led.value
    finally:
        factory.close()
print(json.dumps(result))
'''


@pytest.fixture(scope='module')
def tls_server(tmp_path_factory):
    from test_security import make_certificate
    try:
        cert, key = make_certificate(tmp_path_factory.mktemp('tls'), 'server')
    except (OSError, subprocess.SubprocessError):
        yield None          # no openssl here: the stand-ins run without TLS
        return
    proc = ServerProcess('--tls-cert', str(cert), '--tls-key', str(key))
    proc.ca = str(cert)
    yield proc
    proc.stop()


@pytest.mark.parametrize('platform', ['win32', 'darwin'])
def test_a_client_on_a_stand_in_platform_drives_a_real_server(server, tls_server, platform):
    args = [platform, server.host, str(server.port), {'win32': '5', 'darwin': '6'}[platform],
            str(tls_server.port) if tls_server else '-', tls_server.ca if tls_server else '-']
    run = subprocess.run([sys.executable, '-c', STAND_IN, *args], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, REMOTEIO_TOKEN=''))
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    assert result['style'] == platform
    assert not result['server_imported'], 'importing the client imported the server'
    assert result['clock'] == ('perf_counter' if platform == 'win32' else 'monotonic')
    if platform == 'win32':
        # This Linux kernel refuses Windows' DWORD: the client says so and bounds its
        # sends with Python's socket timeout instead, and its reader lives through the
        # receive timeouts that come with it.
        assert result['idle_timeouts'] is True and result['socket_timeout'] == 0.5
        assert result['kernel_send_timeout'] == 0
    elif struct.calcsize('@li0l') == struct.calcsize('@ll') and sys.byteorder == 'little':
        # macOS' layout reads the same here: the kernel took the timeout as given
        assert result['idle_timeouts'] is False and result['socket_timeout'] is None
        assert abs(result['kernel_send_timeout'] - 0.5) < 0.02
    assert result['led'] == 1 and result['pressed'] is True and result['broken'] is None
    assert 0 <= result['active_time'] < 5
    if tls_server:
        assert result['tls_led'] == 1


def test_the_client_never_imports_the_server():
    """One direction only: the server uses the client's protocol and tasks, never the reverse."""
    import ast
    found = []
    for name in sorted(os.listdir(CLIENT)):
        if name.endswith('.py'):
            with open(os.path.join(CLIENT, name), encoding='utf-8') as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
                found += [f'{name}:{node.lineno}: {m}' for m in modules
                          if m.split('.')[0] == 'remoteio_server']
    assert found == []


def test_the_servers_main_process_does_not_load_gpiozero_or_the_client():
    """
    The server's main process imports only what both halves share (protocol,
    tasks, transport): gpiozero is loaded by the workers, which drive the
    pins, and was some 8 MiB of the main process's memory. The client's
    names are still there for whoever imports them.
    """
    script = textwrap.dedent("""
        import sys
        import remoteio_server.cli, remoteio_server.daemon, remoteio_server.dashboard
        loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'gpiozero'
                        or m.startswith('remoteio_factory.') and m.split('.')[1]
                        not in ('_version', 'protocol', 'tasks', 'transport'))
        print(loaded)
        import remoteio_factory
        names = {name: getattr(remoteio_factory, name) for name in remoteio_factory.__all__}
        print(sorted(set(remoteio_factory.__all__) - set(dir(remoteio_factory))))
        from gpiozero.exc import GPIOPinInUse, PinError
        from remoteio_factory import RemoteIOFactory, RemoteIOConnectionError
        print(issubclass(RemoteIOConnectionError, PinError),
              names['RemoteIOFactory'] is RemoteIOFactory)
        try:
            remoteio_factory.NoSuchName
        except AttributeError as exc:
            print('AttributeError', exc)
    """)
    result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == '[]', f'loaded by the server: {lines[0]}'
    assert lines[1] == '[]', f'in __all__ but not in dir(): {lines[1]}'
    assert lines[2] == 'True True'
    assert lines[3].startswith('AttributeError') and 'NoSuchName' in lines[3]
