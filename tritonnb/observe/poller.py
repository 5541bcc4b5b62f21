"""One background polling thread per watched server, shared by every panel and strip that watches it."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from tritonnb import state
from tritonnb.observe.monitor import Monitor, Snapshot, Target
from tritonnb.states import ServerState

__all__ = ["Poller", "Subscriber"]

Subscriber = Callable[[Snapshot], None]


class Poller:
    """One background thread per server, shared by every subscriber; stops when none is left or the server stops."""

    def __init__(self, target: Target) -> None:
        self.monitor = Monitor(target)
        self._subscribers: dict[int, tuple[Subscriber, float]] = {}
        self._handles = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.cpu_seconds = 0.0
        self.polls = 0

    @classmethod
    def for_target(cls, target: Target) -> Poller:
        """The shared poller of ``target`` (made on first use)."""
        with state.lock:
            poller = state.pollers.get(target.key)
            if poller is None or poller.monitor.target != target:
                poller = state.pollers[target.key] = cls(target)
            return poller

    def subscribe(self, callback: Subscriber, interval_s: float = 1.0) -> int:
        """Call ``callback(snapshot)`` from the polling thread at least every ``interval_s``; returns a handle."""
        with self._lock:
            handle = next(self._handles)
            self._subscribers[handle] = (callback, interval_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tritonnb-poller", daemon=True)
                self._thread.start()
        self._wake.set()
        return handle

    def set_interval(self, handle: int, interval_s: float) -> None:
        """Change one subscriber's refresh interval."""
        with self._lock:
            if handle in self._subscribers:
                self._subscribers[handle] = (self._subscribers[handle][0], interval_s)
        self._wake.set()

    def unsubscribe(self, handle: int) -> None:
        """Stop calling a subscriber; the thread ends when none is left."""
        with self._lock:
            self._subscribers.pop(handle, None)
        self._wake.set()

    def refresh(self) -> None:
        """Poll now instead of waiting for the interval."""
        self._wake.set()

    @property
    def running(self) -> bool:
        """Whether the polling thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            self._wake.clear()  # a refresh or subscription from now on is seen by the wait below
            with self._lock:
                subscribers = list(self._subscribers.values())
                if not subscribers:
                    self._thread = None  # decided under the lock: a new subscriber starts a new thread
                    return
            started = time.thread_time()
            try:
                snapshot = self.monitor.poll()
            except Exception as error:  # whatever happens, the panels get told and polling goes on
                reason = f"polling failed: {type(error).__name__}: {error}"
                snapshot = Snapshot.of(self.monitor.target, ServerState.DOWN, time.time(), reason)
            for callback, _ in subscribers:
                try:
                    callback(snapshot)
                except Exception:  # a broken panel must not stop the others
                    continue
            self.cpu_seconds += time.thread_time() - started
            self.polls += 1
            if snapshot.state == ServerState.STOPPED:
                with self._lock:
                    self._subscribers.clear()
                    self._thread = None
                return
            with self._lock:
                intervals = [interval for _, interval in self._subscribers.values()] or [0.0]
            self._wake.wait(min(intervals))
