"""Lifecycle figures: cold start, hot swap, reload on a signature change, stop, kernel shutdown; failures under load.

Run: ``.venv/bin/python -m benchmarks.lifecycle [--clients 4] [--swaps 20] [--cold-rounds 1] [--cold-only]``.
Prints markdown tables: first the cold start in a fresh Jupyter kernel and in a fresh plain Python process, from
``%load_ext tritonnb`` to the first request answered 200, with where the time went; then the other figures.
Each figure comes from this one run on this machine: compare numbers only within a run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator

import numpy as np

BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]})


class Load:
    """Closed-loop HTTP clients calling one model until stopped; counts answers and failures."""

    def __init__(self, port: int, model: str, clients: int) -> None:
        self.port, self.model = port, model
        self.ok = 0
        self.failed: list[str] = []
        self.last_value: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _loop(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                connection.request("POST", f"/v2/models/{self.model}/infer", BODY, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                        self.last_value = json.loads(payload)["outputs"][0]["data"][0]
                    else:
                        self.failed.append(f"{response.status} {payload[:200]!r}")
            except OSError as error:
                with self._lock:
                    self.failed.append(repr(error))
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def wait_for_value(load: Load, value: float, timeout: float = 30) -> float:
    """Seconds until the load sees ``value`` come back."""
    started = time.perf_counter()
    while load.last_value != value and time.perf_counter() - started < timeout:
        time.sleep(0.0005)
    return time.perf_counter() - started


def cold_start() -> float:
    """Seconds from ``%load_ext tritonnb`` to the first answered request, in this process's IPython shell (it keeps
    the server for the figures that follow; ``fresh_cold_start`` is the cold start as a user meets it)."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    started = time.perf_counter()
    with capture_output():  # the card and start-up message are not part of the table
        shell.run_line_magic("load_ext", "tritonnb")
        shell.run_cell_magic(
            "triton_model", "bench --input x:float32[4] --output y:float32[4]", "def bench(x):\n    return x * 1\n"
        )
    import tritonnb

    tritonnb.client("bench")(np.ones((1, 4), np.float32))
    return time.perf_counter() - started


# -- cold start in a fresh process: a real Jupyter kernel, and a plain Python process for comparison ----------------
LOAD_CELL = "%load_ext tritonnb"
MODEL_CELL = "%%triton_model bench --input x:float32[4] --output y:float32[4]\ndef bench(x):\n    return x * 1\n"

# Run in the measured process before the timed cells; imports nothing of tritonnb. It times the first import of
# some modules and wraps some functions, once their module is imported, to record (what, start, end, thread) on
# time.monotonic(), the clock this process shares with the measured one. A name that no longer exists is skipped.
TIMING = r"""
import functools as _tnb_functools
import importlib.abc as _tnb_abc
import inspect as _tnb_inspect
import sys as _tnb_sys
import threading as _tnb_threading
import time as _tnb_time

_tnb_spans = []
_TNB_IMPORTS = {
    "tritonnb", "tritonnb.magics", "tritonnb.serving.server", "tritonnb.ui.card", "tritonnb.ui.panel",
    "tritonnb.observe.monitor", "pytriton", "torch", "ipywidgets", "matplotlib.pyplot", "tritonclient.http",
    "tritonclient.grpc", "jupyter_server.serverapp",
}
_TNB_CALLS = {
    "tritonnb": [("start", "server start"), ("bind", "tritonnb.bind (model load, card)")],
    "tritonnb.ui.cell": [("run_cell_and_pick", "run the cell, pick its function")],
    "tritonnb.serving.server": [("Server.bind", "model load (Triton loads the stub)")],
    "tritonnb.triton.settings": [("resolve_settings", "settings and free ports")],
    "tritonnb.triton.lifecycle": [
        ("TritonServer._launch", "launch tritonserver, wait until ready"),
        ("_import_torch", "import torch (while tritonserver starts)"),
        ("browser_route", "browser route (jupyter-server-proxy probe)"),
    ],
    "tritonnb.triton.browser_route": [
        ("RouteProbe.__init__", "browser route: find this kernel's Jupyter server"),
        ("RouteProbe.result", "browser route: wait for the probe"),
        ("_proxy_answers", "jupyter-server-proxy probe"),
    ],
    "tritonnb.magics": [("TritonMagics._announce", "print the start-up message"), ("display", "display")],
    "tritonnb.ui.panel": [("ModelStrip.__init__", "build the live strip")],
}


def _tnb_span(what, start):
    _tnb_spans.append((what, start, _tnb_time.monotonic(), _tnb_threading.current_thread().name))


def _tnb_wrap(module, path, label):
    *parents, attr = path.split(".")
    owner = module
    for name in parents:
        owner = getattr(owner, name, None)
    if owner is None or getattr(owner, attr, None) is None:
        return
    static = isinstance(_tnb_inspect.getattr_static(owner, attr), staticmethod)
    original = getattr(owner, attr)

    @_tnb_functools.wraps(original)
    def timed(*args, **kwargs):
        what = f"display {type(args[0]).__name__}" if label == "display" else label
        start = _tnb_time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            _tnb_span(what, start)

    setattr(owner, attr, staticmethod(timed) if static else timed)


class _TnbTimer(_tnb_abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _TNB_IMPORTS and name not in _TNB_CALLS:
            return None
        for finder in _tnb_sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = None if finder is self or find is None else find(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            start = _tnb_time.monotonic()
            try:
                run(module)
            finally:
                if name in _TNB_IMPORTS:
                    _tnb_span(f"import {name}", start)
            for attr, label in _TNB_CALLS.get(name, ()):
                _tnb_wrap(module, attr, label)

        spec.loader.exec_module = exec_module
        return spec


_tnb_sys.meta_path.insert(0, _TnbTimer())


def _tnb_mark(what):
    return lambda *_: _tnb_spans.append((what, _tnb_time.monotonic(), 0, ""))


try:
    _tnb_shell = get_ipython()  # noqa: F821 (IPython's builtin)
    _tnb_shell.events.register("pre_run_cell", _tnb_mark("cell"))
    _tnb_shell.events.register("post_run_cell", _tnb_mark("cell end"))
except NameError:
    pass
"""

