"""Serving overhead: the same torch MLP behind tritonnb, raw PyTriton and FastAPI + uvicorn, in one run.

Run: ``.venv/bin/python -m benchmarks.compare [--duration 10] [--concurrency 1,8] [--rounds 2]``. Prints a markdown
table.

The function is ``Sequential(Linear(64, 256), ReLU, Linear(256, 64)).eval()`` under ``torch.inference_mode()``,
``x: float32[64]`` in, ``y: float32[64]`` out, with the same weights everywhere. The servers run one after another
on free loopback ports, each alone:

- tritonnb, in this process (``tritonnb.bind(..., max_batch_size=64)``, dynamic batching, no batch delay);
- raw PyTriton (``@batch``, ``max_batch_size=64``, dynamic batcher) in a subprocess, stopped with SIGINT;
- FastAPI + uvicorn (1 worker, ``async def`` handler) in a subprocess, on the same URL path.

Every server gets the same closed-loop load: KServe v2 JSON ``POST /v2/models/mlp/infer`` with one sample, from C
threads with one keep-alive ``http.client.HTTPConnection`` each, sending back to back. The client runs in its own
(spawned) process, so it never shares a GIL with tritonnb's in-process handler. Each server's answer is checked
against the local function once before it is measured; the script exits non-zero if any server failed.
This machine's cores are shared by client and server: compare numbers only within a run.

With ``--rounds N`` the whole server list runs N times in alternation (tritonnb, pytriton, tritonnb, pytriton, ...),
so that a slow patch of background load hits both sides; the report then shows each server's req/s per round and,
per concurrency, the tritonnb / raw PyTriton throughput ratio of each round and their median. With ``--interleave``
every server starts once and stays up, and the rounds alternate point by point (per concurrency: A B, then B A, ...):
the two points of a pair lie seconds apart instead of a whole server list apart, which matters on a shared machine
whose speed drifts over tens of seconds.

``--torch-threads N`` holds in every server's handler thread: tritonnb applies the kernel's count there itself; the
subprocess servers get ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (under OpenMP, ``torch.set_num_threads`` in the main
thread does not reach PyTriton's handler thread, whose batched matmuls would otherwise use every core and spin).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from devtools.ports import free_loopback_ports as free_ports

MODEL = "mlp"
PATH = f"/v2/models/{MODEL}/infer"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0

# Shared by the server subprocesses: builds the MLP from the saved weights and sets torch's thread count.
MLP_SOURCE = """
import torch

def load_mlp(weights, threads):
    if threads > 0:
        torch.set_num_threads(threads)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64))
    model.load_state_dict(torch.load(weights))
    return model.eval()
"""

PYTRITON_SERVER = """
import sys
import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from mlp import load_mlp

weights, threads, http_port, grpc_port, metrics_port, log_file = sys.argv[1:7]
model = load_mlp(weights, int(threads))


@batch
def infer(x):
    with torch.inference_mode():
        return {"y": model(torch.from_numpy(x)).numpy()}


config = TritonConfig(
    http_address="127.0.0.1", http_port=int(http_port),
    grpc_address="127.0.0.1", grpc_port=int(grpc_port),
    metrics_address="127.0.0.1", metrics_port=int(metrics_port),
    exit_timeout_secs=2, log_file=log_file,
)
with Triton(config=config) as triton:
    triton.bind(
        model_name="mlp",
        infer_func=infer,
        inputs=[Tensor(name="x", dtype=np.float32, shape=(64,))],
        outputs=[Tensor(name="y", dtype=np.float32, shape=(64,))],
        config=ModelConfig(max_batch_size=64, batching=True, batcher=DynamicBatcher(max_queue_delay_microseconds=0)),
    )
    triton.serve()
"""

FASTAPI_SERVER = """
import json
import sys
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request, Response
from mlp import load_mlp

weights, threads, port = sys.argv[1:4]
model = load_mlp(weights, int(threads))
app = FastAPI()


@app.get("/v2/health/ready")
async def ready():
    return {}


