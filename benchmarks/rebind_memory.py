"""Memory and processes over many re-binds: does re-running a cell leak kernel memory or tritonserver children?

Run: ``.venv/bin/python -m benchmarks.rebind_memory [--binds 100] [--every 10]``. Prints a markdown table.

Binds a small function ``--binds`` times under one name on a tritonnb server on free loopback ports. Most binds keep
the signature (an in-place swap); every ``--every``-th toggles ``x:float32[4]`` <-> ``x:float32[-1]``, so Triton
reloads the model. The replaced generation is retired asynchronously once quiet: after each signature change the
script measures how long until tritonserver has no more children than after the first bind (up to
``--settle-max`` seconds), and waits at least ``--settle`` seconds in all. Every ``--every`` binds it calls the model
once to check it answers with the newest function, and records this process's RSS, its thread count and the number
of tritonserver's child processes. Exits non-zero if an answer was wrong.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil

from devtools.ports import free_loopback_ports as free_ports

MODEL = "rebind"
MIB = 1024 * 1024


@dataclass
class Row:
    """The state after a number of binds."""

    binds: int
    swap_ms: float  # median of the same-signature binds since the previous row
    reload_ms: float  # the last signature-changing bind, NaN if none
    retired_s: float  # bind return to tritonserver back at its baseline children, NaN if it did not get there
    rss_mib: float
    threads: int
    children: int
    answer: str


def scaler(factor: float) -> Callable:
    """A new function object each time, as re-running a cell makes: ``y = x * factor``."""

    def scale(x: object) -> object:
        return x * factor

    return scale


def tritonserver_children() -> int:
    """How many processes run under tritonserver (python backend stubs)."""
    import tritonnb

    server = tritonnb.server()
    if server is None or server.pid is None:
        return -1
    try:
        return len(psutil.Process(server.pid).children(recursive=True))
    except psutil.Error:
        return -1


def check_answer(factor: float) -> str:
    """Call the model once; ``ok`` when it answers with the newest function, else what went wrong."""
    import tritonnb

    try:
        y = tritonnb.client(MODEL)(np.ones((1, 4), np.float32))["y"]
    except Exception as error:
        return f"error: {error!r}"[:120]
    return "ok" if np.allclose(y, factor) else f"wrong: {np.ravel(y)[:4].tolist()}"


def wait_for_retirement(baseline: int, settle_s: float, settle_max_s: float) -> float:
    """Seconds until tritonserver's children drop back to ``baseline`` (NaN if not within ``settle_max_s``);
    returns no sooner than ``settle_s``."""
    started = time.perf_counter()
    retired = float("nan")
    while (elapsed := time.perf_counter() - started) < settle_max_s:
        if tritonserver_children() <= baseline:
            retired = elapsed
            break
        time.sleep(0.05)
    time.sleep(max(0.0, settle_s - (time.perf_counter() - started)))
    return retired


def main() -> int:
    """Bind, measure, print the table; 1 if any answer was wrong."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binds", type=int, default=100, help="binds in all")
    parser.add_argument("--every", type=int, default=10, help="record, and change the signature, every N binds")
    parser.add_argument("--settle", type=float, default=2.5, help="seconds to wait at least after a signature change")
    parser.add_argument("--settle-max", type=float, default=15.0, help="seconds to wait at most for the old generation")
    args = parser.parse_args()

    import tritonnb

    me = psutil.Process()
    rows: list[Row] = []
    actions: dict[str, int] = {}
    http_port, grpc_port, metrics_port = free_ports(3)
    try:
        tritonnb.start(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
        dims = "[4]"
        baseline = -1
        swap_ms: list[float] = []
        reload_ms = retired_s = float("nan")
        for i in range(1, args.binds + 1):
            changed = i % args.every == 0
            if changed:
                dims = "[-1]" if dims == "[4]" else "[4]"
            started = time.perf_counter()
            card = tritonnb.bind(scaler(float(i)), MODEL, inputs=[f"x:float32{dims}"], outputs=[f"y:float32{dims}"])
            elapsed_ms = (time.perf_counter() - started) * 1000
            action = card.result.action
            actions[action] = actions.get(action, 0) + 1
            if i == 1:
                baseline = tritonserver_children()  # one generation: its stub and helpers
            elif changed:
                reload_ms = elapsed_ms
                retired_s = wait_for_retirement(baseline, args.settle, args.settle_max)
            else:
                swap_ms.append(elapsed_ms)
            if i % args.every == 0:
                rows.append(
                    Row(
                        binds=i,
                        swap_ms=statistics.median(swap_ms) if swap_ms else float("nan"),
                        reload_ms=reload_ms,
                        retired_s=retired_s,
                        rss_mib=me.memory_info().rss / MIB,
                        threads=me.num_threads(),
                        children=tritonserver_children(),
                        answer=check_answer(float(i)),
                    )
                )
                swap_ms, reload_ms, retired_s = [], float("nan"), float("nan")
                print(f"  {rows[-1]}", file=sys.stderr)
    finally:
        tritonnb.stop()

    print(f"\nbinds: {args.binds} ({', '.join(f'{n} {a}' for a, n in sorted(actions.items()))}); ", end="")
    print(f"tritonserver children after the first bind: {baseline}\n")
    print(
        "| binds | swap bind, median (ms) | reload bind (ms) | old generation gone after (s) | kernel RSS (MiB) "
        "| kernel threads | tritonserver children | answer |\n|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r.binds} | {r.swap_ms:.2f} | {r.reload_ms:.0f} | {r.retired_s:.1f} | {r.rss_mib:.1f} | {r.threads} "
            f"| {r.children} | {r.answer} |"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        growth = last.rss_mib - first.rss_mib
        print(
            f"\nRSS growth from bind {first.binds} to bind {last.binds}: {growth:+.1f} MiB "
            f"({growth / first.rss_mib * 100:+.1f} %, {growth * 1024 / (last.binds - first.binds):+.1f} KiB per bind); "
            f"tritonserver children {first.children} -> {last.children}, threads {first.threads} -> {last.threads}"
        )
    if len(rows) >= 3:
        second, last = rows[1], rows[-1]
        print(f"RSS growth from bind {second.binds} to bind {last.binds}: {last.rss_mib - second.rss_mib:+.1f} MiB")
    return 0 if rows and all(r.answer == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