# The plain process: an IPython shell without a kernel, running the same cells; it says when its cells are done and
# keeps serving until told (a line on stdin).
PLAIN = r"""
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

shell = InteractiveShell.instance()
shell.run_cell(TIMING, store_history=False)
spans = shell.user_ns["_tnb_spans"]
spans.clear()
started = time.monotonic()
with capture_output():
    for cell in CELLS:
        result = shell.run_cell(cell)
        assert result.success, result.error_in_exec or result.error_before_exec
print("SPANS " + json.dumps({"started": started, "done": time.monotonic(), "spans": spans}), flush=True)
sys.stdin.readline()
import tritonnb
tritonnb.stop()
"""


class FirstAnswer(threading.Thread):
    """Sends the model a request every few milliseconds until one is answered 200; ``at`` is when (monotonic)."""

    def __init__(self, port: int, model: str = "bench", timeout_s: float = 120.0) -> None:
        super().__init__(daemon=True)
        self.port, self.model, self.timeout_s = port, model, timeout_s
        self.at: float | None = None
        self.statuses: collections.Counter[str] = collections.Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not self._halt.is_set() and time.monotonic() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("POST", f"/v2/models/{self.model}/infer", BODY, {"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                self.statuses[str(response.status)] += 1
                if response.status == 200:
                    self.at = time.monotonic()
                    return
            except OSError as error:
                self.statuses[type(error).__name__] += 1
            finally:
                connection.close()
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop asking."""
        self._halt.set()


@dataclasses.dataclass
class ColdStart:
    """One cold start in a fresh process: when (seconds after ``%load_ext`` began) each thing happened."""

    where: str
    first_answer_s: float
    cells_done_s: float
    load_ext_s: float
    spans: list[tuple[str, float, float, str]]  # (what, start s, end s, thread), relative to the start
    route: str = ""  # how the server said a browser reaches it


def _ports_environment() -> tuple[int, dict[str, str]]:
    from devtools.ports import free_loopback_ports

    ports = dict(zip(("HTTP", "GRPC", "METRICS"), free_loopback_ports(3)))
    env = {**os.environ, **{f"PYTRITON_TRITON_CONFIG_{k}_PORT": str(v) for k, v in ports.items()}}
    for name in ("TRITONNB_PUBLIC_URL", "JUPYTERHUB_SERVICE_PREFIX"):  # no route from this shell's surroundings
        env.pop(name, None)
    return ports["HTTP"], env


def _cold_start(where: str, started: float, answer: float, done: float, spans: list, route: str = "") -> ColdStart:
    spans = [s for s in spans if s[1] >= started]  # the set-up cell and the final read-out are not part of it
    cells = [s[1] for s in spans if s[0] == "cell"][:2]
    ends = [s[1] for s in spans if s[0] == "cell end"][:2]
    load_ext = ends[0] - started if ends else float("nan")
    timed = [(w, a - started, b - started, t) for w, a, b, t in spans if w not in ("cell", "cell end")]
    if cells:
        timed.append(("cell: %load_ext tritonnb", cells[0] - started, ends[0] - started, "MainThread"))
    if len(cells) > 1:
        timed.append(("cell: %%triton_model bench", cells[1] - started, ends[1] - started, "MainThread"))
    timed.sort(key=lambda s: s[1])
    return ColdStart(where, answer - started, done - started, load_ext, timed, route)


@contextlib.contextmanager
def jupyter_server() -> Iterator[tuple[int, str]]:
    """A real Jupyter Server with jupyter-server-proxy, writing its runtime file to a folder of its own: (its pid,
    that folder). A kernel told it is this server's (``JPY_PARENT_PID``) finds it and probes its proxy."""
    from devtools.ports import free_loopback_ports

    with tempfile.TemporaryDirectory(prefix="tritonnb-bench-") as folder:
        root = pathlib.Path(folder)
        (root / "config").mkdir()
        extensions = {"ServerApp": {"jpserver_extensions": {"jupyter_server_proxy": True}}}
        (root / "config" / "jupyter_server_config.json").write_text(json.dumps(extensions))
        env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(root / "runtime"), JUPYTER_CONFIG_DIR=str(root / "config"))
        port = free_loopback_ports(1)[0]
        command = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={port}"]
        command += ["--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=bench", f"--ServerApp.root_dir={folder}"]
        with open(root / "server.log", "w") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token=bench", timeout=5).close()
                    if list((root / "runtime").glob(f"jpserver-{server.pid}.json")):
                        break
                except OSError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()
                time.sleep(0.2)
            yield server.pid, env["JUPYTER_RUNTIME_DIR"]
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def kernel_cold_start(under: tuple[int, str] | None = None) -> ColdStart:
    """``%load_ext tritonnb`` and a ``%%triton_model`` cell in a fresh Jupyter kernel, run as a notebook's "run all"
    sends them; the first request answered 200 is asked for from this process. ``under``: a ``jupyter_server()``
    whose kernel it is, as in JupyterLab (the kernel then probes that server's jupyter-server-proxy)."""
    from jupyter_client.manager import KernelManager

    port, env = _ports_environment()
    where = "Jupyter kernel"
    if under is not None:  # jupyter_client would name this process the parent; the server is
        env.update(JPY_PARENT_PID=str(under[0]), JUPYTER_RUNTIME_DIR=under[1])
        where += " of a Jupyter server with jupyter-server-proxy"
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env, independent=under is not None)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive(TIMING, store_history=False, timeout=60, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        time.sleep(1.0)  # let the kernel settle after its start
        poller = FirstAnswer(port)
        poller.start()
        started = time.monotonic()
        ids = [client.execute(LOAD_CELL), client.execute(MODEL_CELL)]
        done = 0.0
        while ids:
            message = client.get_shell_msg(timeout=120)
            if message["parent_header"].get("msg_id") in ids:
                assert message["content"]["status"] == "ok", message["content"]
                ids.remove(message["parent_header"]["msg_id"])
                done = time.monotonic()
        poller.join(60)
        assert poller.at is not None, f"no answer: {dict(poller.statuses)}"
        out: list[str] = []
        client.execute_interactive(
            "import json, tritonnb\nprint(json.dumps([_tnb_spans, tritonnb.server().browser_route.via]))",
            timeout=60,
            output_hook=lambda m: out.append(m["content"]["text"]) if m["msg_type"] == "stream" else None,
        )
        spans, via = json.loads("".join(out))
        return _cold_start(where, started, poller.at, done, spans, via)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)


