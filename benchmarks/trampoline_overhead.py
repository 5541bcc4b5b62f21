"""What tritonnb's request path adds in-process: its trampoline against PyTriton's own ``@batch`` handler.

Run: ``.venv/bin/python -m benchmarks.trampoline_overhead [--calls 3000] [--batches 1,8,32]``. Both handle the same
dynamic batch of one-sample requests (read-only ``(1, 64)`` float32 arrays, as PyTriton hands them over from shared
memory) for the benchmark MLP (64 -> 256 -> 64) on the CPU. As in a notebook, ``torch.set_num_threads(1)`` is called in
the main thread, and both handlers are called from a worker thread, like PyTriton's inference handler thread (torch's
intra-op thread count is per OS thread under OpenMP: a handler that does not apply it runs with the default and its
helper threads spin). The PyTriton handler is ``compare.py``'s, as a PyTriton user writes it. Prints microseconds per
call: wall time, and CPU time of the whole process (helper threads included); the best of ``--repeats`` alternations.

A third handler is the same trampoline with the user's function run under ``torch.inference_mode()`` instead of
``torch.no_grad()`` (what tritonnb used before: faster on paper, but it turned modules the function moved or created
into inference tensors the notebook could no longer train). ``--device cuda`` puts the MLP and the inputs on the GPU.
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

from tritonnb.serving import torch_bridge
from tritonnb.serving.served_function import ServedFunction, Trampoline
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
    parser.add_argument("--device", default="cpu", help="where the MLP runs: cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).to(args.device)
    net.eval()

    @batch
    def pytriton_handler(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            return {"y": net(torch.from_numpy(x).to(args.device)).cpu().numpy()}

    def trampoline_for() -> Trampoline:
        specs = [parse_spec("x:float32[64]")], [parse_spec("y:float32[64]")]
        return Trampoline(ServedFunction(lambda x: net(x), "mlp", *specs, args.device, lambda *_: None), batched=True)

    trampoline, old_trampoline = trampoline_for(), trampoline_for()

    def under_inference_mode(requests: list) -> list:
        """The trampoline as it was: the user's function under torch.inference_mode()."""
        kept = torch_bridge.no_autograd
        torch_bridge.no_autograd = torch.inference_mode
        try:
            return old_trampoline.handle(requests)
        finally:
            torch_bridge.no_autograd = kept

    handlers = {
        "PyTriton @batch handler": pytriton_handler,
        "tritonnb trampoline (no_grad)": trampoline.handle,
        "tritonnb trampoline (inference_mode)": under_inference_mode,
    }

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
    print(f"µs per call from {where} on {args.device}, best of {args.repeats}: wall / process CPU\n")
    print(
        f"| requests per batch | {' | '.join(handlers)} | tritonnb adds per batch (wall) | no_grad / inference_mode |"
        "\n|---|---|---|---|---|---|"
    )
    for size in args.batches:
        requests = one_batch(size)
        expected = workers["PyTriton @batch handler"].submit(pytriton_handler, requests).result()
        for name in list(handlers)[1:]:
            got = workers[name].submit(handlers[name], requests).result()
            assert all(np.allclose(a["y"], b["y"]) for a, b in zip(expected, got)), f"{name} disagrees"
        best = {name: (float("inf"), float("inf")) for name in handlers}
        for _ in range(args.repeats):
            for name in handlers:
                wall, cpu = run(name, requests)
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
        cells = " | ".join(f"{wall:.1f} / {cpu:.1f}" for wall, cpu in best.values())
        added = best["tritonnb trampoline (no_grad)"][0] - best["PyTriton @batch handler"][0]
        ratio = best["tritonnb trampoline (no_grad)"][0] / best["tritonnb trampoline (inference_mode)"][0]
        print(f"| {size} | {cells} | {added:+.1f} | {ratio:.3f} |")
    for worker in workers.values():
        worker.shutdown()


if __name__ == "__main__":
    main()
