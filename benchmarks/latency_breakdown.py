"""Where one request's time goes at concurrency 1, hop by hop: tritonnb, raw PyTriton and Triton's python backend alone.

Run: ``.venv/bin/python -m benchmarks.latency_breakdown [--duration 10] [--warmup 2]
[--servers tritonnb,pytriton,backend] [--device cuda]``. Prints one markdown table: a row per segment of the request
path, a column per server, in µs per request (means over the measured window), then the totals they come from.

The servers and the model are ``benchmarks.compare``'s (``benchmarks.subjects``, ``benchmarks.workload``): the
64 -> 256 -> 64 MLP on the CPU, one sample per request as KServe v2 JSON; ``backend`` is the function exported with
``tritonnb.export`` and served by tritonserver's python backend through the export's ``serve_here.sh``. One server
runs at a time, on free loopback ports, and is stopped by its pid afterwards. The client is one keep-alive
``http.client`` connection sending requests one after another, in a spawned process of its own (never sharing a GIL
with tritonnb's in-process handler), for ``--warmup`` seconds unmeasured and then ``--duration`` seconds (at most
``--max-requests``).

Sources, read before and after the measured window (deltas, so warm-up and the answer check do not count):

- client: each request's round trip, measured by the client (mean and p50);
- Triton: ``GET /v2/models/mlp/stats`` (with the ``triton-access-token`` header for tritonnb and raw PyTriton):
  request success, queue, compute_input, compute_infer, compute_output, per request;
- the function's own time: the served function wrapped in ``perf_counter_ns`` (``benchmarks.workload.CallTimer``),
  in the process that runs it (tritonnb: this one; raw PyTriton: its server, through a shared file; there the timed
  part includes the numpy <-> torch conversion, a few µs). The export's function runs inside the stub, out of reach:
  the same function is timed in this process on the same input and labelled "measured in process";
- tritonnb only: the kernel side's own counters, ``tritonnb.triton.channel.channel_stats("mlp")`` (``batches``,
  ``requests``, ``kernel_ns``: from a request frame received in the kernel to its reply sent, handler included;
  ``stub_ns``: time inside the stub's ``execute()``, as the stub reports it), where that function exists; else "—".

At concurrency 1 every batch holds one request, so per-batch figures (function calls, kernel counters) are per
request too. This machine's cores are shared by client and server: compare numbers only within a run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import http.client
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import subjects
from benchmarks.subjects import LABELS, MODEL, PATH, Running, Setup
from benchmarks.workload import Workload, add_workload_arguments, served_function, workload_from_args

STAGES = ("success", "queue", "compute_input", "compute_infer", "compute_output")  # Triton's inference_stats
SUBJECTS = ("tritonnb", "pytriton", "backend")
DASH = "—"


# -- the client -------------------------------------------------------------------------------------------


def sequential_load(port: int, body: str, duration_s: float, max_requests: int) -> dict:
    """In the client process: requests one after another on one keep-alive connection; their round trips in µs."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors: list[str] = []
    end = time.perf_counter() + duration_s
    try:
        while len(latencies) + len(errors) < max_requests:
            began = time.perf_counter()
            if began >= end:
                break
            try:
                connection.request("POST", PATH, body, headers)
                response = connection.getresponse()
                payload = response.read()
            except OSError as error:
                errors.append(repr(error))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            if response.status == 200 and b'"outputs"' in payload:
                latencies.append((time.perf_counter() - began) * 1e6)
            else:
                errors.append(f"{response.status} {payload[:160]!r}")
    finally:
        connection.close()
    return {"latencies_us": latencies, "errors": errors}


# -- the server-side sources ------------------------------------------------------------------------------


