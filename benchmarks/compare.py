"""Serving overhead: the same torch MLP behind tritonnb, raw PyTriton, Triton's python backend alone, FastAPI +
uvicorn and LitServe, in one run.

Run: ``.venv/bin/python -m benchmarks.compare [--duration 10] [--concurrency 1,8] [--servers tritonnb,backend]
[--client wrk|python] [--rounds 2] [--interleave] [--device cuda]``. Prints a markdown table per concurrency.

The subjects (``benchmarks.subjects``; ``--servers``, default every one whose packages are installed here, in this
order; the report names those skipped):
``tritonnb`` (in this process), ``pytriton`` (raw PyTriton; under numpy 2 run with the Python of a numpy 1
environment, see ``benchmarks.subjects``, or failed with the reason), ``backend`` (the function exported with
``tritonnb.export`` and served by tritonserver's python backend alone, through the export's ``serve_here.sh``: the
reference without the hop to a kernel), ``fastapi`` (FastAPI + uvicorn) and ``litserve`` (LitServe, batches of 64
with a 1 ms timeout, where ``litserve`` is installed). Triton's subjects batch dynamically (``max_batch_size`` 64, no
batch delay). They run one after another on free loopback ports, each alone, each stopped by its pid (process group)
afterwards; the run checks that none of their processes is left (and prints how many tritonserver processes ``ps``
sees on the machine before and after). Each server's answer is checked against the local function once before it is
measured; the script exits non-zero if any server failed.

The model (``benchmarks.workload``): on the CPU ``Linear(64, 256), ReLU, Linear(256, 64)``, ``x: float32[64]`` in,
``y: float32[64]`` out, with the same weights everywhere. ``--device cuda`` serves the GPU-sized ``256 -> 8192 ->
8192 -> 256`` MLP (fp32) on the GPU in every subject, and exits with a message where torch sees no CUDA device;
``--features`` and ``--hidden`` change the widths (``--features 256 --hidden 512,512`` runs that shape, smaller,
on the CPU).

Every server gets the same closed-loop load: KServe v2 JSON ``POST /v2/models/mlp/infer`` with one sample, over C
keep-alive connections sending back to back. ``--client wrk`` (the default where ``wrk`` is on PATH) runs ``wrk -t T
-c C --latency`` with a Lua script holding the body (``T = min(C, --wrk-threads)``, 1 by default), after an unmeasured
wrk run of ``--warmup`` seconds; wrk takes whole seconds. ``--client python`` runs C threads with one
``http.client`` connection each, in a spawned process of their own (never sharing a GIL with tritonnb's in-process
handler). This machine's cores are shared by client and server: compare numbers only within a run.

With ``--rounds N`` the whole server list runs N times in alternation (tritonnb, backend, tritonnb, backend, ...), so
that a slow patch of background load hits every side; the tables then show each round's value and the median, and
every ratio is taken within a round (paired in time) before the median. With ``--interleave`` every server starts once
and stays up, and the rounds alternate point by point (per concurrency: A B, then B A, ...): the points of a pair lie
seconds apart instead of a whole server list apart, which matters on a shared machine whose speed drifts.

``--torch-threads N`` holds in every server's handler thread: tritonnb applies the kernel's count there itself; the
subprocess servers get ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` (under OpenMP, ``torch.set_num_threads`` in the main
thread does not reach PyTriton's handler thread, whose batched matmuls would otherwise use every core and spin).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import http.client
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import subjects
from benchmarks.subjects import LABELS, PATH, Running, Setup
from benchmarks.workload import Workload, add_workload_arguments, workload_from_args

WRK_TIMEOUT = "30s"  # per request: a GPU-sized batch under load must not count as a time-out
WRK_MARK = "tritonnb-wrk"


@dataclasses.dataclass
class Result:
    """One server at one concurrency in one round."""

    server: str
    concurrency: int
    round: int = 1
    requests: int = 0  # answered with 200 in the measured window
    errors: int = 0
    seconds: float = 0.0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    first_errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Answered requests per second in the measured window."""
        return self.requests / self.seconds if self.seconds else 0.0


# -- the two clients -------------------------------------------------------------------------------------