@app.post("/v2/models/mlp/infer")
async def infer(request: Request):
    spec = json.loads(await request.body())["inputs"][0]
    x = np.asarray(spec["data"], dtype=np.float32).reshape(spec["shape"])
    with torch.inference_mode():
        y = model(torch.from_numpy(x)).numpy()
    body = {
        "model_name": "mlp",
        "model_version": "1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape), "data": y.ravel().tolist()}],
    }
    return Response(json.dumps(body), media_type="application/json")


uvicorn.run(app, host="127.0.0.1", port=int(port), workers=1, log_level="warning", access_log=False)
"""


@dataclass
class Result:
    """One server at one concurrency."""

    server: str
    concurrency: int
    round: int = 1
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Answered requests per second in the measured window."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in ms (NaN without answers)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


# -- the load -----------------------------------------------------------------------------------------


def request_body(x: np.ndarray) -> str:
    """The KServe v2 JSON body for one sample."""
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64], "data": x.tolist()}]})


def run_load(port: int, body: str, clients: int, warmup_s: float, duration_s: float, max_requests: int) -> dict:
    """Closed-loop load from ``clients`` threads; latencies of requests that start inside the measured window.

    Runs in the client process. Each thread sends back to back on its own keep-alive connection until the window
    ends or it has sent ``max_requests``.
    """
    start = time.perf_counter() + 0.05
    window = (start + warmup_s, start + warmup_s + duration_s)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    headers = {"Content-Type": "application/json"}

    def loop(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sent = 0
        while time.perf_counter() < start:
            time.sleep(0.001)
        while sent < max_requests:
            began = time.perf_counter()
            if began >= window[1]:
                break
            sent += 1
            try:
                connection.request("POST", PATH, body, headers)
                response = connection.getresponse()
                payload = response.read()
                ok = response.status == 200 and b'"outputs"' in payload
                problem = "" if ok else f"{response.status} {payload[:160]!r}"
            except OSError as error:
                problem = repr(error)
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ended = time.perf_counter()
            if began >= window[0]:
                if problem:
                    errors[i].append(problem)
                else:
                    latencies[i].append((ended - began) * 1000)
        connection.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "latencies_ms": [value for values in latencies for value in values],
        "errors": [value for values in errors for value in values],
        "seconds": duration_s,
    }


def post(port: int, body: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """One POST to the model's infer URL: status and payload."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", PATH, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_answer(port: int, x: np.ndarray, expected: np.ndarray) -> None:
    """Raise unless the server's ``y`` for ``x`` equals the local function's result."""
    status, payload = post(port, request_body(x))
    if status != 200:
        raise RuntimeError(f"status {status}: {payload[:300]!r}")
    output = json.loads(payload)["outputs"][0]
    y = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    if y.shape != (1, 64) or not np.allclose(y, expected, rtol=1e-4, atol=1e-5):
        raise RuntimeError(f"wrong answer: shape {y.shape}, max abs diff {np.abs(y - expected).max():.3g}")


# -- ports and processes ------------------------------------------------------------------------------


def wait_until(ready: Callable[[], bool], process: subprocess.Popen | None, log: Path | None, what: str) -> None:
    """Poll ``ready`` until it is true; raise if ``process`` exits or the time-out passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {READY_TIMEOUT_S:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def http_ok(port: int, path: str) -> bool:
    """True when ``GET path`` answers 200."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except OSError:
        return False


def tail(log: Path | None, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when this benchmark dies (Linux), so no server outlives it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def subprocess_server(script: str, args: list[str], workdir: Path, name: str, env: dict[str, str]) -> Iterator[Any]:
    """Run ``script`` in a child Python; on exit send SIGINT, wait, and make sure its whole process tree is gone."""
    path = workdir / f"{name}_server.py"
    path.write_text(textwrap.dedent(script))
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl+C on the terminal reaches this script only; it stops the child itself
            preexec_fn=_die_with_parent,
        )
    tree: dict[int, psutil.Process] = {}
    handle = _ServerHandle(process, log, tree)
    try:
        yield handle
    finally:
        handle.remember_tree()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                print(f"{name}: no exit {STOP_TIMEOUT_S:.0f} s after SIGINT; killing it", file=sys.stderr)
                process.kill()
                process.wait()
        check_gone(name, list(tree.values()))