def triton_stats(running: Running) -> dict[str, tuple[int, int]]:
    """Triton's cumulative (count, ns) per stage of model ``mlp``, all versions added; ``executions`` as (count, 0)."""
    headers = {"triton-access-token": running.token} if running.token else {}
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=10)
    try:
        connection.request("GET", f"/v2/models/{MODEL}/stats", headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"GET /v2/models/{MODEL}/stats: {response.status} {payload[:200]!r}")
    totals = {stage: [0, 0] for stage in STAGES}
    executions = 0
    for model in json.loads(payload).get("model_stats", []):
        if model.get("name") != MODEL:
            continue
        executions += int(model.get("execution_count", 0))
        for stage in STAGES:
            entry = model.get("inference_stats", {}).get(stage, {})
            totals[stage][0] += int(entry.get("count", 0))
            totals[stage][1] += int(entry.get("ns", 0))
    result = {stage: (count, ns) for stage, (count, ns) in totals.items()}
    result["executions"] = (executions, 0)
    return result


@dataclasses.dataclass(frozen=True)
class KernelCounters:
    """A snapshot of tritonnb's kernel-side counters for one model."""

    batches: int
    requests: int
    kernel_ns: int
    stub_ns: int


def kernel_counters(model: str) -> KernelCounters | None:
    """``tritonnb.triton.channel.channel_stats(model)`` where tritonnb provides it, else None."""
    try:
        from tritonnb.triton import channel
    except ImportError:
        return None
    read = getattr(channel, "channel_stats", None)
    if read is None:
        return None
    try:
        snapshot = read(model)
        if snapshot is None:
            return None
        return KernelCounters(
            int(snapshot.batches), int(snapshot.requests), int(snapshot.kernel_ns), int(snapshot.stub_ns)
        )
    except Exception as error:  # a transport in the middle of a rewrite: say so, and show "—"
        print(f"tritonnb kernel counters unreadable: {type(error).__name__}: {error}", file=sys.stderr)
        return None


@dataclasses.dataclass
class Snapshot:
    """Every cumulative source at one moment."""

    stats: dict[str, tuple[int, int]]
    function: tuple[int, int] | None  # (calls, ns)
    kernel: KernelCounters | None

    @classmethod
    def take(cls, running: Running) -> Snapshot:
        """Read Triton's statistics, the function's timer and (tritonnb) the kernel's counters."""
        kernel = kernel_counters(MODEL) if running.name == "tritonnb" else None
        function = running.timer.read() if running.timer is not None else None
        return cls(triton_stats(running), function, kernel)


def per(ns: int, count: int) -> float | None:
    """``ns / count`` in µs, or None without any count."""
    return ns / count / 1000 if count > 0 else None


def function_in_process(setup: Setup, x: np.ndarray, calls: int) -> float:
    """Mean µs of the served function called here on the same one-sample input (under ``no_grad``, as tritonnb and
    the export call it; after 100 uncounted calls; waiting for the GPU on CUDA)."""
    import torch

    function = served_function(setup.model)
    cuda = setup.workload.cuda
    tensor = torch.from_numpy(x[None]).to(setup.workload.device)
    with torch.no_grad():
        for _ in range(100):
            function(tensor)
        if cuda:
            torch.cuda.synchronize(tensor.device)
        total = 0
        for _ in range(calls):
            began = time.perf_counter_ns()
            function(tensor)
            if cuda:
                torch.cuda.synchronize(tensor.device)
            total += time.perf_counter_ns() - began
    return total / calls / 1000


# -- one subject ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Breakdown:
    """One server's figures in µs per request (means over the measured window)."""

    name: str
    requests: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)
    client_mean: float | None = None
    client_p50: float | None = None
    triton: dict[str, float | None] = dataclasses.field(default_factory=dict)
    triton_requests: int = 0
    executions: int = 0
    function: float | None = None
    function_calls: int = 0
    function_in_process: bool = False
    kernel: float | None = None
    stub: float | None = None
    kernel_batches: int = 0

    @property
    def label(self) -> str:
        """The server's name in the table."""
        return LABELS[self.name]


