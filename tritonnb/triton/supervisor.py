"""Crash recovery: when tritonserver exits without being asked, start it again and bind every model again.

A ``Supervisor`` thread per server waits for the exit (tritonserver's exit handler wakes it at once), records what
happened, and asks the server to relaunch on the same ports. Several exits in a short window are a crash loop: it
then stops trying, and says so, until the user restarts by hand. Once a second it also lets the server check its
models' python backend stubs: one that died (a request can make a stub abort) leaves its model answering "stub
process is not healthy" forever while Triton still calls it ready, so that model is loaded again.

The relaunch runs on the supervisor's own thread, which lives as long as the server: tritonserver is set to die
with the thread that started it (PR_SET_PDEATHSIG), so that thread must not end while the server runs.
"""

from __future__ import annotations

import collections
import dataclasses
import signal
import threading
import time
from collections.abc import Callable, Sequence

__all__ = ["CRASHES_KEPT", "MAX_EXITS", "WINDOW_S", "Crash", "Supervisor", "describe_exit", "exits_in_window"]

MAX_EXITS = 3  # this many unexpected exits ...
WINDOW_S = 60.0  # ... within this many seconds are a crash loop: stop restarting
CRASHES_KEPT = 20  # the newest crashes (with their log tails) a kernel keeps; older ones are only counted


@dataclasses.dataclass
class Crash:
    """One unexpected exit of tritonserver and what recovery made of it."""

    at: float  # time.time() of the exit
    exit: str  # "killed by SIGKILL", "exit code 1"
    log_tail: str
    outcome: str = "restarting"  # then "restarted", "restart failed: ...", or "gave up: ..."
    recovered_in_s: float | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain data, e.g. for ``status()``."""
        return dataclasses.asdict(self)


def exits_in_window(exit_times: Sequence[float], now: float) -> int:
    """How many exits (clock times) count towards a crash loop at ``now``: those less than ``WINDOW_S`` before it."""
    return sum(at > now - WINDOW_S for at in exit_times)


def describe_exit(exit_code: int | None) -> str:
    """``killed by SIGKILL`` for a signal (negative codes, as the ``sh`` library reports them), else the code."""
    if exit_code is None:
        return "exited"
    if exit_code < 0:
        try:
            return f"killed by {signal.Signals(-exit_code).name}"
        except ValueError:
            return f"killed by signal {-exit_code}"
    return f"exit code {exit_code}"


class Supervisor:
    """Watches one server's tritonserver and relaunches it after an unexpected exit (when ``enabled``)."""

    def __init__(
        self,
        relaunch: Callable[[], bool],
        is_down: Callable[[], bool | None],
        log_tail: Callable[[], str],
        write_log: Callable[[str], None],
        heal_models: Callable[[], None],
        enabled: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        self.crashes: collections.deque[Crash] = collections.deque(maxlen=CRASHES_KEPT)
        self.restarts = 0  # how many times tritonserver was restarted after a crash
        self.gave_up: str | None = None  # why it stopped restarting, until a restart by hand
        self.recovering = False
        self.checks = 0  # how many times it has looked at the server (about once a second while it watches)
        self._relaunch = relaunch
        self._is_down = is_down
        self._log_tail = log_tail
        self._write_log = write_log
        self._heal_models = heal_models
        self._clock = clock
        self._exit_codes: list[int | None] = []
        self._exit_times: list[float] = []  # clock times of the unexpected exits since the last restart by hand
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tritonnb-supervisor", daemon=True)

    def watch(self) -> None:
        """Start watching (once tritonserver has started for the first time)."""
        self._thread.start()

    def notice_exit(self, exit_code: int | None) -> None:
        """Called (from any thread) when tritonserver exited without being asked."""
        self._exit_codes.append(exit_code)
        self._wake.set()

    def reset(self) -> None:
        """Forget the crash-loop count (after the user restarted the server by hand)."""
        self.gave_up = None
        self._exit_codes.clear()
        self._exit_times.clear()

    def close(self) -> None:
        """Stop watching (the server is stopping)."""
        self._closed = True
        self._wake.set()

    def summary(self) -> str:
        """One line for panels and status: what happened last, or "" if nothing did."""
        if self.gave_up:
            return self.gave_up
        if not self.crashes:
            return ""
        last = self.crashes[-1]
        when = time.strftime("%H:%M:%S", time.localtime(last.at))
        restarted = f"restarted after a crash {self.restarts}×" if self.restarts else "crashed"
        back = f", back in {last.recovered_in_s:.1f} s" if last.recovered_in_s is not None else ""
        return f"{restarted}; last at {when}: {last.exit}, {last.outcome}{back}"

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(1.0)  # the exit handler wakes it; the timeout also catches an exit it did not report
            self._wake.clear()
            self._guarded(self.check)

    def check(self) -> None:
        """Look at the server once: restart it if it exited unasked (unless in a crash loop), else heal its models.

        The watching thread calls this about once a second; a tritonserver it restarts dies with the calling thread."""
        self.checks += 1
        if not self._closed:
            down = self._is_down()
            if down is None:  # busy (a bind, a restart by hand): look again at the next tick
                return
            if not down:
                self._exit_codes.clear()  # a notice of an exit that was dealt with already
                if self.enabled:
                    self._heal_models()
                return
            if self.gave_up:
                return
            if not self._exit_codes:  # found down by polling: its exit handler normally follows at once
                self._wake.wait(0.5)
            code = self._exit_codes[-1] if self._exit_codes else None
            self._exit_codes.clear()
            self._on_exit(code)

    def _guarded(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as error:  # this thread must live on: tritonserver dies with the thread that started it
            self._write_log(f"[tritonnb] crash recovery failed: {type(error).__name__}: {error}")

    def _on_exit(self, exit_code: int | None) -> None:
        if self._closed:
            return
        now = self._clock()
        self._exit_times = [at for at in self._exit_times if at > now - WINDOW_S] + [now]  # older ones count no more
        crash = Crash(at=time.time(), exit=describe_exit(exit_code), log_tail=self._log_tail())
        self.crashes.append(crash)
        self._write_log(f"[tritonnb] tritonserver exited unexpectedly ({crash.exit})")
        if not self.enabled:
            crash.outcome = "not restarted (restart on crash is off)"
            self.gave_up = f"tritonserver {crash.exit}; restart on crash is off: %triton restart to start it again"
            return
        recent = exits_in_window(self._exit_times, now)
        if recent >= MAX_EXITS:
            crash.outcome = f"gave up: {recent} exits within {WINDOW_S:.0f} s"
            self.gave_up = (
                f"crash loop: tritonserver exited {recent} times within {WINDOW_S:.0f} s (last: {crash.exit}); "
                "not restarting it again: read %triton logs, then %triton restart"
            )
            self._write_log(f"[tritonnb] {self.gave_up}")
            return
        self.recovering = True
        try:
            relaunched = self._relaunch()
        except Exception as error:
            crash.outcome = f"restart failed: {error}"
            # still down: the next tick counts it as another exit and tries again, until the crash-loop guard stops
            self._write_log(f"[tritonnb] restart after a crash failed: {error}")
        else:
            crash.outcome = "restarted" if relaunched else "restarted by hand meanwhile"
            if relaunched:
                self.restarts += 1
            crash.recovered_in_s = self._clock() - now
            self._write_log(f"[tritonnb] tritonserver restarted {crash.recovered_in_s:.1f} s after it exited")
        finally:
            self.recovering = False