def run_load(port: int, body: str, clients: int, warmup_s: float, duration_s: float, max_requests: int) -> dict:
    """The python client: closed-loop load from ``clients`` threads; latencies of requests that start inside the
    measured window.

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
    answered = [value for values in latencies for value in values]
    failed = [value for values in errors for value in values]
    return {
        "requests": len(answered),
        "errors": len(failed),
        "seconds": duration_s,
        "p50_ms": float(np.percentile(answered, 50)) if answered else float("nan"),
        "p99_ms": float(np.percentile(answered, 99)) if answered else float("nan"),
        "first_errors": failed[:3],
    }


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{mark} %d %d %d %d %d %d %d %.1f %.1f\\n", summary.requests, summary.duration,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(body: str, workdir: Path) -> Path:
    """The Lua script that makes wrk POST ``body`` and print its totals on one line."""
    path = workdir / "post.lua"
    path.write_text(WRK_SCRIPT.format(body=body, mark=WRK_MARK))
    return path


def run_wrk(port: int, script: Path, clients: int, threads: int, seconds: float) -> dict:
    """One wrk run (``-t threads -c clients -d seconds``, whole seconds): answered requests, errors, percentiles.

    wrk runs in a session of its own and is killed by its pid should it outlive its time."""
    argv = [
        "wrk",
        f"-t{max(1, min(clients, threads))}",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=seconds + 90)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    lines = [line for line in output.splitlines() if line.startswith(WRK_MARK)]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output[-600:]}")
    fields = lines[-1].split()[1:]
    requests, duration_us, connect, read, write, status, timeout = (int(f) for f in fields[:7])
    p50_us, p99_us = float(fields[7]), float(fields[8])
    problems = {"non-2xx": status, "timeouts": timeout, "connect": connect, "read": read, "write": write}
    described = [f"{count} {what}" for what, count in problems.items() if count]
    answered = requests - status
    return {
        "requests": answered,
        "errors": status + timeout + connect + read + write,
        "seconds": duration_us / 1e6,
        "p50_ms": p50_us / 1000 if answered else float("nan"),
        "p99_ms": p99_us / 1000 if answered else float("nan"),
        "first_errors": [f"wrk: {', '.join(described)}"] if described else [],
    }


# -- the measurement --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Bench:
    """What every server's measurement shares: the client, body, expected answer and settings."""

    pool: concurrent.futures.ProcessPoolExecutor
    setup: Setup
    x: np.ndarray
    expected: np.ndarray
    args: argparse.Namespace
    results: list[Result] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    round: int = 1

    @property
    def body(self) -> str:
        """The request body: one sample."""
        return subjects.request_body(self.x)

    def check(self, running: Running) -> None:
        """Raise unless the server answers the sample correctly."""
        subjects.check_answer(running.port, self.x, self.expected, self.setup.workload.tolerance())

    def measure(self, running: Running) -> None:
        """Check the answer once, then run the load at every concurrency."""
        self.check(running)
        for clients in self.args.concurrency:
            self.measure_point(running, clients)

    def measure_point(self, running: Running, clients: int) -> None:
        """Run the load at one concurrency and record it under the current round."""
        args = self.args
        if args.client == "wrk":
            script = wrk_script(self.body, self.setup.workdir)
            if args.warmup > 0:
                run_wrk(running.port, script, clients, args.wrk_threads, args.warmup)
            load = run_wrk(running.port, script, clients, args.wrk_threads, args.duration)
        else:
            load = self.pool.submit(
                run_load, running.port, self.body, clients, args.warmup, args.duration, args.max_requests
            ).result()
        result = Result(running.label, clients, self.round, **load)
        self.results.append(result)
        print(
            f"  {running.label} round {self.round} c={clients}: {result.throughput:.0f} req/s, "
            f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, {result.errors} errors",
            file=sys.stderr,
        )

    def fail(self, what: str, error: BaseException) -> None:
        """Record a failure; the next server still runs."""
        self.failures.append(f"{what}: {error}")
        print(f"{what}: FAILED: {error}", file=sys.stderr)

    def run(self, name: str) -> None:
        """Run one server's start-measure-stop."""
        print(f"{LABELS[name]}: starting (round {self.round})", file=sys.stderr)
        try:
            with subjects.serve(name, self.setup) as running:
                self.measure(running)
        except Exception as error:
            self.fail(f"{LABELS[name]} round {self.round}", error)