def measure(name: str, setup: Setup, pool: concurrent.futures.Executor, args: argparse.Namespace) -> Breakdown:
    """Start ``name``, check its answer, warm it up, and read every source around the measured window."""
    x = setup.workload.sample()
    body = subjects.request_body(x)
    result = Breakdown(name)
    print(f"{LABELS[name]}: starting", file=sys.stderr)
    with subjects.serve(name, setup) as running:
        subjects.check_answer(running.port, x, setup.workload.run(setup.model, x[None]), setup.workload.tolerance())
        pool.submit(sequential_load, running.port, body, args.warmup, args.max_requests).result()
        before = Snapshot.take(running)
        load = pool.submit(sequential_load, running.port, body, args.duration, args.max_requests).result()
        after = Snapshot.take(running)
    latencies = load["latencies_us"]
    result.requests, result.errors = len(latencies), load["errors"]
    if latencies:
        result.client_mean, result.client_p50 = statistics.fmean(latencies), statistics.median(latencies)
    for stage in STAGES:
        count = after.stats[stage][0] - before.stats[stage][0]
        result.triton[stage] = per(after.stats[stage][1] - before.stats[stage][1], count)
    result.triton_requests = after.stats["success"][0] - before.stats["success"][0]
    result.executions = after.stats["executions"][0] - before.stats["executions"][0]
    if before.function is not None and after.function is not None:
        result.function_calls = after.function[0] - before.function[0]
        result.function = per(after.function[1] - before.function[1], result.function_calls)
    elif name == "backend":
        result.function = function_in_process(setup, x, max(200, min(result.requests, 5000)))
        result.function_in_process = True
    if before.kernel is not None and after.kernel is not None:
        result.kernel_batches = after.kernel.batches - before.kernel.batches
        result.kernel = per(after.kernel.kernel_ns - before.kernel.kernel_ns, result.kernel_batches)
        result.stub = per(after.kernel.stub_ns - before.kernel.stub_ns, result.kernel_batches)
    print(
        f"  {LABELS[name]}: {result.requests} requests, client mean {fmt(result.client_mean)} µs, "
        f"{len(result.errors)} errors",
        file=sys.stderr,
    )
    return result


# -- the table --------------------------------------------------------------------------------------------


def fmt(value: float | None, mark: str = "") -> str:
    """µs with one decimal, or a dash."""
    return DASH if value is None else f"{value:.1f}{mark}"


def minus(a: float | None, b: float | None) -> float | None:
    """``a - b``, or None if either is missing."""
    return None if a is None or b is None else a - b


def segments(b: Breakdown) -> dict[str, str]:
    """The row cells of one server, by row key."""
    request, infer = b.triton.get("success"), b.triton.get("compute_infer")
    cells = {
        "client": fmt(minus(b.client_mean, request)),
        "triton": fmt(minus(request, infer)),
        "triton_stub": DASH,
        "stub_hop": DASH,
        "kernel": DASH,
        "function": fmt(b.function, " ᶜ" if b.function_in_process else ""),
    }
    if b.name == "tritonnb" and b.kernel is not None and b.stub is not None:
        cells["triton_stub"] = fmt(minus(infer, b.stub))
        cells["stub_hop"] = fmt(minus(b.stub, b.kernel))
        cells["kernel"] = fmt(minus(b.kernel, b.function))
    elif b.name == "backend":
        cells["stub_hop"] = fmt(minus(infer, b.function), " ᵇ")
    else:  # raw PyTriton, or tritonnb without kernel counters: everything between Triton and the function
        cells["stub_hop"] = fmt(minus(infer, b.function), " ᵃ")
    return cells


ROWS = {
    "client": "client + HTTP outside Triton (client − Triton request)",
    "triton": "Triton queue + input + output (request − compute_infer)",
    "triton_stub": "Triton ↔ stub (compute_infer − stub execute)",
    "stub_hop": "stub + hop to kernel (stub execute − kernel)",
    "kernel": "kernel transport (kernel − function)",
    "function": "function",
}


def totals(b: Breakdown) -> dict[str, str]:
    """The figures the segments come from, by row name."""
    calls = f"{b.function_calls}" if b.function_calls else ("timed here" if b.function_in_process else DASH)
    return {
        "**total: client round trip, mean** (= the rows above)": fmt(b.client_mean),
        "client round trip, p50": fmt(b.client_p50),
        "Triton request (success)": fmt(b.triton.get("success")),
        "Triton queue": fmt(b.triton.get("queue")),
        "Triton compute_input": fmt(b.triton.get("compute_input")),
        "Triton compute_infer": fmt(b.triton.get("compute_infer")),
        "Triton compute_output": fmt(b.triton.get("compute_output")),
        "stub execute (kernel counters)": fmt(b.stub),
        "kernel, frame in to reply out (kernel counters)": fmt(b.kernel),
        "function": fmt(b.function, " ᶜ" if b.function_in_process else ""),
        "requests: client / Triton / executions / function calls / kernel batches": (
            f"{b.requests} / {b.triton_requests} / {b.executions} / {calls} / {b.kernel_batches or DASH}"
        ),
    }


