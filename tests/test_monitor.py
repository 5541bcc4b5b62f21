"""The metrics pipeline against a real tritonserver: counters to rates, restarts, odd metric text, a server away."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from helpers import process_tree, wait_gone, wait_until

import tritonnb
from tritonnb.observe.metrics_text import parse_metrics
from tritonnb.observe.monitor import Monitor, target_for
from tritonnb.observe.poller import Poller
from tritonnb.ui import render
from tritonnb.ui.live_chart import LiveChart
from tritonnb.ui.panel import ModelStrip, Panel

SPEC = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}


def _send(count: int, batch: int = 2) -> None:
    call = tritonnb.client("double")
    for _ in range(count):
        call(np.ones((batch, 4), np.float32))


def _successes(server) -> int:
    """``double``'s successful requests as Triton's metrics count them now."""
    return Monitor(target_for(server=server)).poll().models["double"].success_total


def _counted(server, total: int) -> None:
    """Wait until Triton's metrics count ``total`` successes of ``double``: Triton counts after it has answered."""
    wait_until(lambda: _successes(server) == total, 10, f"Triton's metrics counted {total} requests")


def test_counters_become_rates_latency_split_and_batch_size(served):
    monitor = Monitor(target_for(server=served))
    first = monitor.poll()
    assert first.state == "READY" and first.version.startswith("2.")
    assert first.models["double"].success_per_s is None  # no window yet
    _send(12)
    _counted(served, 12)
    second = monitor.poll()
    model = second.models["double"]
    assert model.success_total == 12 and model.failure_total == 0
    window = second.time - first.time
    assert model.success_per_s == pytest.approx(12 / window, rel=0.01)
    assert set(model.latency_ms) == {"queue", "compute_input", "compute_infer", "compute_output"}
    assert all(v >= 0 for v in model.latency_ms.values()) and model.total_latency_ms > 0
    assert model.avg_batch_size == pytest.approx(2.0)
    assert model.pending == 0
    assert model.device == "cpu" and model.inputs == "x:float32[4]" and "max 32" in model.batching
    host = second.host
    deadline = time.monotonic() + 10
    while not host and time.monotonic() < deadline:  # Triton samples the host every 2 s; none until then
        time.sleep(0.2)
        host = Monitor(target_for(server=served)).poll().host
    assert host["memory_total_bytes"] > 0 and host["cpu_utilization"] >= 0
    assert second.gpus == []  # no GPU on this machine: neither DCGM families nor NVML
    assert len(model.history) == 2


def test_failures_are_counted_by_reason(served):
    tritonnb.bind(lambda x: (_ for _ in ()).throw(ValueError("no")), "failing", **SPEC)
    monitor = Monitor(target_for(server=served))
    monitor.poll()
    call = tritonnb.client("failing")
    for _ in range(3):
        with pytest.raises(Exception, match="no"):
            call(np.ones((1, 4), np.float32))
    # Triton counts a failure after it has answered the client: wait for the count, as for successes
    wait_until(
        lambda: Monitor(target_for(server=served)).poll().models["failing"].failures_by_reason == {"BACKEND": 3},
        10,
        "Triton's metrics counted the 3 failures by reason",
    )
    model = monitor.poll().models["failing"]
    assert model.failure_total == 3 and model.failure_per_s > 0
    assert model.failures_by_reason == {"BACKEND": 3}


def test_restart_resets_counters_without_negative_rates(served):
    monitor = Monitor(target_for(server=served))
    _send(10)
    monitor.poll()
    served.restart()
    _send(2)
    _counted(served, 2)
    after = monitor.poll().models["double"]
    assert after.success_total == 2
    assert after.success_per_s is None  # counters went down: the window is discarded, not negative
    _send(3)
    _counted(served, 5)
    assert monitor.poll().models["double"].success_per_s > 0


def test_metrics_url_is_derived_from_the_http_port():
    assert target_for("http://fleet-node:8000").metrics_url == "http://fleet-node:8002/metrics"
    assert target_for("127.0.0.1:9000/").http_url == "http://127.0.0.1:9000"
    with pytest.raises(ValueError, match="metrics URL"):
        target_for("http://fleet-node")


def test_unknown_and_missing_families():
    text = (
        "# HELP nv_inference_count Number of inferences\n# TYPE nv_inference_count counter\n"
        'nv_inference_count{model="m",version="2"} 7\n'
        "# HELP some_future_family Unknown to tritonnb\n# TYPE some_future_family gauge\n"
        'some_future_family{model="m"} 1\n'
        "# HELP nv_gpu_utilization GPU utilization\n# TYPE nv_gpu_utilization gauge\n"
        'nv_gpu_utilization{gpu_uuid="GPU-1"} 0.5\n'
    )
    per_model, failures, host, gpus = parse_metrics(text)
    assert per_model == {"m": {"inferences": 7, "version": "2"}}
    assert failures == {} and host == {}
    assert gpus == [{"uuid": "GPU-1", "utilization": 0.5}]
    assert parse_metrics("") == ({}, {}, {}, [])