def interleaved(bench: Bench, names: list[str]) -> None:
    """Start every server once, then alternate them point by point: per concurrency, round 1 in the given order,
    round 2 in reverse, and so on (A B B A ...), so that a drift in the machine's speed hits both sides alike."""
    with contextlib.ExitStack() as stack:
        up: list[Running] = []
        for name in names:
            print(f"{LABELS[name]}: starting", file=sys.stderr)
            try:
                running = stack.enter_context(subjects.serve(name, bench.setup))
                bench.check(running)
                up.append(running)
            except Exception as error:
                bench.fail(LABELS[name], error)
        for clients in bench.args.concurrency:
            for number in range(1, bench.args.rounds + 1):
                bench.round = number
                for running in up if number % 2 else list(reversed(up)):
                    try:
                        bench.measure_point(running, clients)
                    except Exception as error:
                        bench.fail(f"{running.label} round {number} c={clients}", error)


# -- report -----------------------------------------------------------------------------------------------


def find(results: list[Result], server: str, clients: int) -> list[Result]:
    """The results for ``server`` at ``clients``, one per round measured, in round order."""
    return sorted((r for r in results if r.server == server and r.concurrency == clients), key=lambda r: r.round)


def paired_ratios(ours: list[Result], theirs: list[Result], value: Callable[[Result], float]) -> list[float]:
    """``value(ours) / value(theirs)`` in every round both measured (paired in time, so most noise cancels)."""
    by_round = {r.round: r for r in theirs}
    ratios = []
    for r in ours:
        other = by_round.get(r.round)
        if other is not None and value(other) and value(other) == value(other) and value(r) == value(r):
            ratios.append(value(r) / value(other))
    return ratios


def cell(values: list[float], digits: int) -> str:
    """One value, or with several rounds the median and each round's value: ``1.23 (1.20 / 1.26)``."""
    values = [v for v in values if v == v]
    if not values:
        return "n/a"
    middle = f"{statistics.median(values):.{digits}f}"
    return middle if len(values) == 1 else f"{middle} ({' / '.join(f'{v:.{digits}f}' for v in values)})"


def report(bench: Bench, before: set[int], skipped: dict[str, str]) -> None:
    """Print a markdown table per concurrency, the ratio lines, skipped servers, failures and the leftover check."""
    args = bench.args
    rounds = args.rounds
    if args.client == "wrk":
        client = f"wrk, threads min(C, {args.wrk_threads}), {args.warmup:g} s warm-up run"
    else:
        client = f"python http.client, a thread per connection, {args.warmup:g} s warm-up"
    print(
        f"\n{bench.setup.workload.describe()}; {os.cpu_count()} cores; torch threads per server: "
        f"{args.torch_threads or 'default'}; client: {client}; {args.duration:g} s per point; one sample per request"
        + (f"; {rounds} alternating rounds{' (interleaved)' if args.interleave else ''}" if rounds > 1 else "")
    )
    servers = list(dict.fromkeys(r.server for r in bench.results))
    ours = LABELS["tritonnb"]
    many = ", median (per round)" if rounds > 1 else ""
    for clients in args.concurrency:
        print(f"\n### concurrency {clients}\n")
        print(
            f"| server | req/s{many} | p50 ms{many} | p99 ms | errors | tritonnb / this, req/s | "
            "tritonnb / this, p50 |\n|---|---|---|---|---|---|---|"
        )
        for server in servers:
            results = find(bench.results, server, clients)
            if not results:
                continue
            errors = sum(r.errors for r in results)
            total = sum(r.requests + r.errors for r in results)
            if server == ours:
                throughput_ratio = p50_ratio = "—"
            else:
                mine = find(bench.results, ours, clients)
                throughput_ratio = cell(paired_ratios(mine, results, lambda r: r.throughput), 2)
                p50_ratio = cell(paired_ratios(mine, results, lambda r: r.p50_ms), 2)
            print(
                f"| {server} | {cell([r.throughput for r in results], 0)} | {cell([r.p50_ms for r in results], 2)} | "
                f"{cell([r.p99_ms for r in results], 2)} | {errors} of {total} | {throughput_ratio} | {p50_ratio} |"
            )
    of = " (median of per-round ratios)" if rounds > 1 else ""
    print()
    for other in ("backend", "fastapi", "pytriton"):
        label = LABELS[other]
        if label not in servers or ours not in servers:
            continue
        for clients in args.concurrency:
            mine, theirs = find(bench.results, ours, clients), find(bench.results, label, clients)
            throughput = paired_ratios(mine, theirs, lambda r: r.throughput)
            p50 = paired_ratios(mine, theirs, lambda r: r.p50_ms)
            if throughput:
                p50_text = f"{statistics.median(p50):.2f}" if p50 else "n/a"
                throughput_text = f"{statistics.median(throughput):.2f}"
                print(f"tritonnb / {label} at c={clients}{of}: req/s {throughput_text}, p50 {p50_text}")
    for r in bench.results:
        if r.first_errors:
            print(f"first errors, {r.server} round {r.round} c={r.concurrency}: {r.first_errors}")
    for name, reason in skipped.items():
        print(f"skipped: {LABELS[name]}: {reason}")
    for failure in bench.failures:
        print(f"FAILED: {failure}")
    after = subjects.tritonserver_processes()
    survivors = bench.setup.survivors()
    print(
        f"\nleftover check: tritonserver processes on this machine (anyone's) before {len(before)}, after "
        f"{len(after)}; of the {len(bench.setup.processes)} processes this run started, "
        + (f"STILL RUNNING: {survivors}" if survivors else "none runs")
    )


