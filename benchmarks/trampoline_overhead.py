"""What tritonnb's request path adds in-process: its trampoline against PyTriton's own ``@batch`` handler.

Run: ``.venv/bin/python -m benchmarks.trampoline_overhead [--calls 3000] [--batches 1,8,32]``. Both handle the same
dynamic batch of one-sample requests (read-only ``(1, 64)`` float32 arrays, as PyTriton hands them over from shared
memory) for the benchmark MLP (64 -> 256 -> 64) on the CPU. As in a notebook, ``torch.set_num_threads(1)`` is called in
the main thread, and both handlers are called from a worker thread, like PyTriton's inference handler thread (torch's
intra-op thread count is per OS thread under OpenMP: a handler that does not apply it runs with the default and its
helper threads spin). The PyTriton handler is ``compare.py``'s, as a PyTriton user writes it. Prints microseconds per
call: wall time, and CPU time of the whole process (helper threads included); the best of ``--repeats`` alternations.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
from collections.abc import Callable

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.proxy.types import Request

from tritonnb.served_function import ServedFunction, Trampoline
from tritonnb.signature import parse_spec


def per_call_us(handler: Callable[[list], list], requests: list, calls: int) -> tuple[float, float]:
    """Mean wall and process-CPU microseconds per call, after 200 uncounted calls."""
    for _ in range(200):
        handler(requests)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        handler(requests)
    return (time.perf_counter() - wall) / calls * 1e6, (time.process_time() - cpu) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--batches", type=lambda s: [int(n) for n in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=3, help="alternations of the two handlers; best is shown")
    parser.add_argument("--main-thread", action="store_true", help="call the handlers in the main thread instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()

    @batch
    def pytriton_handler(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"y": net(torch.from_numpy(x)).numpy()}

    served = ServedFunction(
        lambda x: net(x), "mlp", [parse_spec("x:float32[64]")], [parse_spec("y:float32[64]")], "cpu", lambda *_: None
    )
    trampoline = Trampoline(served, batched=True)
    handlers = {"PyTriton @batch handler": pytriton_handler, "tritonnb trampoline": trampoline.handle}

    def one_batch(size: int) -> list:
        requests = []
        for i in range(size):
            sample = np.full((1, 64), i, np.float32)
            sample.flags.writeable = False  # as PyTriton hands it over, from shared memory
            requests.append(Request(data={"x": sample}))
        return requests

    # one thread per handler, as each PyTriton model has its own: a thread count applied by one must not help the other
    workers = {name: concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name) for name in handlers}

    def run(name: str, requests: list) -> tuple[float, float]:
        if args.main_thread:
            return per_call_us(handlers[name], requests, args.calls)
        return workers[name].submit(per_call_us, handlers[name], requests, args.calls).result()

    where = "main thread" if args.main_thread else "a worker thread"
    print(f"µs per call from {where}, best of {args.repeats}: wall / process CPU\n")
    print(f"| requests per batch | {' | '.join(handlers)} | tritonnb adds per batch (wall) |\n|---|---|---|---|")
    for size in args.batches:
        requests = one_batch(size)
        expected = workers["PyTriton @batch handler"].submit(pytriton_handler, requests).result()
        got = workers["tritonnb trampoline"].submit(trampoline.handle, requests).result()
        assert all(np.allclose(a["y"], b["y"]) for a, b in zip(expected, got)), "handlers disagree"
        best = {name: (float("inf"), float("inf")) for name in handlers}
        for _ in range(args.repeats):
            for name in handlers:
                wall, cpu = run(name, requests)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        cells = " | ".join(f"{wall:.1f} / {cpu:.1f}" for wall, cpu in best.values())
        added = best["tritonnb trampoline"][0] - best["PyTriton @batch handler"][0]
        print(f"| {size} | {cells} | {added:+.1f} |")
    for worker in workers.values():
        worker.shutdown()


if __name__ == "__main__":
    main()