def check_gone(name: str, processes: list[psutil.Process]) -> None:
    """Raise (after killing them) if any of a stopped server's ``processes`` still runs a few seconds later."""
    deadline = time.monotonic() + 5  # PDEATHSIG'd children may need a moment after their parent exits
    while any(_alive(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [f"{p.pid} {_name(p)}" for p in processes if _alive(p)]
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if _alive(p):
                p.kill()
    if survivors:
        raise RuntimeError(f"{name}: processes outlived the server and were killed: {survivors}")
    print(f"{name}: stopped; none of its {len(processes)} server processes survives", file=sys.stderr)


def _alive(process: psutil.Process) -> bool:
    """True while ``process`` runs (a zombie counts as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass
class _ServerHandle:
    """A server subprocess, its log and the descendants seen while it ran."""

    process: subprocess.Popen
    log: Path
    tree: dict[int, psutil.Process]

    def remember_tree(self) -> None:
        """Record the current descendants (tritonserver, its stubs) so they can be checked after the stop."""
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.tree.setdefault(child.pid, child)

    def tritonserver_pids(self) -> list[int]:
        """Pids of the tritonserver processes seen under this server."""
        return [pid for pid, p in self.tree.items() if _name(p) == "tritonserver"]


def _name(process: psutil.Process) -> str:
    """A process's name, or '' once it is gone."""
    try:
        return process.name()
    except psutil.Error:
        return ""


# -- the three servers --------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every server's measurement shares: the client process, body, expected answer and settings."""

    pool: concurrent.futures.ProcessPoolExecutor
    x: np.ndarray
    expected: np.ndarray
    args: argparse.Namespace
    results: list[Result] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    round: int = 1

    def measure(self, server: str, port: int) -> None:
        """Check the answer once, then run the load at every concurrency."""
        check_answer(port, self.x, self.expected)
        for clients in self.args.concurrency:
            self.measure_point(server, port, clients)

    def measure_point(self, server: str, port: int, clients: int) -> None:
        """Run the load at one concurrency and record it under the current round."""
        load = self.pool.submit(
            run_load, port, request_body(self.x), clients, self.args.warmup, self.args.duration, self.args.max_requests
        ).result()
        result = Result(server, clients, self.round, len(load["latencies_ms"]), len(load["errors"]), load["seconds"])
        result.latencies_ms, result.first_errors = load["latencies_ms"], load["errors"][:3]
        self.results.append(result)
        print(
            f"  {server} round {self.round} c={clients}: {result.throughput:.0f} req/s, "
            f"p50 {result.percentile(50):.2f} ms, p99 {result.percentile(99):.2f} ms, {result.errors} errors",
            file=sys.stderr,
        )

    def run(self, server: str, body: Callable[[], None]) -> None:
        """Run one server's start-measure-stop; a failure is recorded and the next server still runs."""
        print(f"{server}: starting (round {self.round})", file=sys.stderr)
        try:
            body()
        except Exception as error:
            self.failures.append(f"{server} round {self.round}: {error}")
            print(f"{server}: FAILED: {error}", file=sys.stderr)


@contextlib.contextmanager
def serve_tritonnb(bench: Bench, model: Any) -> Iterator[int]:
    """tritonnb in this process; yields its HTTP port."""
    import torch

    import tritonnb

    http_port, grpc_port, metrics_port = free_ports(3)
    tree: list[psutil.Process] = []
    try:
        server = tritonnb.start(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)

        def mlp(x: torch.Tensor) -> torch.Tensor:
            return model(x)

        tritonnb.bind(mlp, MODEL, inputs=["x:float32[64]"], outputs=["y:float32[64]"], max_batch_size=64)
        with contextlib.suppress(psutil.Error, TypeError):
            tree = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
        yield http_port
    finally:
        tritonnb.stop()
        check_gone("tritonnb", tree)


def server_env(torch_threads: int) -> dict[str, str]:
    """The environment for server subprocesses: this Python's libpython first on the library path, and the torch
    thread count for every thread (OpenMP keeps it per thread; PyTriton's handler is not the main thread)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if torch_threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch_threads)
    return env


@contextlib.contextmanager
def serve_pytriton(bench: Bench, workdir: Path, weights: Path) -> Iterator[int]:
    """Raw PyTriton in a subprocess; yields its HTTP port."""
    http_port, grpc_port, metrics_port = free_ports(3)
    args = [str(weights), str(bench.args.torch_threads), str(http_port), str(grpc_port), str(metrics_port)]
    args.append(str(workdir / "pytriton-triton.log"))
    env = server_env(bench.args.torch_threads)
    with subprocess_server(PYTRITON_SERVER, args, workdir, "pytriton", env) as server:
        log = server.log
        wait_until(lambda: http_ok(http_port, f"/v2/models/{MODEL}/ready"), server.process, log, "PyTriton")
        server.remember_tree()
        if not server.tritonserver_pids():
            raise RuntimeError("no tritonserver process found under the PyTriton server")
        yield http_port


@contextlib.contextmanager
def serve_fastapi(bench: Bench, workdir: Path, weights: Path) -> Iterator[int]:
    """FastAPI + uvicorn (1 worker) in a subprocess; yields its port."""
    (port,) = free_ports(1)
    args = [str(weights), str(bench.args.torch_threads), str(port)]
    env = server_env(bench.args.torch_threads)
    with subprocess_server(FASTAPI_SERVER, args, workdir, "fastapi", env) as server:
        wait_until(lambda: http_ok(port, "/v2/health/ready"), server.process, server.log, "FastAPI")
        yield port


def interleaved(bench: Bench, servers: dict[str, tuple[str, Callable[[], Any]]]) -> None:
    """Start every server once, then alternate them point by point: per concurrency, round 1 in the given order,
    round 2 in reverse, and so on (A B B A ...), so that a drift in the machine's speed hits both sides alike."""
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        for name, (label, serve) in servers.items():
            print(f"{name}: starting", file=sys.stderr)
            try:
                ports[label] = stack.enter_context(serve())
                check_answer(ports[label], bench.x, bench.expected)
            except Exception as error:
                bench.failures.append(f"{name}: {error}")
                print(f"{name}: FAILED: {error}", file=sys.stderr)
                ports.pop(label, None)
        for clients in bench.args.concurrency:
            for number in range(1, bench.args.rounds + 1):
                bench.round = number
                for label in list(ports) if number % 2 else list(reversed(ports)):
                    try:
                        bench.measure_point(label, ports[label], clients)
                    except Exception as error:
                        bench.failures.append(f"{label} round {number} c={clients}: {error}")
                        print(f"{label}: FAILED: {error}", file=sys.stderr)


def measure_all(bench: Bench, label: str, serve: Callable[[], Any]) -> None:
    """Start one server, measure it at every concurrency, stop it."""
    with serve() as port:
        bench.measure(label, port)


# -- report -------------------------------------------------------------------------------------------


def find(results: list[Result], server: str, clients: int) -> list[Result]:
    """The results for ``server`` at ``clients``, one per round measured, in round order."""
    return sorted((r for r in results if r.server == server and r.concurrency == clients), key=lambda r: r.round)


def median(values: list[float]) -> float | None:
    """The median of ``values``, or None without any."""
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` formatted, or n/a."""
    if a is None or b is None or not b or a != a or b != b:
        return "n/a"
    return f"{a / b:.2f}"


def round_ratios(ours: list[Result], theirs: list[Result]) -> list[float]:
    """Throughput ratio ``ours / theirs`` in every round both measured (paired in time, so most noise cancels)."""
    by_round = {r.round: r for r in theirs}
    return [
        r.throughput / by_round[r.round].throughput
        for r in ours
        if r.round in by_round and by_round[r.round].throughput
    ]


def report(bench: Bench) -> None:
    """Print the markdown tables and the ratio lines."""
    rounds = bench.args.rounds
    print(
        f"\n{os.cpu_count()} cores, torch threads per server: {bench.args.torch_threads or 'default'}, "
        f"{bench.args.duration:g} s per point after {bench.args.warmup:g} s warm-up, one sample per request"
        + (f", {rounds} alternating rounds" if rounds > 1 else "")
        + "\n"
    )
    round_column = ("| round ", "|---") if rounds > 1 else ("", "")
    print(
        f"| server {round_column[0]}| concurrency | throughput (req/s) | p50 (ms) | p99 (ms) | errors |\n"
        f"|---{round_column[1]}|---|---|---|---|---|"
    )
    for r in bench.results:
        print(
            f"| {r.server} {f'| {r.round} ' if rounds > 1 else ''}| {r.concurrency} | {r.throughput:.0f} | "
            f"{r.percentile(50):.2f} | {r.percentile(99):.2f} | {r.errors} of {r.requests + r.errors} |"
        )
    servers = list(dict.fromkeys(r.server for r in bench.results))
    if rounds > 1:
        print(
            f"\n| concurrency | {' | '.join(f'{s} req/s per round' for s in servers)} | tritonnb / raw PyTriton "
            "per round | tritonnb / raw PyTriton (median) |"
        )
        print("|---" * (len(servers) + 3) + "|")
        for clients in bench.args.concurrency:
            cells = [" / ".join(f"{r.throughput:.0f}" for r in find(bench.results, s, clients)) for s in servers]
            ratios = round_ratios(
                find(bench.results, "tritonnb", clients), find(bench.results, "raw PyTriton", clients)
            )
            middle = median(ratios)
            per_round = " / ".join(f"{value:.2f}" for value in ratios) or "n/a"
            print(f"| {clients} | {' | '.join(cells)} | {per_round} | {'n/a' if middle is None else f'{middle:.2f}'} |")

    def throughput(server: str, clients: int) -> float | None:
        return median([r.throughput for r in find(bench.results, server, clients)])

    def p50(server: str, clients: int) -> float | None:
        return median([r.percentile(50) for r in find(bench.results, server, clients)])

    of = " (medians over rounds)" if rounds > 1 else ""
    print()
    print(f"tritonnb / raw PyTriton, p50 latency at c=1{of}: {ratio(p50('tritonnb', 1), p50('raw PyTriton', 1))}")
    print(
        f"tritonnb / raw PyTriton, throughput at c=8{of}: "
        f"{ratio(throughput('tritonnb', 8), throughput('raw PyTriton', 8))}"
    )
    print(
        f"tritonnb / FastAPI, throughput at c=8{of}: "
        f"{ratio(throughput('tritonnb', 8), throughput('FastAPI + uvicorn', 8))}"
    )
    for r in bench.results:
        if r.first_errors:
            print(f"first errors, {r.server} round {r.round} c={r.concurrency}: {r.first_errors}")
    for failure in bench.failures:
        print(f"FAILED: {failure}")


def main() -> int:
    """Measure the three servers; 1 if any failed to answer correctly, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8], help="e.g. 1,8")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of load before each point")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="cap per client thread and point")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in every server (0: default)")
    parser.add_argument(
        "--servers", default="tritonnb,pytriton,fastapi", help="which to run, in order: tritonnb,pytriton,fastapi"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the server list this many times, alternating (ratios per round)"
    )
    parser.add_argument(
        "--interleave", action="store_true", help="keep every server up and alternate the rounds point by point"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")

    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x[None])).numpy()

    with (
        tempfile.TemporaryDirectory(prefix="tritonnb-compare-") as tmp,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        workdir = Path(tmp)
        weights = workdir / "mlp.pt"
        torch.save(model.state_dict(), weights)
        (workdir / "mlp.py").write_text(MLP_SOURCE)
        bench = Bench(pool, x, expected, args)
        pool.submit(time.sleep, 0).result()  # start the client process before any server
        servers = {
            "tritonnb": ("tritonnb", lambda: serve_tritonnb(bench, model)),
            "pytriton": ("raw PyTriton", lambda: serve_pytriton(bench, workdir, weights)),
            "fastapi": ("FastAPI + uvicorn", lambda: serve_fastapi(bench, workdir, weights)),
        }
        chosen = {name: servers[name] for name in args.servers.split(",")}
        if args.interleave:
            interleaved(bench, chosen)
        else:
            for number in range(1, args.rounds + 1):
                bench.round = number
                for name, (label, serve) in chosen.items():
                    bench.run(name, lambda label=label, serve=serve: measure_all(bench, label, serve))
    report(bench)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
