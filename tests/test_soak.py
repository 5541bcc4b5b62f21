"""The soak benchmark's 1-minute version: requests over HTTP and gRPC through swaps, signature changes, load tests
and a kill -9 of tritonserver. Asserts what the run counted, never how long anything took (see benchmarks/soak.py
for the figures)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import psutil
import pytest

from benchmarks.soak import Recovery, Schedule, crash_windows, split_failures

ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 300
FLAGS = ["--minutes", "1", "--swap-every", "5", "--reshape-every", "20", "--perf-every", "25"]
FLAGS += ["--kill-every", "30", "--mark-every", "20"]

pytestmark = pytest.mark.timeout(RUN_TIMEOUT_S + 60)  # the first test using ``soak`` waits for the whole run


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The JSON of one 1-minute soak, with its exit code and output tails."""
    path = tmp_path_factory.mktemp("soak") / "soak.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *FLAGS, "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    output = f"exit code {completed.returncode}\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}"
    assert path.is_file(), f"the soak wrote no JSON:\n{output}"
    result = json.loads(path.read_text())
    result["output"] = output
    result["exit_code"] = completed.returncode
    return result


def _kills_scheduled(result: dict[str, Any]) -> int:
    """Kills fall at multiples of --kill-every strictly inside the run."""
    args = result["args"]
    return sum(1 for k in range(1, 1000) if k * args["kill_every"] < args["minutes"] * 60)


def test_the_run_passes_and_answers_requests(soak: dict[str, Any]) -> None:
    assert soak["exit_code"] == 0 and soak["ok"], f"{soak['problems']}\n{soak['output']}"
    assert soak["requests"]["total"] > 0
    assert soak["requests"]["ok"] > 0
    assert set(soak["requests"]["ok_by_protocol"]) == {"http", "grpc"}


def test_no_request_fails_outside_a_crash_window(soak: dict[str, Any]) -> None:
    requests = soak["requests"]
    assert requests["failed_outside_windows"] == 0, (
        f"{requests['reasons_outside']}\nfirst: {requests['outside'][:5]}\nwindows: {soak['windows']}\n"
        f"log:\n{soak['logs_tail']}"
    )
    assert requests["failed"] == requests["failed_inside_windows"]


def test_every_kill_recovers(soak: dict[str, Any]) -> None:
    recoveries = soak["recoveries"]
    assert len(recoveries) == _kills_scheduled(soak) + 1 >= 2  # and the warm-up's
    assert [r["at_s"] < 0 for r in recoveries] == [True] + [False] * _kills_scheduled(soak), recoveries
    for recovery in recoveries:
        assert recovery["answered_after_s"] is not None, recovery
        assert recovery["outcome"] == "restarted", recovery
        assert recovery["new_pid"] not in (None, recovery["killed_pid"]), recovery
        assert recovery["old_left"] == 0, recovery


def test_every_cell_runs_ok(soak: dict[str, Any]) -> None:
    cells = soak["cells"]
    assert cells["failed"] == 0, cells["failed_list"]
    assert cells["runs"] > 0
    assert cells["actions"].get("swapped", 0) > 0 and cells["actions"].get("reloaded", 0) > 0, cells["actions"]


def test_perf_bursts_run(soak: dict[str, Any]) -> None:
    perf = soak["perf"]
    assert perf["bursts"] >= 1, perf
    assert perf["failed"] == 0, perf["list"]
    assert all(burst["requests"] > 0 for burst in perf["list"]), perf["list"]


def test_marks_are_recorded(soak: dict[str, Any]) -> None:
    labels = [mark["label"] for mark in soak["marks"]]
    assert labels[0] == "start" and labels[-2:] == ["end", "after stop"] and len(labels) >= 4, labels
    for mark in soak["marks"][:-1]:
        assert mark["server_processes"] >= 2 and mark["rss_mib"] > 0 and mark["threads"] > 0, mark
    after_stop = soak["marks"][-1]
    assert after_stop["server_processes"] == 0 and after_stop["shm_ours"] == 0, after_stop


def test_no_server_process_is_left(soak: dict[str, Any]) -> None:
    seen = soak["server_processes_seen"]
    assert len(seen) >= 2 * (1 + len(soak["recoveries"])), seen  # tritonserver and a stub, per server
    assert soak["server_processes_left"] == []
    alive = []
    for pid, created in seen:
        try:
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append((pid, process.name()))
        except psutil.NoSuchProcess:
            continue
    assert alive == [], f"processes of the soak's server still run: {alive}"


# -- the soak's own bookkeeping, without a server ---------------------------------------------------------------
def test_crash_windows_run_from_the_kill_to_a_second_after_the_first_answer() -> None:
    recoveries = [
        Recovery(at=100.0, at_s=10.0, killed_pid=1, answered_after_s=2.0),
        Recovery(at=200.0, at_s=110.0, killed_pid=2),  # never answered: the window runs to the end
    ]
    windows = crash_windows(recoveries, end=300.0)
    assert windows == [(100.0, 103.0), (200.0, 300.0)]
    failures = [(t, "http", "x") for t in (99.9, 100.0, 103.0, 103.1, 199.0, 250.0)]
    inside, outside = split_failures(failures, windows)
    assert [t for t, _, _ in inside] == [100.0, 103.0, 250.0]
    assert [t for t, _, _ in outside] == [99.9, 103.1, 199.0]


def test_schedule_runs_each_event_on_its_period_inside_the_run() -> None:
    schedule = Schedule({"mark": 20, "kill": 30, "reshape": 20, "swap": 5, "perf": 25}, duration_s=60)
    events: list[tuple[str, float]] = []
    while (event := schedule.next()) is not None:
        events.append(event)
        schedule.done(event[0], event[1])
    at = {name: [t for n, t in events if n == name] for name in schedule.periods}
    assert at["kill"] == [30] and at["mark"] == [20, 40] and at["reshape"] == [20, 40] and at["perf"] == [25, 50]
    assert at["swap"] == [5, 10, 15, 25, 30, 35, 45, 50, 55]  # the reshapes at 20 and 40 re-ran the cell
    assert events[events.index(("kill", 30)) + 1] == ("swap", 30)  # at one time: mark, kill, reshape, swap, perf
    assert events[:3] == [("swap", 5), ("swap", 10), ("swap", 15)] and events[3:5] == [("mark", 20), ("reshape", 20)]


def test_a_late_event_runs_once_and_a_burst_is_skipped_before_a_kill() -> None:
    schedule = Schedule({"mark": 600, "kill": 30, "reshape": 600, "swap": 5, "perf": 600}, duration_s=60)
    schedule.done("swap", 17.0)  # ran late (a recovery held it up): next at 20, not 10 and 15
    assert schedule.next() == ("swap", 20)
    assert schedule.kill_due_within(20.0, 15) and not schedule.kill_due_within(10.0, 15)
    schedule.done("kill", 30.0)  # the next kill, at 60, falls at the end: no burst is held back for it
    assert not schedule.kill_due_within(50.0, 15)
