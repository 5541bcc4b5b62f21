"""The live panel in a real browser: JupyterLab started here, headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import urllib.request

import nbformat
import numpy as np
import psutil
import pytest
from helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, free_ports, process_tree, wait_gone

REQUESTS = 25


def _notebook(path: pathlib.Path, http: int, grpc: int, metrics: int, *more_cells: str) -> None:
    """Start Triton on these ports, serve ``double``, show the panel, then ``more_cells``."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell(
            f"%load_ext tritonnb\n%triton start --http-port {http} --grpc-port {grpc} --metrics-port {metrics}"
        ),
        nbformat.v4.new_code_cell(
            "%%triton_model double --input x:float32[4] --output y:float32[4]\ndef double(x):\n    return x * 2"
        ),
        nbformat.v4.new_code_cell("%triton panel --interval 0.5"),
        *map(nbformat.v4.new_code_cell, more_cells),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab on a free loopback port, serving ``tmp_path``; stopped (with its kernels) afterwards."""
    yield from _jupyterlab(tmp_path, "/")


@pytest.fixture
def hub_style_jupyterlab(tmp_path):
    """JupyterLab under ``/user/alice/`` as JupyterHub serves it, with jupyter-server-proxy (a tritonnb dependency)."""
    yield from _jupyterlab(tmp_path, "/user/alice/")


def _jupyterlab(tmp_path: pathlib.Path, base_url: str):
    port = free_ports(1)[0]
    token = "tritonnb-test"
    env = dict(
        os.environ,
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
        JUPYTER_DATA_DIR=str(tmp_path / "data"),
    )
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={tmp_path}",
        f"--ServerApp.base_url={base_url}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(tmp_path / "jupyterlab.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}{base_url.rstrip('/')}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError((tmp_path / "jupyterlab.log").read_text()) from None
            time.sleep(0.2)
    yield base, token, tmp_path
    server.send_signal(signal.SIGINT)  # JupyterLab asks to confirm on the first SIGINT; the second one stops it
    time.sleep(0.5)
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
    log.close()


def _tritonserver_on(port: int) -> psutil.Process:
    for process in psutil.process_iter(["name", "cmdline"]):
        if process.info["name"] == "tritonserver" and f"{port}" in (process.info["cmdline"] or []):
            return process
    raise LookupError(f"no tritonserver with --http-port {port}")


def _run_all_cells(page) -> None:
    """Run > Run All Cells once the kernel is idle; again if a busy page swallowed the click (up to 3 tries)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=90_000)
    first_prompt = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt")
    for _ in range(3):
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.locator('li[data-command="runmenu:run-all"]').click()
        try:
            first_prompt.filter(has_text=re.compile(r"\[[0-9*]+\]")).wait_for(timeout=15_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close a menu left open, then try again
    raise AssertionError("JupyterLab did not start running the cells")


CHART_CELLS = (
    "%%triton_model triple --input x:float32[4] --output y:float32[4] --max-batch-size 8\n"
    "def triple(x):\n    return x * 3",
    "%triton_perf triple --concurrency 1,2 --duration 0.5 --max-latency-ms 50",
    "%triton_tune triple --max-batch-sizes 0,8 --delays-us 0 --instances 1 --concurrency 2 --duration 0.5 "
    "--max-latency-ms 50",
)


def _check_charts(page) -> None:
    """The load test's and the sweep's charts are images the browser decoded, at their on-screen width; screenshots
    of both go to ``artifacts/``."""
    from playwright.sync_api import expect

    for result, width, name in (
        (".tnb-perf-result", 760, "perf-chart.png"),
        (".tnb-tune-result", 760, "tune-chart.png"),
    ):
        image = page.locator(f"{result} img.tnb-chart")
        expect(image).to_be_visible(timeout=60_000)
        assert image.evaluate("img => img.complete && img.naturalWidth") == 2 * width  # the PNG is drawn at 2x
        assert image.evaluate("img => Math.round(img.getBoundingClientRect().width)") <= width
        page.locator(result).screenshot(path=str(ARTIFACTS / name))


def test_panel_is_live_in_jupyterlab_and_shows_a_crash_and_the_recovery(jupyterlab):
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is needed: scripts/test.sh installs it (apt-get)"
    base, token, folder = jupyterlab
    http, grpc, metrics = free_ports()
    busy = "import time\ntime.sleep(45)  # the kernel is busy; the panel must stay live"
    _notebook(folder / "panel.ipynb", http, grpc, metrics, *CHART_CELLS, busy)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{base}/lab/tree/panel.ipynb?token={token}")
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            _run_all_cells(page)

            row = page.locator('.tritonnb-panel tr[data-model="double"]')
            expect(page.locator(".tritonnb-panel .tnb-server-state")).to_have_text("READY", timeout=90_000)
            expect(row.locator(".tnb-model-state")).to_have_text("READY", timeout=30_000)
            expect(page.locator('.tnb-strip[data-model="double"] .tnb-model-state')).to_have_text("READY")

            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            x = httpclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            for _ in range(REQUESTS):  # sent from outside the kernel, while a cell keeps it busy
                assert client.infer("double", [x]).as_numpy("y").tolist() == [[2, 2, 2, 2]]
            expect(row.locator(".tnb-success-total")).to_have_text(str(REQUESTS), timeout=15_000)
            busy_prompt = page.locator(".jp-Notebook .jp-Cell").nth(3 + len(CHART_CELLS)).locator(".jp-InputPrompt")
            expect(busy_prompt).to_contain_text("*")  # the sleep cell still runs: the panel updated meanwhile
            _check_charts(page)
            chart = page.locator(".tritonnb-panel img.tnb-live-chart")
            before = chart.get_attribute("src")
            for _ in range(REQUESTS):
                client.infer("double", [x])
            expect(chart).not_to_have_attribute("src", before, timeout=10_000)  # a new image while the cell runs
            expect(busy_prompt).to_contain_text("*")
            assert chart.evaluate("img => img.complete && img.naturalWidth") == 900
            page.locator(".tritonnb-panel").screenshot(path=str(ARTIFACTS / "panel-ready.png"))

            tritonserver = _tritonserver_on(http)
            served = process_tree(tritonserver.pid)
            tritonserver.kill()  # crash recovery starts it again, and the panel and the strip say so
            recovery = page.locator(".tritonnb-panel .tnb-recovery")
            expect(recovery).to_contain_text("restarted after a crash 1×", timeout=60_000)
            expect(recovery).to_contain_text("killed by SIGKILL")
            expect(page.locator('.tnb-strip[data-model="double"] .tnb-recovery')).to_contain_text("restarted")
            expect(page.locator(".tritonnb-panel .tnb-server-state")).to_have_text("READY", timeout=30_000)
            expect(row.locator(".tnb-model-state")).to_have_text("READY", timeout=30_000)
            assert client.infer("double", [x]).as_numpy("y").tolist() == [[2, 2, 2, 2]]
            page.locator(".tritonnb-panel").screenshot(path=str(ARTIFACTS / "panel-recovered.png"))
            page.screenshot(path=str(ARTIFACTS / "jupyterlab.png"))
            assert wait_gone(served) == []
        finally:
            browser.close()


FETCH_JSON = """async ([url, body]) => {
    const response = await fetch(url, body ? {method: "POST", body: body, headers: {"Content-Type": "application/json"}}
                                           : {});
    return {status: response.status, body: await response.text()};
}"""


def test_card_and_panel_links_work_through_jupyter_server_proxy_under_a_hub_base_url(hub_style_jupyterlab):
    """The browser is not on the kernel's machine in a workshop: every URL it is shown must go through Jupyter."""
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is needed: scripts/test.sh installs it (apt-get)"
    base, token, folder = hub_style_jupyterlab
    http, grpc, metrics = free_ports()
    _notebook(folder / "proxied.ipynb", http, grpc, metrics)
    proxied = f"/user/alice/proxy/{http}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(f"{base}/lab/tree/proxied.ipynb?token={token}")  # logs in: later requests carry the cookie
            page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=60_000)
            _run_all_cells(page)

            expect(page.locator(".jp-Notebook")).to_contain_text(f"from the browser: {proxied}", timeout=90_000)
            infer = page.locator(".tritonnb-card .tnb-browser-infer")
            expect(infer).to_have_text(f"{proxied}/v2/models/double/infer", timeout=60_000)
            links = {
                kind: page.locator(f'.tritonnb-card a.tnb-open[data-kind="{kind}"]').get_attribute("href")
                for kind in ("metadata", "config", "health", "metrics")
            }
            assert links["metadata"] == f"{proxied}/v2/models/double"

            # from the page's own origin, as a user's click or script would: metadata, config, health, metrics
            metadata = page.evaluate(FETCH_JSON, [links["metadata"], None])
            assert metadata["status"] == 200, metadata
            described = json.loads(metadata["body"])
            assert described["name"] == "double"
            assert [(t["name"], t["datatype"], t["shape"]) for t in described["inputs"]] == [("x", "FP32", [-1, 4])]
            config = page.evaluate(FETCH_JSON, [links["config"], None])
            assert config["status"] == 200 and json.loads(config["body"])["max_batch_size"] == 32, config
            assert page.evaluate(FETCH_JSON, [links["health"], None])["status"] == 200
            scraped = page.evaluate(FETCH_JSON, [links["metrics"], None])
            assert scraped["status"] == 200 and 'nv_inference_request_success{model="double"' in scraped["body"]

            body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]})
            answer = page.evaluate(FETCH_JSON, [infer.get_attribute("data-url"), body])
            assert answer["status"] == 200, answer
            (output,) = json.loads(answer["body"])["outputs"]
            assert (output["name"], output["data"]) == ("y", [2, 4, 6, 8])

            panel_url = page.locator(".tritonnb-panel .tnb-browser-url")
            expect(panel_url).to_contain_text(proxied, timeout=30_000)
            assert panel_url.get_attribute("href").startswith(proxied)
            expect(page.locator('.tritonnb-panel tr[data-model="double"] .tnb-success-total')).to_have_text("1")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-hub-base-url.png"))
        finally:
            browser.close()
    served = process_tree(_tritonserver_on(http).pid)
    _shut_down_kernels(base, token)  # nothing may outlive the kernel
    assert wait_gone(served) == []


def _shut_down_kernels(base: str, token: str) -> None:
    headers = {"Authorization": f"token {token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels", headers=headers), timeout=10) as answer:
        kernels = json.loads(answer.read())
    for kernel in kernels:
        request = urllib.request.Request(f"{base}/api/kernels/{kernel['id']}", method="DELETE", headers=headers)
        urllib.request.urlopen(request, timeout=30).close()
