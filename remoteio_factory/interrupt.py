"""
Raising an error in the main thread from another thread, wherever the main
thread is blocked.

Flow: connection lost for good (the factory's reconnect thread or the
socket's reader) → **interrupt()** → a signal to the main thread → its
handler raises the error there.

A script blocked in ``signal.pause()``, ``time.sleep()``,
``threading.Event.wait()`` or ``button.wait_for_press()`` makes no call on
the factory that could fail, so it would wait forever for a server that is
gone. A signal wakes each of those: on POSIX, a signal delivered to the main
thread (``signal.pthread_kill``) interrupts the system call it is blocked in
(``pause``, ``clock_nanosleep``, the semaphore of a lock), and Python then
runs the signal's handler in the main thread, whose exception propagates
from the blocking call.

- POSIX: :func:`prepare` (called by each factory made on the main thread)
  installs a handler for ``SIGUSR2`` (else ``SIGUSR1``) only if the program
  has not set one of its own; a signal we did not send gets the default
  action, as before. Without a handler of ours, :func:`interrupt` falls back
  to SIGINT (Ctrl+C): ``KeyboardInterrupt``, after logging the error.
- Windows: there is no ``pthread_kill``. :func:`prepare` wraps Python's
  default SIGINT handler (only if it is still the default), so that an
  interruption raises our error and a real Ctrl+C still raises
  ``KeyboardInterrupt``; :func:`interrupt` raises SIGINT with
  ``signal.raise_signal`` (through the C runtime, which also wakes
  ``time.sleep``), else with ``_thread.interrupt_main()``.

The error is delivered once: if the main thread gets it from a call on the
factory first (:func:`delivered`), the signal that follows does nothing.

On POSIX the signal is sent again while the error is still waiting to be
raised (:data:`RESEND_AFTER`): ``signal.pause()`` checks for signals only
after its system call returns, so a signal that arrives between Python's last
check and the call is handled by the C handler, and ``pause`` then sleeps
until the next one.
"""

import _thread
import logging
import os
import signal
import threading
import time

log = logging.getLogger('remoteio_factory')

_lock = threading.Lock()
_pending = []          # errors to raise in the main thread
_sent = 0              # signals sent by interrupt() and not handled yet
_signum = None         # POSIX: the signal whose handler is ours
_delivered = set()     # messages the main thread has already had from a call

#: POSIX: seconds after which the signal is sent again, one after another, while the
#: error has not been raised in the main thread (see the module's docstring).
RESEND_AFTER = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _take():
    global _sent
    with _lock:
        errors = list(_pending)
        _pending.clear()
        ours = _sent > 0
        _sent = max(0, _sent - 1)
    return ours, (errors[0] if errors else None)


def _on_signal(signum, frame):
    ours, error = _take()
    if error is not None:
        raise error
    if not ours:
        # Someone else's signal: what it did before we took it (end the process).
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _on_sigint(signum, frame):
    ours, error = _take()
    if error is not None:
        raise error
    if not ours:
        signal.default_int_handler(signum, frame)      # a real Ctrl+C


def prepare():
    """
    Install the handler, if this is the main thread and the program has not
    set its own (signal handlers can only be set there). Idempotent.
    """
    global _signum
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if hasattr(signal, 'pthread_kill'):
            if _signum is not None and signal.getsignal(_signum) is _on_signal:
                return
            for name in ('SIGUSR2', 'SIGUSR1'):
                signum = getattr(signal, name, None)
                if signum is not None and signal.getsignal(signum) == signal.SIG_DFL:
                    signal.signal(signum, _on_signal)
                    _signum = signum
                    return
        elif signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)


def interrupt(error):
    """Raise *error* in the main thread (from any other thread), wherever it is blocked."""
    global _sent
    main = threading.main_thread()
    if not main.is_alive() or threading.current_thread() is main:
        return
    with _lock:
        if str(error) in _delivered:
            return        # the main thread had it from a call already: not twice
        _pending.append(error)
        _sent += 1
    if hasattr(signal, 'pthread_kill'):
        if _signum is not None and signal.getsignal(_signum) is _on_signal:
            signal.pthread_kill(main.ident, _signum)
            threading.Thread(target=_resend, args=(main, _signum), daemon=True,
                             name='remoteio-interrupt').start()
            return
        # No handler of ours: end the program as Ctrl+C would, and say why first.
        log.error('%s', error)
        if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, None):
            signal.pthread_kill(main.ident, signal.SIGINT)
        return
    if signal.getsignal(signal.SIGINT) is _on_sigint:
        try:
            signal.raise_signal(signal.SIGINT)
            return
        except (AttributeError, OSError, ValueError):
            pass
    else:
        log.error('%s', error)
    _thread.interrupt_main()


def _resend(main, signum):
    """Send *signum* to *main* again while an error waits for it (see RESEND_AFTER)."""
    global _sent
    for delay in RESEND_AFTER:
        time.sleep(delay)
        with _lock:
            if not _pending or not main.is_alive():
                return
            _sent += 1
        try:
            signal.pthread_kill(main.ident, signum)
        except (AttributeError, OSError, ValueError):    # (ended meanwhile)
            return


def delivered(message):
    """
    The main thread got the error (*message*) from a call: a signal for it,
    sent already or about to be, must not raise it again.
    """
    if threading.current_thread() is threading.main_thread():
        with _lock:
            _delivered.add(message)
            _pending[:] = [e for e in _pending if str(e) != message]