def plain_cold_start() -> ColdStart:
    """The same cells in a fresh plain Python process (an IPython shell, no kernel)."""
    port, env = _ports_environment()
    script = f"TIMING = {TIMING!r}\nCELLS = {[LOAD_CELL, MODEL_CELL]!r}\n{PLAIN}"
    poller = FirstAnswer(port)
    poller.start()
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        while line and not line.startswith("SPANS "):
            line = child.stdout.readline()
        assert line, "the plain process ended before its cells were done"
        report = json.loads(line.removeprefix("SPANS "))
        poller.join(60)
        assert poller.at is not None, f"no answer: {dict(poller.statuses)}"
        child.stdin.write("done\n")
        child.stdin.flush()
        child.wait(60)
    finally:
        poller.stop()
        if child.poll() is None:
            child.kill()
            child.wait()
    return _cold_start("plain Python process", report["started"], poller.at, report["done"], report["spans"])


def print_cold_starts(runs: list[ColdStart]) -> None:
    """A summary row per run, then each run's timeline (spans on other threads marked)."""
    print("| where | load_ext cell | first 200 answer | both cells done | browser route |\n|---|---|---|---|---|")
    for run in runs:
        print(
            f"| {run.where} | {run.load_ext_s:.2f} s | **{run.first_answer_s:.2f} s** | {run.cells_done_s:.2f} s "
            f"| {run.route or 'none'} |"
        )
    for run in runs:
        print(f"\n{run.where}: what happened when (s after %load_ext began; nested spans overlap their callers)")
        print("| what | from | to | took |\n|---|---|---|---|")
        for what, start, end, thread in run.spans:
            where = "" if thread in ("MainThread", "") else f" ({thread})"
            print(f"| {what}{where} | {start:.3f} | {end:.3f} | {end - start:.3f} |")
        print(f"| first request answered 200 (asked from outside) | | {run.first_answer_s:.3f} | |")


