"""The fleet view: three real tritonservers in one table, one of them killed; p50 and browser URLs in the panels."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from helpers import fp32, free_ports, infer_json, process_tree, wait_gone, wait_ports_free
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output
from ipywidgets.widgets.widget import _instances

import tritonnb
from tritonnb import state
from tritonnb.observe.metrics_text import PHASES, parse_metrics
from tritonnb.observe.monitor import ModelMetrics, Monitor, Snapshot, target_for
from tritonnb.triton.ports import port_is_free
from tritonnb.triton.settings import resolve_settings
from tritonnb.ui import render
from tritonnb.ui.fleet_panel import FleetPanel
from tritonnb.ui.panel import Panel

SPEC = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}
SERVE = """
import sys, tritonnb
http, grpc, metrics, config = sys.argv[1:]
options = {"metrics_config": [config]} if config else {}
tritonnb.start(http_port=int(http), grpc_port=int(grpc), metrics_port=int(metrics), restart_on_crash=False, **options)
tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
tritonnb.serve_forever(0.2)
"""
X = [fp32("x", [1, 4], [1, 2, 3, 4])]


def _consecutive_ports() -> list[int]:
    """HTTP, gRPC and metrics on three consecutive free ports: a fleet finds each server's metrics on HTTP + 2."""
    while True:
        http = free_ports(1)[0]
        ports = [http, http + 1, http + 2]
        if all(port_is_free("127.0.0.1", port) for port in ports[1:]):
            return ports


def _until(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _row(fleet: FleetPanel, url: str) -> str:
    page = fleet.table.value
    start = page.index(f'<tr data-server="{url}">')
    return page[start : page.index("</tr>", start)]


def _cell(row: str, css: str) -> str:
    """The text of the element with class ``css`` in a row, tags stripped ("" while the row waits for a sample)."""
    match = re.search(rf'<(\w+) class="{css}"[^>]*>(.*?)</\1>', row)
    return re.sub(r"<[^>]+>", "", match.group(2)).strip() if match else ""


def _requests(fleet: FleetPanel, url: str) -> int:
    return int(_cell(_row(fleet, url), "tnb-fleet-requests") or -1)


def _rate(fleet: FleetPanel, url: str) -> float:
    text = _cell(_row(fleet, url), "tnb-fleet-rate")
    return 0.0 if text in ("", "–") else float(text.replace(",", ""))


@pytest.fixture
def three_servers(tmp_path):
    """Three tritonnb servers, each in its own Python process (the third without latency summaries)."""
    configs = ["", "", "summary_latencies=false"]
    started = []
    for index, config in enumerate(configs):
        ports = _consecutive_ports()
        log = open(tmp_path / f"server{index}.log", "w")  # noqa: SIM115 - closed at teardown
        command = [sys.executable, "-c", SERVE, *map(str, ports), config]
        started.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), ports, log))
    trees = []
    try:
        for index, (process, ports, _) in enumerate(started):
            url = f"http://127.0.0.1:{ports[0]}"
            ready = _until(lambda p=process, u=url: p.poll() is not None or _answers(u), 90)
            assert ready and process.poll() is None, (tmp_path / f"server{index}.log").read_text()[-3000:]
            trees.append(process_tree(process.pid))
        yield [(f"http://127.0.0.1:{ports[0]}", process) for process, ports, _ in started]
    finally:
        for process, _, _ in started:
            process.send_signal(signal.SIGINT)  # serve_forever stops its server on Ctrl+C
        for process, _, log in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        assert wait_gone([p for tree in trees for p in tree]) == []
        assert wait_ports_free([port for _, ports, _ in started for port in ports]) == []


def _answers(url: str) -> bool:
    """Whether model ``double`` at ``url`` answers a request (False while nothing listens)."""
    try:
        return infer_json(url, "double", X, timeout=2)[0] == 200
    except Exception:  # a server killed mid-request may answer half a response: not an answer
        return False