def report(results: list[Breakdown], failures: list[str], setup: Setup, args: argparse.Namespace) -> None:
    """Print the table, its totals and footnotes."""
    print(
        f"\n{setup.workload.describe()}; concurrency 1, one keep-alive connection; {args.duration:g} s measured after "
        f"{args.warmup:g} s warm-up; torch threads per server: {args.torch_threads or 'default'}; µs per request, "
        "means over the window\n"
    )
    print("| segment | " + " | ".join(b.label for b in results) + " |")
    print("|---" * (len(results) + 1) + "|")
    cells = [segments(b) for b in results]
    for key, title in ROWS.items():
        print(f"| {title} | " + " | ".join(c[key] for c in cells) + " |")
    rows = [totals(b) for b in results]
    for title in rows[0] if rows else []:
        print(f"| {title} | " + " | ".join(r[title] for r in rows) + " |")
    print(
        "\nᵃ compute_infer − function: Triton ↔ stub, the stub, the hop to the process that runs the function and its "
        "transport there, together (no kernel counters to split them)."
        "\nᵇ compute_infer − function: Triton ↔ stub and the python backend's own work around the function, in the "
        "stub; no hop."
        "\nᶜ measured in process: the same function on the same input, timed in this benchmark's process, not inside "
        "the stub."
    )
    if any(b.name == "tritonnb" and b.kernel is None for b in results):
        print(
            "tritonnb: no kernel counters here (tritonnb.triton.channel.channel_stats is not available), so its "
            "Triton ↔ stub, stub + hop and kernel transport rows are one figure (ᵃ)."
        )
    for b in results:
        if b.triton_requests != b.requests:
            print(f"note: {b.label}: Triton counted {b.triton_requests} requests, the client {b.requests}")
        if b.errors:
            print(f"errors, {b.label}: {len(b.errors)}, first: {b.errors[:3]}")
    for failure in failures:
        print(f"FAILED: {failure}")


def main() -> int:
    """Measure each server in turn; 1 if any failed (or left a process behind), else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds of requests before")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap on requests per window")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads in every server (0: default)")
    parser.add_argument("--servers", default=",".join(SUBJECTS), help=f"from {','.join(SUBJECTS)}, in order")
    add_workload_arguments(parser)
    args = parser.parse_args()
    names = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUBJECTS]
    if unknown:
        parser.error(f"unknown server(s) {', '.join(unknown)}; choose from {','.join(SUBJECTS)}")
    workload: Workload = workload_from_args(parser, args)

    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    before = subjects.tritonserver_processes()
    results: list[Breakdown] = []
    failures: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="tritonnb-breakdown-") as tmp,
        concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
    ):
        setup = Setup(Path(tmp), workload, workload.build(), args.torch_threads, time_function=True)
        pool.submit(time.sleep, 0).result()  # start the client process before any server
        for name in names:
            reason = subjects.unavailable(name)
            try:
                if reason:
                    raise RuntimeError(reason)
                results.append(measure(name, setup, pool, args))
            except Exception as error:
                failures.append(f"{LABELS[name]}: {error}")
                print(f"{LABELS[name]}: FAILED: {error}", file=sys.stderr)
    report(results, failures, setup, args)
    survivors = setup.survivors()
    print(
        f"\nleftover check: tritonserver processes on this machine (anyone's) before {len(before)}, after "
        f"{len(subjects.tritonserver_processes())}; of the {len(setup.processes)} processes this run started, "
        + (f"STILL RUNNING: {survivors}" if survivors else "none runs")
    )
    return 1 if failures or survivors else 0


if __name__ == "__main__":
    sys.exit(main())