def test_server_that_stops_answering_is_down_with_a_reason(served):
    remote = Monitor(target_for(served.http_url.replace("127.0.0.1", "localhost"), metrics_url=served.metrics_url))
    local = Monitor(target_for(server=served))
    assert remote.poll().state == "READY"
    assert "double" in remote.poll().models  # no token: the models come from the metrics
    _send(3)
    _counted(served, 3)
    assert local.poll().models["double"].success_total == 3
    processes = process_tree(served.pid)
    served.supervisor.enabled = False  # as with --no-restart: it stays down (recovery is tested in test_recovery)
    os.kill(served.pid, signal.SIGKILL)
    assert wait_gone(processes[:1]) == []
    wait_until(lambda: served.state == "DOWN", 10, "the server noticed that tritonserver exited")
    away = remote.poll()
    assert away.state == "DOWN" and "no answer" in away.reason
    assert away.models["double"].state == "UNAVAILABLE"
    down = local.poll()
    assert down.state == "DOWN" and down.reason == "tritonserver exited" and down.log_tail
    assert down.models["double"].state == "UNAVAILABLE"
    assert down.models["double"].success_total == 3  # the last known totals stay on show
    assert "DOWN" in render.health_html(down)
    chart = LiveChart()
    assert chart.update(down).startswith(b"\x89PNG")  # the chart keeps the data it had, and says why it stopped
    assert chart.note.startswith("DOWN: last data")
    assert chart.histories["double"] == down.models["double"].history and down.models["double"].history
    wait_until(lambda: served.supervisor.gave_up, 10, "the supervisor recorded the exit it does not restart after")
    assert "restart on crash is off" in render.health_html(local.poll())
    served.supervisor.enabled = True
    served.restart()
    assert local.poll().state == "READY" and remote.poll().state == "READY"


def test_one_poller_serves_many_panels_and_stops_with_the_server(served):
    target = target_for(server=served)
    panels = [Panel(target, interval_s=0.5) for _ in range(3)]
    strip = ModelStrip(target, "double", interval_s=0.5)
    poller = Poller.for_target(target)
    assert all(p._poller is poller for p in panels) and strip._poller is poller
    threads = [t for t in threading.enumerate() if t.name == "tritonnb-poller"]
    assert len(threads) == 1
    _send(5)
    burst = poller.polls  # each new subscriber is served at once; from the poll that starts next, at the interval
    wait_until(lambda: poller.polls >= burst + 2, 10, "the poller served its new subscribers")
    before = poller.polls
    started = time.monotonic()
    wait_until(lambda: poller.polls >= before + 3, 10, "three more polls")
    assert time.monotonic() - started >= 0.9  # 0.5 s apart (over 1 s), not four subscribers' worth (under 0.4 s)
    assert 'data-model="double"' in panels[0].models.value and "READY" in panels[0].health.value
    assert ">5</td>" in panels[1].models.value and "READY" in strip.value
    assert bytes(panels[0].chart_image.value).startswith(b"\x89PNG") and "double" in panels[0].live_chart.histories
    assert "double" in panels[0].chart().description and panels[1].live_chart is panels[0].live_chart  # drawn once
    panels[0].close()
    panels[1].controls.pause.value = True
    assert poller.running
    panels[2].close()
    strip.close()
    wait_until(lambda: not poller.running, 10, "the poller stopped when the last subscriber that polls left")
    panels[1].controls.pause.value = False
    assert poller.running
    tritonnb.stop()
    wait_until(lambda: not poller.running, 10, "the poller stopped with the server")
    assert "STOPPED" in panels[1].health.value


def test_model_shows_loading_during_a_reload(served):
    monitor = Monitor(target_for(server=served))
    seen = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.add(monitor.poll().models["double"].state)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        tritonnb.bind(lambda x: x * 3, "double", inputs=["x:float32[-1]"], outputs=["y:float32[-1]"])
    finally:
        done.set()
        watcher.join()
    assert "LOADING" in seen
    assert monitor.poll().models["double"].state == "READY"


def test_metrics_api_returns_plain_data(served):
    tritonnb.metrics()
    _send(4)
    _counted(served, 4)
    data = tritonnb.metrics()
    assert data["state"] == "READY"
    assert data["models"]["double"]["success_total"] == 4
    assert data["models"]["double"]["success_per_s"] > 0
    assert isinstance(data["models"]["double"]["total_latency_ms"], float)


def test_poller_survives_a_failing_poll_and_restarts_after_the_last_unsubscribe(served, monkeypatch):
    poller = Poller(target_for(server=served))
    seen = []
    original = Monitor.poll
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("metrics endpoint exploded")
        return original(self)

    monkeypatch.setattr(Monitor, "poll", flaky)
    handle = poller.subscribe(seen.append, 0.2)
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert seen[0].state == "DOWN" and "metrics endpoint exploded" in seen[0].reason
    assert seen[1].state == "READY"
    poller.unsubscribe(handle)
    again = []
    poller.subscribe(again.append, 0.2)  # right after the last one left: must still be polled
    deadline = time.monotonic() + 5
    while not again and time.monotonic() < deadline:
        time.sleep(0.05)
    assert again and again[0].state == "READY"