def main() -> int:
    """Measure the servers; 1 if any failed to answer correctly (or left a process behind), else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per point")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8], help="e.g. 1,8")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds of load before each point")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="python client: cap per thread and point")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in every server (0: default)")
    parser.add_argument(
        "--servers",
        default=None,
        help=f"which to run, in order, from {','.join(LABELS)} (default: every one installed here)",
    )
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator for every server (default wrk where it is on PATH)",
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads: min(concurrency, this)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the server list this many times, alternating (ratios per round)"
    )
    parser.add_argument(
        "--interleave", action="store_true", help="keep every server up and alternate the rounds point by point"
    )
    add_workload_arguments(parser)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be 1 or more")
    if args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not on PATH")
    workload = workload_from_args(parser, args)
    names, skipped = choose_servers(parser, args.servers)

    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    before = subjects.tritonserver_processes()
    with (
        tempfile.TemporaryDirectory(prefix="tritonnb-compare-") as tmp,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        bench = make_bench(pool, Path(tmp), workload, args)
        for name, reason in skipped.items():
            print(f"{LABELS[name]}: skipped: {reason}", file=sys.stderr)
        runnable = []
        for name in names:
            reason = subjects.unavailable(name)
            if reason:
                bench.fail(LABELS[name], RuntimeError(reason))
            else:
                runnable.append(name)
        names = runnable
        if "backend" in names:  # before any server: the export starts and stops a tritonnb server of its own
            try:
                subjects.export_repository(bench.setup)
            except Exception as error:
                bench.fail(f"{LABELS['backend']} (export)", error)
                names.remove("backend")
        if args.interleave:
            interleaved(bench, names)
        else:
            for number in range(1, args.rounds + 1):
                bench.round = number
                for name in names:
                    bench.run(name)
    report(bench, before, skipped)
    return 1 if bench.failures or bench.setup.survivors() else 0


def choose_servers(parser: argparse.ArgumentParser, given: str | None) -> tuple[list[str], dict[str, str]]:
    """The subjects to run, and those skipped by default because what they need is not installed, with why. A
    subject asked for by name, or installed but unable to answer correctly here, runs or fails with its reason."""
    if given is not None:
        names = [name.strip() for name in given.split(",") if name.strip()]
        unknown = [name for name in names if name not in LABELS]
        if unknown:
            parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {','.join(LABELS)}")
        return names, {}
    reasons = {name: subjects.not_installed(name) for name in LABELS}
    return [n for n, r in reasons.items() if r is None], {n: r for n, r in reasons.items() if r is not None}


def make_bench(pool: concurrent.futures.ProcessPoolExecutor, workdir: Path, workload: Workload, args: Any) -> Bench:
    """The shared setup: the model with its weights, the sample and its expected answer, the client process."""
    model = workload.build()
    x = workload.sample()
    expected = workload.run(model, x[None])
    setup = Setup(workdir, workload, model, args.torch_threads)
    pool.submit(time.sleep, 0).result()  # start the client process before any server
    return Bench(pool, setup, x, expected, args)


if __name__ == "__main__":
    sys.exit(main())