def cold_starts(rounds: int) -> list[ColdStart]:
    """Alternate a fresh kernel, a fresh kernel of a Jupyter server and a fresh plain process, ``rounds`` times."""
    runs = []
    with jupyter_server() as under:
        for _ in range(rounds):
            runs.append(kernel_cold_start())
            runs.append(kernel_cold_start(under))
            runs.append(plain_cold_start())
    return runs


def kernel_shutdown() -> float:
    """Seconds from asking a real Jupyter kernel (serving a model) to shut down until its tritonserver, stubs and
    every other child process are gone."""
    import psutil
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        code = (
            "%load_ext tritonnb\n"
            "import tritonnb\n"
            "tritonnb.bind(lambda x: x, 'k', inputs=['x:float32[4]'], outputs=['y:float32[4]'])"
        )
        reply = client.execute_interactive(code, timeout=120, output_hook=lambda message: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        kernel = psutil.Process(manager.provisioner.pid)
        processes = [kernel, *kernel.children(recursive=True)]
        started = time.perf_counter()
        manager.shutdown_kernel(now=False)
        _, alive = psutil.wait_procs(processes, timeout=30)
        assert not alive, alive
        return time.perf_counter() - started
    finally:
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--cold-rounds", type=int, default=1, help="fresh kernels (and plain processes) to start")
    parser.add_argument("--cold-only", action="store_true", help="only the cold starts in fresh processes")
    args = parser.parse_args()

    print_cold_starts(cold_starts(args.cold_rounds))
    if args.cold_only:
        return
    print()
    import tritonnb

    rows: list[tuple[str, str]] = []
    rows.append(("cold start in this process: load_ext to first answered request", f"{cold_start():.2f} s"))
    server = tritonnb.server()
    port = int(server.http_url.rsplit(":", 1)[1])
    spec = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}

    bind_s, answer_s = [], []
    with Load(port, "bench", args.clients) as load:
        time.sleep(0.5)
        for factor in range(2, args.swaps + 2):
            started = time.perf_counter()
            tritonnb.bind(lambda x, f=factor: x * f, "bench", **spec)
            bind_s.append(time.perf_counter() - started)
            answer_s.append(wait_for_value(load, float(factor)))
            time.sleep(0.1)
    rows.append(
        (
            f"hot swap (same signature), median of {args.swaps}: bind returns",
            f"{statistics.median(bind_s) * 1000:.2f} ms",
        )
    )
    rows.append(
        (
            "hot swap: bind start to first answer from the new function (under load)",
            f"{statistics.median(answer_s) * 1000:.1f} ms median, {max(answer_s) * 1000:.1f} ms max",
        )
    )
    rows.append(
        (
            f"failed requests during {args.swaps} swaps, {args.clients} HTTP clients",
            f"{len(load.failed)} of {load.ok + len(load.failed)}",
        )
    )

    reload_s = []
    with Load(port, "bench", args.clients) as load:
        time.sleep(0.5)
        for i in range(args.reloads):
            dims = "[-1]" if i % 2 == 0 else "[4]"
            started = time.perf_counter()
            card = tritonnb.bind(
                lambda x, f=100 + i: x * f, "bench", inputs=[f"x:float32{dims}"], outputs=[f"y:float32{dims}"]
            )
            assert card.result.action == "reloaded"
            reload_s.append(time.perf_counter() - started)
            wait_for_value(load, float(100 + i))
            time.sleep(0.3)
    rows.append(
        (
            f"re-bind on a signature change, median of {args.reloads}",
            f"{statistics.median(reload_s):.2f} s (max {max(reload_s):.2f} s)",
        )
    )
    rows.append(
        (
            f"failed requests during {args.reloads} signature changes",
            f"{len(load.failed)} of {load.ok + len(load.failed)}",
        )
    )
    if load.failed:
        print("first failures:", load.failed[:3])
    stop_s = tritonnb.stop()
    started = time.perf_counter()
    server.wait_stopped()
    rows.append(("stop: returns with tritonserver and its stubs gone, ports free", f"{stop_s:.2f} s"))
    rows.append(
        (
            "stop: until the model threads have finished and the folder is gone",
            f"{stop_s + time.perf_counter() - started:.2f} s",
        )
    )
    rows.append(("kernel shutdown to every process gone", f"{kernel_shutdown():.2f} s"))

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
