"""The Binder test: the environment that binder/ describes, built as Binder builds it (tests/binder_build.py), runs
every tutorial.

Each notebook runs through ``binder/start`` as ``jupyter nbconvert --execute``, with that environment first on PATH and
HOME in a temporary folder. Every process a run starts carries a marker in its environment, so the leftover check sees
only this run's processes, never another test's or person's tritonserver.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import nbformat
import psutil
import pytest
from binder_build import MARK, Binder, BinderBuild
from helpers import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUICKSTART_URL = "/lab/tree/notebooks/01_quickstart.ipynb"  # what binder/postBuild makes the default page
# charts a notebook's static HTML must show: 02 a still of the panel's chart; 03 the load test's, the sweep's and
# the before/after comparison
STATIC_CHARTS = {"02_live_panels.ipynb": 1, "03_perf_and_tuning.ipynb": 3}
# the first test may wait for the environment's build (2-3 minutes on 2 cores); a notebook's cells have 300 s each
pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def binder(binder_build: BinderBuild | None) -> Binder:
    """The Binder environment, its slow pip install started with the session (see conftest.binder_build)."""
    assert binder_build is not None, "conftest starts the build when this module's tests are collected"
    return binder_build.finish()


def _marked(run_id: str, rss: list[int] | None = None) -> dict[int, str]:
    """Every process whose environment carries this run's marker: pid -> name and command line (and their resident
    memory added up, appended to ``rss`` when given)."""
    found = {}
    total = 0
    for process in psutil.process_iter(["name", "cmdline", "environ", "memory_info"], ad_value=None):
        if (process.info["environ"] or {}).get(MARK) == run_id:
            found[process.pid] = f"{process.info['name']}: {' '.join(process.info['cmdline'] or [])[:200]}"
            total += process.info["memory_info"].rss if process.info["memory_info"] else 0
    if rss is not None:
        rss.append(total)
    return found


def _run_session(binder: Binder, command: list[str], log: pathlib.Path, until=None, timeout: float = 1200) -> dict:
    """Run ``binder/start COMMAND`` as a Binder session does, from the repository root, watching for processes with
    its marker. Returns what it saw: every marked process, the peak of their resident memory added up, what was left
    running, and the exit code. ``until`` (a callable taking the process) ends the session early with SIGTERM once
    it returns True."""
    run_id = uuid.uuid4().hex
    seen: dict[int, str] = {}
    rss: list[int] = [0]
    with log.open("w") as output:
        session = subprocess.Popen(
            [str(binder.repo / "binder" / "start"), *command],
            cwd=binder.repo,
            env=binder.session_environ(run_id),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        try:
            while session.poll() is None and time.monotonic() < deadline:
                seen.update(_marked(run_id, rss))
                if until is not None and until(session):
                    session.terminate()
                    session.wait(30)
                    break
                time.sleep(0.2)  # a tutorial's tritonserver can live for a few seconds only
        finally:
            if session.poll() is None:
                session.kill()
                session.wait()
    # nothing the session started may outlive it (a few seconds' grace for processes being torn down)
    leftover = _marked(run_id)
    wait_until = time.monotonic() + 10
    while leftover and time.monotonic() < wait_until:
        time.sleep(0.25)
        leftover = _marked(run_id)
    for pid in leftover:  # they carry this run's marker: ours to end, so that they cannot disturb the next tests
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    return {"seen": seen, "leftover": leftover, "returncode": session.returncode, "peak_rss": max(rss)}


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"behind the proxy"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_binder_jupyterlab_opens_the_quickstart_and_proxies_ports(binder, tmp_path):
    """The server Binder starts opens the quickstart, and jupyter-server-proxy passes {base_url}proxy/{port}/ through
    to a port on the session's loopback (as it does to tritonserver's)."""
    behind = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=behind.serve_forever, daemon=True).start()
    (port,) = free_ports(1)
    base = f"http://127.0.0.1:{port}"
    token = uuid.uuid4().hex
    opener = urllib.request.build_opener(_NoRedirect)
    answers: dict[str, tuple[int, str, str]] = {}

    def get(path: str) -> tuple[int, str, str]:
        request = urllib.request.Request(base + path, headers={"Authorization": f"token {token}"})
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.headers.get("Location", ""), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Location", ""), error.read().decode(errors="replace")

    def ready(_session) -> bool:
        try:
            get("/api/status")
        except OSError:
            return False
        answers["/"] = get("/")
        answers["proxy"] = get(f"/proxy/{behind.server_address[1]}/")
        return True

    command = [
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        *(["--allow-root"] if os.geteuid() == 0 else []),
    ]
    started = time.perf_counter()
    try:
        result = _run_session(binder, command, tmp_path / "jupyter.log", until=ready, timeout=120)
    finally:
        behind.shutdown()
    print(f"\nJupyterLab through binder/start: answered, checked and stopped in {time.perf_counter() - started:.1f} s")
    log = (tmp_path / "jupyter.log").read_text()
    assert "/" in answers, f"JupyterLab did not answer on port {port}:\n{log[-3000:]}"
    status, location, _ = answers["/"]
    assert status in (301, 302) and urllib.parse.urlsplit(location).path == QUICKSTART_URL, (status, location)
    assert answers["proxy"][0] == 200 and answers["proxy"][2] == "behind the proxy", answers["proxy"]
    assert result["leftover"] == {}, f"still running after the server stopped: {result['leftover']}"


@pytest.mark.parametrize("name", [p.name for p in NOTEBOOKS])
def test_notebook_runs_on_binder(binder, name, tmp_path):
    """The tutorial runs top to bottom in the Binder environment, in that environment's kernel, and leaves nothing
    running."""
    notebook_path = binder.repo / "notebooks" / name
    notebook = nbformat.read(notebook_path, as_version=4)
    # one cell more, after the tutorial's own: which Python, tritonnb and numpy the kernel ran
    check = (
        "import sys, numpy, tritonnb\nprint('KERNEL', sys.executable)\nprint('TRITONNB', tritonnb.__file__)\n"
        "print('NUMPY', numpy.__version__.split('.')[0])"
    )
    notebook.cells.append(nbformat.v4.new_code_cell(check))
    nbformat.write(notebook, notebook_path)
    started = time.perf_counter()
    result = _run_session(
        binder,
        [
            "jupyter",
            "nbconvert",
            "--to",
            "notebook",
            "--execute",
            "--ExecutePreprocessor.timeout=300",
            "--output-dir",
            str(tmp_path),
            "--output",
            name,
            f"notebooks/{name}",
        ],
        tmp_path / "nbconvert.log",
    )
    elapsed = time.perf_counter() - started
    print(
        f"\n{name}: ran on Binder in {elapsed:.1f} s (jupyter nbconvert --execute through binder/start); its processes"
        f" peaked at {result['peak_rss'] / 2**20:.0f} MiB resident, added up (Binder gives a session 1-2 GB)"
    )
    log = (tmp_path / "nbconvert.log").read_text()
    assert result["returncode"] == 0, f"nbconvert exit {result['returncode']}:\n{log[-5000:]}"
    executed = nbformat.read(tmp_path / name, as_version=4)
    outputs = [o for c in executed.cells for o in c.get("outputs", [])]
    errors = [f"{o.ename}: {o.evalue}" for o in outputs if o.output_type == "error"]
    assert errors == []
    texts = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outputs)
    assert "READY" in texts
    assert "stopped in" in texts  # every tutorial ends with %triton stop
    assert f"KERNEL {binder.env / 'bin'}{os.sep}" in texts, "the kernel did not run the Binder environment's Python"
    assert f"TRITONNB {binder.env}" in texts, "the kernel did not import the installed tritonnb"
    assert "NUMPY 1" not in texts, "pip gave the Binder environment numpy 1: something pins numpy<2 again"
    # the marker reached the servers (else the leftover check below would be blind), and none of them is left
    assert any(seen.startswith("tritonserver:") for seen in result["seen"].values()), result["seen"]
    assert result["leftover"] == {}, f"still running after {name} ended: {result['leftover']}"
    if name in STATIC_CHARTS:
        _check_static_html(tmp_path / name, STATIC_CHARTS[name])


def _check_static_html(executed: pathlib.Path, charts: int) -> None:
    """The executed notebook's static HTML (nbconvert), opened in Chromium with no network, shows its charts: each one
    an image the browser decoded. A screenshot of the page goes to ``artifacts/``."""
    from playwright.sync_api import sync_playwright

    done = subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "html", str(executed)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page_file = executed.with_suffix(".html")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.route("http*://**", lambda route: route.abort())  # offline, like a reader with no internet
            page.goto(page_file.as_uri(), wait_until="domcontentloaded")
            page.wait_for_function("() => [...document.images].every(image => image.complete)", timeout=30_000)
            images = page.locator(".jp-OutputArea-output img").evaluate_all(
                "images => images.map(image => [image.alt, image.naturalWidth, image.getBoundingClientRect().width])"
            )
            assert len(images) == charts, images
            assert all(natural > 0 and shown > 300 for _, natural, shown in images), images
            ARTIFACTS.mkdir(exist_ok=True)
            first = page.locator(".jp-OutputArea-output img").first
            first.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"static-{executed.stem}.png"), full_page=True)
        finally:
            browser.close()