class Load(threading.Thread):
    """Requests to every URL in ``self.urls`` in turn, about 20 per second each, until stopped."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = list(urls)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for url in list(self.urls):
                _answers(url)
            self.done.wait(0.05)

    def stop(self) -> None:
        self.done.set()
        self.join()


def test_a_fleet_of_three_servers_one_killed(three_servers):
    urls = [url for url, _ in three_servers]
    fleet = tritonnb.panel(urls=urls, interval_s=0.5)
    assert isinstance(fleet, FleetPanel) and repr(fleet).startswith("tritonnb fleet panel of 3 servers")
    load = Load(urls)
    load.start()
    try:

        def all_serving() -> bool:
            rows = [_row(fleet, url) for url in urls]
            return all(_cell(r, "tnb-server-state") == "READY" for r in rows) and all(_rate(fleet, u) > 0 for u in urls)

        assert _until(all_serving), fleet.table.value
        before = [_requests(fleet, url) for url in urls]
        assert _until(lambda: all(_requests(fleet, u) > n for u, n in zip(urls, before))), fleet.table.value
        row = _row(fleet, urls[0])
        assert _cell(row, "tnb-fleet-models") == "1" and "double" in row
        assert re.fullmatch(r"\d+\.\d\d", _cell(row, "tnb-fleet-p50")), row  # a median: summaries are on by default
        assert _until(lambda: re.fullmatch(r"avg \d+\.\d\d", _cell(_row(fleet, urls[2]), "tnb-fleet-p50")))
        assert _cell(row, "tnb-fleet-failures").startswith("0 ")
        assert "3 READY" in fleet.table.value

        victim = urls[1]
        load.urls.remove(victim)
        (tritonserver,) = [p for p in process_tree(three_servers[1][1].pid) if p.name() == "tritonserver"]
        os.kill(tritonserver.pid, signal.SIGKILL)
        assert wait_gone([tritonserver]) == []
        assert _until(lambda: _cell(_row(fleet, victim), "tnb-server-state") == "DOWN"), fleet.table.value
        assert "no answer from" in _cell(_row(fleet, victim), "tnb-fleet-reason")
        survivors = [urls[0], urls[2]]
        before = [_requests(fleet, url) for url in survivors]
        assert _until(lambda: all(_requests(fleet, u) > n + 5 for u, n in zip(survivors, before))), fleet.table.value
        assert all(_cell(_row(fleet, url), "tnb-server-state") == "READY" for url in survivors)
        assert all(_rate(fleet, url) > 0 for url in survivors)
        assert _cell(_row(fleet, victim), "tnb-server-state") == "DOWN" and "2 READY, 1 DOWN" in fleet.table.value
    finally:
        load.stop()
        fleet.close()
    assert _until(lambda: not any(poller.running for poller in fleet._pollers), 5)


def test_fleet_and_panel_of_one_server_share_its_poller_and_show_its_p50(served):
    same = served.http_url.removeprefix("http://") + "/"  # the same server, written another way
    fleet = tritonnb.panel(urls=[served.http_url, same], interval_s=0.5)
    panel = tritonnb.panel(interval_s=0.5)
    try:
        assert isinstance(panel, Panel) and len(fleet.targets) == 1  # one row per server
        assert fleet.targets[0] == panel.target and fleet.targets[0].browser_url == served.browser_route.http
        assert fleet._pollers == [panel._poller] and state.pollers[panel.target.key] is panel._poller
        call = tritonnb.client("double")
        for _ in range(5):
            call(np.ones((1, 4), np.float32))
        assert _until(lambda: 'class="tnb-fleet-requests">5<' in fleet.table.value), fleet.table.value
        assert re.fullmatch(r"\d+\.\d\d", _cell(_row(fleet, served.http_url), "tnb-fleet-p50"))
        assert _until(lambda: re.search(r'class="tnb-p50"><span[^>]*>\d+\.\d\d<', panel.models.value))
        assert "HTTP (kernel)" in panel.health.value
        assert Monitor(target_for(server=served)).poll().models["double"].p50_ms > 0
        fleet.controls.pause.value = True
        panel.close()
        assert _until(lambda: not panel._poller.running, 5)  # neither watches now
        fleet.controls.pause.value = False
        assert panel._poller.running
    finally:
        fleet.close()
        panel.close()
    assert _until(lambda: not panel._poller.running, 5)


def test_triton_panel_magic_with_several_urls_shows_a_fleet(shell):
    nowhere = [f"http://127.0.0.1:{port}" for port in free_ports(2)]  # nothing listens there: rows go DOWN
    line = f"panel --url {nowhere[0]} --url {nowhere[1]} --interval 0.5"
    with capture_output() as out:
        shell.run_line_magic("triton", line)
    (shown,) = [o.data for o in out.outputs if "application/vnd.jupyter.widget-view+json" in o.data]
    fleet = _instances[shown["application/vnd.jupyter.widget-view+json"]["model_id"]]
    try:
        assert isinstance(fleet, FleetPanel) and [t.http_url for t in fleet.targets] == nowhere
        assert _until(lambda: all(_cell(_row(fleet, u), "tnb-server-state") == "DOWN" for u in nowhere))
        assert "no answer from" in _row(fleet, nowhere[0])
    finally:
        fleet.close()
    with pytest.raises(UsageError, match="--metrics-url goes with a single --url"):
        shell.run_line_magic("triton", f"{line} --metrics-url http://127.0.0.1:1/metrics")


def _model(name: str, **figures) -> ModelMetrics:
    return ModelMetrics(name=name, state="READY", **figures)


def test_fleet_rows_render_state_p50_of_the_busiest_model_failures_and_links():
    busy = _model("busy", success_per_s=40.0, success_total=400, p50_ms=3.25, failure_total=2, failure_per_s=0.5)
    quiet = _model("quiet", success_per_s=1.0, success_total=10, p50_ms=9.0)
    ready = Snapshot(
        time=0,
        http_url="http://a:8000",
        metrics_url="http://a:8002/metrics",
        state="READY",
        browser_url="/user/alice/proxy/8000",
        models={"busy": busy, "quiet": quiet},
    )
    averaged = _model("m", success_per_s=2.0, latency_ms=dict(zip(PHASES, (0.25, 0.25, 0.75, 0.25))))
    other = Snapshot(time=0, http_url="http://b:8000", metrics_url="", state="READY", models={"m": averaged})
    down = Snapshot(
        time=0,
        http_url="http://c:8000",
        metrics_url="",
        state="DOWN",
        reason="no answer from http://c:8000: refused <x>",
        models={"m": ModelMetrics(name="m", state="UNAVAILABLE", success_total=7)},
    )
    rows = [("http://a:8000", ready), ("http://b:8000", other), ("http://c:8000", down), ("http://d:8000", None)]
    page = render.fleet_html(rows)
    assert "4 servers: 2 READY, 1 DOWN, 1 WAITING" in page
    a = page[page.index('data-server="http://a:8000"') :].split("</tr>")[0]
    assert _cell(a, "tnb-fleet-rate") == "41.0" and _cell(a, "tnb-fleet-requests") == "410"
    assert _cell(a, "tnb-fleet-p50") == "3.25 (busy)"  # the busiest model's median, named
    assert _cell(a, "tnb-fleet-failures") == "2 (0.5/s)" and _cell(a, "tnb-fleet-models") == "2"
    assert 'href="/user/alice/proxy/8000/v2/health/ready" target="_blank"' in a and "tnb-browser-url" in a
    b = page[page.index('data-server="http://b:8000"') :].split("</tr>")[0]
    assert _cell(b, "tnb-fleet-p50") == "avg 1.50"  # no summaries: the average, never called a p50
    assert "tnb-browser-url" not in b
    c = page[page.index('data-server="http://c:8000"') :].split("</tr>")[0]
    assert _cell(c, "tnb-server-state") == "DOWN" and "refused &lt;x&gt;" in c and "(UNAVAILABLE)" in c
    assert _cell(c, "tnb-fleet-rate") == "–" and _cell(c, "tnb-fleet-p50") == "–"
    assert "waiting for the first sample" in page[page.index('data-server="http://d:8000"') :]
    health = render.health_html(ready)
    assert "HTTP (kernel) <code>http://a:8000</code>" in health
    assert 'HTTP (browser) <a class="tnb-browser-url" href="/user/alice/proxy/8000/v2/health/ready"' in health
    assert "tnb-browser-url" not in render.health_html(other)
    models = render.models_html(ready)
    assert "<th>p50 ms</th>" in models and ">3.25</span>" in models
    assert ">avg 1.50</span>" in render.models_html(other)


def test_median_comes_from_the_summary_and_summaries_are_on_unless_configured():
    text = (
        "# HELP nv_inference_request_summary_us Summary of inference request duration in microseconds\n"
        "# TYPE nv_inference_request_summary_us summary\n"
        'nv_inference_request_summary_us_count{model="m",version="1"} 20\n'
        'nv_inference_request_summary_us_sum{model="m",version="1"} 73976\n'
        'nv_inference_request_summary_us{model="m",version="1",quantile="0.5"} 3101\n'
        'nv_inference_request_summary_us{model="m",version="1",quantile="0.9"} 4059\n'
        'nv_inference_request_summary_us{model="idle",version="1",quantile="0.5"} Nan\n'
    )
    per_model, _, _, _ = parse_metrics(text)
    assert per_model == {"m": {"p50_ms": pytest.approx(3.101)}}  # an empty window (NaN) is no figure
    assert resolve_settings().config["metrics_config"] == ("summary_latencies=true",)
    assert resolve_settings(metrics_config=["summary_latencies=false"]).config["metrics_config"] == [
        "summary_latencies=false"
    ]
