"""The supervisor's crash-loop window on a fake clock: no tritonserver, no thread, no waiting."""

from __future__ import annotations

import signal

import pytest

from tritonnb.triton.supervisor import CRASHES_KEPT, MAX_EXITS, WINDOW_S, Supervisor, exits_in_window

GAVE_UP = "crash loop: tritonserver exited 3 times within 60 s (last: killed by SIGKILL)"


class FakeServer:
    """What the supervisor watches: a clock set by hand, a server that is up or down, and the log it writes."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.down = False
        self.relaunches = 0
        self.log: list[str] = []
        self.supervisor = Supervisor(
            relaunch=self._relaunch,
            is_down=lambda: self.down,
            log_tail=lambda: "the last lines",
            write_log=self.log.append,
            heal_models=lambda: None,
            clock=lambda: self.now,
        )

    def _relaunch(self) -> bool:
        self.relaunches += 1
        self.down = False
        return True

    def crash_at(self, at: float) -> None:
        """tritonserver is killed at clock time ``at``; the supervisor then looks at it once."""
        self.now = at
        self.down = True
        self.supervisor.notice_exit(-signal.SIGKILL)
        self.supervisor.check()


def test_three_exits_within_the_window_give_up_and_say_so():
    server = FakeServer()
    for at in (1000.0, 1010.0, 1059.9):
        server.crash_at(at)
    supervisor = server.supervisor
    assert server.relaunches == 2 and server.down
    assert supervisor.gave_up is not None and supervisor.gave_up.startswith(GAVE_UP)
    assert "%triton restart" in supervisor.gave_up and supervisor.summary() == supervisor.gave_up
    assert [c.outcome for c in supervisor.crashes] == ["restarted", "restarted", "gave up: 3 exits within 60 s"]
    assert f"[tritonnb] {supervisor.gave_up}" in server.log
    server.now += 3600.0
    supervisor.check()  # still down, an hour on: it stays given up until a restart by hand
    assert server.relaunches == 2 and len(supervisor.crashes) == 3


def test_exits_spread_beyond_the_window_keep_restarting():
    server = FakeServer()
    for at in (1000.0, 1040.0, 1080.0, 1120.0, 1160.0, 1200.0):  # two in any 60 s, never three
        server.crash_at(at)
    assert server.relaunches == 6 and not server.down
    assert server.supervisor.gave_up is None and server.supervisor.restarts == 6


def test_a_long_run_keeps_the_newest_crashes_and_counts_them_all():
    server = FakeServer()
    crashes = CRASHES_KEPT + 10
    for n in range(crashes):  # one every 10 minutes, for days
        server.crash_at(1000.0 + 600.0 * n)
    supervisor = server.supervisor
    assert supervisor.restarts == crashes and server.relaunches == crashes
    assert len(supervisor.crashes) == CRASHES_KEPT and {c.outcome for c in supervisor.crashes} == {"restarted"}
    assert len(supervisor._exit_times) == 1  # only the exits a crash loop could still count


@pytest.mark.parametrize(
    ("third_at", "gives_up"),
    [(1000.0 + WINDOW_S, False), (1000.0 + WINDOW_S - 0.001, True)],
    ids=["first-exactly-window-before", "first-just-inside"],
)
def test_the_window_edge(third_at: float, gives_up: bool):
    """An exit exactly ``WINDOW_S`` before the latest one is out of the window; a moment later, it is in."""
    server = FakeServer()
    for at in (1000.0, 1030.0, third_at):
        server.crash_at(at)
    assert (server.supervisor.gave_up is not None) is gives_up
    assert server.relaunches == (2 if gives_up else 3)


def test_a_restart_by_hand_starts_the_count_over():
    server = FakeServer()
    for at in (1000.0, 1010.0, 1020.0):
        server.crash_at(at)
    assert server.supervisor.gave_up
    server.now = 1030.0
    server.supervisor.reset()  # %triton restart
    server.down = False
    server.crash_at(1031.0)
    server.crash_at(1032.0)  # with the exits before the reset, 5 in the window: they no longer count
    assert server.supervisor.gave_up is None and server.relaunches == 4
    server.crash_at(1033.0)
    assert server.supervisor.gave_up is not None and server.supervisor.gave_up.startswith(GAVE_UP)


def test_exits_in_window_counts_those_less_than_the_window_before_now():
    exits = [0.0, 15.0, 50.0, 70.0]
    assert exits_in_window(exits, now=70.0) == 3  # 15, 50 and 70: 0 is not after 70 - 60
    assert exits_in_window(exits, now=60.0) == 3  # 0 is exactly 60 s before: out
    assert exits_in_window(exits, now=129.0) == 1 and exits_in_window(exits, now=130.0) == 0
    assert exits_in_window([], now=0.0) == 0
    assert MAX_EXITS == 3 and WINDOW_S == 60.0  # the figures the messages and tests above name
