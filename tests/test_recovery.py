"""Crash recovery on a real tritonserver: kill -9 it and every model answers again, with no user action."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import tempfile
import threading

import psutil
import pytest
from helpers import command_line, fp32, free_ports, infer_json, port_ports, process_tree, wait_gone, wait_until

import tritonnb
from tritonnb.observe.monitor import Monitor, target_for
from tritonnb.ui import render

ANSWER_DEADLINE_S = 60.0  # generous: how long recovery takes is measured by benchmarks/soak.py, not asserted here


def _leftovers() -> set[pathlib.Path]:
    """Shared memory of the stubs and the python backend, and Triton's copies of loaded models, that no running
    process uses (another server on this machine, a second kernel say, keeps its own while it runs)."""
    found = {
        *pathlib.Path("/dev/shm").glob("psm_*"),
        *pathlib.Path("/dev/shm").glob(f"pytrtion{os.getpid()}-*"),
        *pathlib.Path(tempfile.gettempdir()).glob("folder*"),
    }
    return found - _in_use()


def _in_use() -> set[pathlib.Path]:
    """The model copies that running stubs serve from, and the shared memory that other running processes have
    mapped (not this one: the kernel must not hold on to a stopped server's)."""
    used: set[pathlib.Path] = set()
    for process in psutil.process_iter(["cmdline"]):
        if process.pid == os.getpid():
            continue
        command = process.info["cmdline"] or []
        if len(command) > 1 and command[0].endswith("triton_python_backend_stub"):
            used.add(pathlib.Path(command[1]).parent.parent)  # <copy>/<version>/model.py
        with contextlib.suppress(OSError):
            for line in pathlib.Path(f"/proc/{process.pid}/maps").read_text().splitlines():
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                    used.add(pathlib.Path(fields[5].removesuffix(" (deleted)")))
    return used


@pytest.fixture
def served():
    """A server on free ports with a batched and an unbatched model; stopped afterwards with nothing left."""
    before = _leftovers()
    server = tritonnb.start(**port_ports(free_ports()))
    tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    tritonnb.bind(lambda x: x * 3, "triple", inputs=["x:float32[2]"], outputs=["y:float32[2]"], max_batch_size=0)
    yield server
    processes = process_tree(server.pid) if server.state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == []
    assert server.wait_stopped()
    assert not server.home.exists() and not server.sockets.exists()
    assert _leftovers() - before == set(), "shared memory or model copies outlived the crashes and the stop"


def _all_answer(server) -> bool:
    try:
        doubled = infer_json(server.http_url, "double", [fp32("x", [1, 2], [1, 2])], timeout=2)
        tripled = infer_json(server.http_url, "triple", [fp32("x", [2], [1, 2])], timeout=2)
    except OSError:
        return False
    return doubled == (200, _reply("double", [1, 2], [2, 4])) and tripled == (200, _reply("triple", [2], [3, 6]))


def _reply(model: str, shape: list[int], data: list[float]) -> dict:
    return {
        "model_name": model,
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": shape, "data": data}],
    }


def _stays_down(server, pid: int) -> None:
    """The supervisor looks at the down server twice more and leaves it down: tritonserver is still ``pid``."""
    checks = server.supervisor.checks
    wait_until(lambda: server.supervisor.checks >= checks + 2, 10, "the supervisor looked at the server again")
    assert server.state == "DOWN" and server.pid == pid


def _kill_and_wait_for_answers(server) -> psutil.Process:
    """kill -9 tritonserver; return its (dead) process once every model answers again from a new one."""
    killed = psutil.Process(server.pid)
    old_tree = process_tree(server.pid)
    os.kill(killed.pid, signal.SIGKILL)
    wait_until(
        lambda: server.pid != killed.pid and _all_answer(server),
        ANSWER_DEADLINE_S,
        lambda: f"models did not answer again; state {server.state}:\n{server.logs(30)}",
        interval=0.1,
    )
    assert wait_gone(old_tree) == [], "the killed server's stubs outlived the recovery"
    return killed


def test_kill_9_restarts_on_the_same_ports_and_every_model_answers_again(served):
    urls = (served.http_url, served.grpc_url, served.metrics_url)
    old_prefix = served._process.shm_prefix
    killed = _kill_and_wait_for_answers(served)
    assert (served.http_url, served.grpc_url, served.metrics_url) == urls
    status = served.status()
    assert status["state"] == "READY" and status["restarts"] == 1 and status["restart_on_crash"]
    crash = status["crashes"][-1]
    assert crash["exit"] == "killed by SIGKILL" and crash["outcome"] == "restarted"
    assert crash["recovered_in_s"] > 0 and crash["log_tail"]
    assert "restarted after a crash 1×" in status["recovery"]
    assert "tritonserver exited unexpectedly (killed by SIGKILL)" in served.logs(200)
    assert not list(pathlib.Path("/dev/shm").glob(f"{old_prefix}*")), "the killed server's shared memory is left"
    assert not killed.is_running() or killed.status() == psutil.STATUS_ZOMBIE
    # the models are the user's functions, bound as before: a swap and a reload still work
    assert tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[2]"], outputs=["y:float32[2]"]).result.action
    assert _all_answer(served)


def test_a_crash_frees_the_killed_servers_handle(served):
    """The exit handler runs on a thread whose gevent hub keeps that thread's last frame after it is destroyed: the
    frame held the killed server's command, its threads' state and its environment, 150 KB a crash."""
    import gc

    killed = _kill_and_wait_for_answers(served)
    gc.collect()
    commands = [o for o in gc.get_objects() if type(o).__name__ == "RunningCommand" and type(o).__module__ == "sh"]
    assert killed.pid not in {command.process.pid for command in commands}, "the killed server's handle is kept"
    assert served.pid in {command.process.pid for command in commands}


def test_crash_shows_in_status_text_panel_and_strip(served, capsys):
    _kill_and_wait_for_answers(served)
    from tritonnb.ui.report import format_status

    text = format_status(served.status())
    assert "restart on crash: on; restarts so far: 1" in text and "killed by SIGKILL" in text
    snapshot = Monitor(target_for(server=served)).poll()
    assert snapshot.state == "READY" and "restarted after a crash 1×" in snapshot.recovery
    assert "restarted after a crash" in render.health_html(snapshot)
    assert "restarted after a crash" in render.strip_html("double", snapshot)


def test_clients_under_load_get_answers_again_after_a_crash(served):
    stop = threading.Event()
    results: list[bool] = []

    def client() -> None:
        while not stop.is_set():
            results.append(_all_answer(served))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_until(lambda: sum(results) >= len(threads), 30, "the clients got answers before the crash")
    _kill_and_wait_for_answers(served)
    answered_before = len(results)
    wait_until(lambda: len(results) >= answered_before + 3 * len(threads), 30, "the clients sent requests after it")
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    after = results[answered_before:]
    assert after and all(after), "requests failed after the recovery"
    assert served.state == "READY"


def test_a_crash_loop_gives_up_and_says_so_until_a_restart_by_hand(served):
    _kill_and_wait_for_answers(served)
    _kill_and_wait_for_answers(served)
    last = served.pid
    os.kill(last, signal.SIGKILL)  # the third exit within 60 s
    wait_until(lambda: served.supervisor.gave_up, ANSWER_DEADLINE_S, lambda: f"no crash loop seen:\n{served.logs(30)}")
    _stays_down(served, last)
    status = served.status()
    assert status["state"] == "DOWN"
    assert "crash loop: tritonserver exited 3 times within 60 s" in status["recovery"]
    assert status["crashes"][-1]["outcome"].startswith("gave up")
    assert "crash loop" in served.logs(50)
    served.restart()  # by hand: serving again, and the count starts over
    assert _all_answer(served) and served.supervisor.gave_up is None
    _kill_and_wait_for_answers(served)


def test_no_restart_leaves_it_down_and_says_why(shell):
    http, grpc, metrics = free_ports()
    shell.run_line_magic("triton", f"start --no-restart --http-port {http} --grpc-port {grpc} --metrics-port {metrics}")
    server = tritonnb.server()
    try:
        assert not server.supervisor.enabled
        tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
        pid = server.pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: server.supervisor.gave_up, ANSWER_DEADLINE_S, "the supervisor recorded the exit")
        _stays_down(server, pid)
        assert [c["outcome"] for c in server.status()["crashes"]] == ["not restarted (restart on crash is off)"]
        assert "restart on crash is off" in server.status()["recovery"]
        server.restart()
        assert infer_json(server.http_url, "double", [fp32("x", [1, 2], [1, 2])])[0] == 200
    finally:
        tritonnb.stop()


def test_a_killed_stub_gets_its_model_loaded_again(served):
    stubs = [p for p in process_tree(served.pid) if "triton_python_backend_stub" in " ".join(command_line(p))]
    victim = next(p for p in stubs if "triple_0_0" in command_line(p))
    victim.kill()
    wait_until(lambda: _all_answer(served), ANSWER_DEADLINE_S, lambda: f"no answers:\n{served.logs(30)}", interval=0.1)
    models = served.status()["models"]
    assert models["triple"]["stub_restarts"] == 1 and models["double"]["stub_restarts"] == 0
    assert served.status()["restarts"] == 0  # the server itself went on
