"""Stop the server before this process goes, however it goes: a kernel shutdown or restart, SIGTERM, or a plain exit.

Jupyter asks a kernel to shut down, sends it SIGTERM when it still runs after half its ``shutdown_wait_time`` (2.5 s
by default) and SIGKILL at the end of it. A kernel that had imported torch took 1.2-2.6 s to exit on an idle machine
here, most of it tearing modules down; on a loaded one, SIGTERM came first. SIGTERM's default action skips the
``atexit`` handlers, so tritonserver was left to die with the kernel (``PR_SET_PDEATHSIG``) half-way through its own
exit, and a python backend stub of it now and then stayed behind, with the server's folder. Hence three hooks:

- the kernel's shutdown request (its ``do_shutdown``, the place a kernel does "things when the frontend shuts down")
  stops the server first, before the kernel starts tearing down;
- SIGTERM stops it, then ends the process as SIGTERM would have (or calls the handler that was there before);
- ``atexit``, for a script or a plain interpreter exit.

SIGKILL cannot be caught: tritonserver then dies with this process, by ``PR_SET_PDEATHSIG``.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["register", "run_stops", "unregister"]

_stops: list[Callable[[], None]] = []
_lock = threading.Lock()
_previous_sigterm: Any = None
_sigterm_hooked = False


def register(stop: Callable[[], None]) -> None:
    """Call ``stop`` once when this process ends (it must be quick and must not raise)."""
    with _lock:
        _stops.append(stop)
    atexit.register(stop)
    _hook_sigterm()
    _hook_kernel_shutdown()


def unregister(stop: Callable[[], None]) -> None:
    """``stop`` ran, or is no longer needed."""
    with _lock:
        if stop in _stops:
            _stops.remove(stop)
    atexit.unregister(stop)


def run_stops() -> None:
    """Call every registered stop now (each unregisters itself when it has run)."""
    with _lock:
        stops = list(_stops)
    for stop in stops:
        with contextlib.suppress(Exception):  # one failing stop must not keep the others from running
            stop()


def _on_sigterm(signum: int, frame: Any) -> None:
    run_stops()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:  # the default: end as SIGTERM ends a process
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _hook_sigterm() -> None:
    """Handle SIGTERM, once per process; only the main thread may set a signal handler."""
    global _previous_sigterm, _sigterm_hooked
    if _sigterm_hooked or threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # set from outside Python: leave it alone
        return
    _previous_sigterm = previous
    signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm_hooked = True


def _hook_kernel_shutdown() -> None:
    """In a Jupyter kernel, stop first when the front end asks the kernel to shut down or restart (once)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None or getattr(kernel, "_tritonnb_stops_first", False):
        return
    original = kernel.do_shutdown

    async def do_shutdown(restart: bool) -> Any:
        run_stops()
        reply = original(restart)
        return await reply if inspect.isawaitable(reply) else reply

    kernel.do_shutdown = do_shutdown
    kernel._tritonnb_stops_first = True
