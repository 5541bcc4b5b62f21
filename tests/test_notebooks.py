"""The Binder test: build the environment that binder/ describes, as Binder does, and run every tutorial in it.

A clean virtual environment (no system site-packages) gets exactly ``pip install -r binder/requirements.txt``, run
from a copy of the repository made of its git-tracked and untracked-but-not-ignored files (so no .venv, build/ or
egg-info comes along, and the build cannot write into the checkout), then ``binder/postBuild``. Each notebook then
runs through ``binder/start`` as ``jupyter nbconvert --execute``, with that environment first on PATH and HOME in a
temporary folder. Every process a run starts carries a marker in its environment, so the leftover check sees only
this run's processes, never another test's or person's tritonserver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.server
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import nbformat
import psutil
import pytest
from helpers import free_ports

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
QUICKSTART_URL = "/lab/tree/notebooks/01_quickstart.ipynb"  # what binder/postBuild makes the default page
MARK = "TRITONNB_TEST_RUN"
# the first test also builds the environment (about 2-3 minutes on 2 cores); a notebook's cells have 300 s each
pytestmark = pytest.mark.timeout(1500)


@dataclasses.dataclass
class Binder:
    """The built environment: the repository copy it was built from, the environment, and the session's HOME."""

    repo: pathlib.Path
    env: pathlib.Path
    home: pathlib.Path

    def session_environ(self, run_id: str) -> dict[str, str]:
        """A Binder session's environment: this environment's bin first, HOME and Jupyter's folders in tmp, nothing of
        the development environment (its .venv, PYTHONPATH, Jupyter or PyTriton settings), and the run's marker."""
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER", "IPYTHON", "PYTRITON", "TRITONNB", "XDG_"))
        }
        path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and not _inside(p, ROOT)]
        return {
            **inherited,
            "PATH": os.pathsep.join([str(self.env / "bin"), *path]),
            "HOME": str(self.home),
            "JUPYTER_CONFIG_DIR": str(self.home / ".jupyter"),
            MARK: run_id,
        }


def _inside(path: str, folder: pathlib.Path) -> bool:
    return pathlib.Path(path).resolve().is_relative_to(folder)


def _run(step: str, command: list[str], **kwargs) -> str:
    """Run a build step; fail with the end of its output if it fails."""
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"{step} failed (exit {done.returncode}):\n{output[-5000:]}")
    return output


def _copy_repository(target: pathlib.Path) -> None:
    """The files git would commit (tracked, and untracked ones it does not ignore), as they are in the work tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.split(b"\0")):
        source = ROOT / os.fsdecode(name)
        if not source.is_file() and not source.is_symlink():
            continue  # deleted in the work tree
        destination = target / os.fsdecode(name)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination, follow_symlinks=False)  # keeps postBuild's and start's executable bit


@pytest.fixture(scope="module")
def binder(tmp_path_factory) -> Iterator[Binder]:
    """binder/requirements.txt and binder/postBuild, run as repo2docker runs them, in a fresh environment (removed
    afterwards: it takes about 1.5 GB; the notebooks' logs and executed copies stay in their tests' tmp_path)."""
    runtime = (ROOT / "binder" / "runtime.txt").read_text().strip()
    here = f"python-{sys.version_info.major}.{sys.version_info.minor}"
    if runtime != here:
        pytest.fail(f"binder/runtime.txt asks for {runtime}; this test builds with {here} ({sys.executable})")
    base = tmp_path_factory.mktemp("binder")
    built = Binder(repo=base / "repo", env=base / "env", home=base / "home")
    built.home.mkdir()
    times = {}
    started = time.perf_counter()
    _copy_repository(built.repo)
    times["copy"] = time.perf_counter() - started
    _run("python -m venv", [sys.executable, "-m", "venv", str(built.env)])  # no --system-site-packages
    times["venv"] = time.perf_counter() - started - sum(times.values())
    # exactly what repo2docker runs, from the repository root; pip keeps this machine's HOME (its configuration
    # says where the local CPU torch wheel is); nothing else of the development environment leaks in
    pip_environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    pip_environ["PATH"] = os.pathsep.join([str(built.env / "bin"), os.environ.get("PATH", os.defpath)])
    _run(
        "pip install -r binder/requirements.txt",
        [str(built.env / "bin" / "python"), "-m", "pip", "install", "-r", "binder/requirements.txt"],
        cwd=built.repo,
        env=pip_environ,
        timeout=1200,
    )
    times["pip install"] = time.perf_counter() - started - sum(times.values())
    postbuild = _run(
        "binder/postBuild", [str(built.repo / "binder" / "postBuild")], cwd=built.repo, env=built.session_environ("")
    )
    times["postBuild"] = time.perf_counter() - started - sum(times.values())
    print(
        f"\nBinder environment built in {time.perf_counter() - started:.1f} s ("
        + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in times.items())
        + ")\n"
        + postbuild.strip()
    )
    # tritonnb is the installed package (not the copy's source folder, not an editable install)
    found = _run(
        "import tritonnb",
        [
            str(built.env / "bin" / "python"),
            "-c",
            "import importlib.util; print(importlib.util.find_spec('tritonnb').origin)",
        ],
        cwd=built.home,
        env=built.session_environ(""),
    ).strip()
    assert _inside(found, built.env), found
    yield built
    shutil.rmtree(built.env, ignore_errors=True)
    shutil.rmtree(built.repo, ignore_errors=True)


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
                time.sleep(0.5)
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
    # one cell more, after the tutorial's own: which Python and which tritonnb the kernel ran
    check = "import sys, tritonnb\nprint('KERNEL', sys.executable)\nprint('TRITONNB', tritonnb.__file__)"
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
    # the marker reached the servers (else the leftover check below would be blind), and none of them is left
    assert any(seen.startswith("tritonserver:") for seen in result["seen"].values()), result["seen"]
    assert result["leftover"] == {}, f"still running after {name} ended: {result['leftover']}"
