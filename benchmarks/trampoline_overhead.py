"""What tritonnb's request path adds in-process: its trampoline against a hand-written PyTriton handler.

Run: ``.venv/bin/python -m benchmarks.trampoline_overhead [--calls 5000]``. Both handle the same one-sample request
for the benchmark MLP (64 -> 256 -> 64) on the CPU with one torch thread; prints microseconds per call.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch

from tritonnb.served_function import ServedFunction, Trampoline
from tritonnb.signature import parse_spec


def per_call_us(handler: Callable[[list], list], requests: list, calls: int) -> float:
    """Mean microseconds per call, after 200 uncounted calls."""
    for _ in range(200):
        handler(requests)
    started = time.perf_counter()
    for _ in range(calls):
        handler(requests)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    sample = np.ones((1, 64), np.float32)
    sample.flags.writeable = False  # as PyTriton hands it over, from shared memory
    requests = [SimpleNamespace(data={"x": sample})]

    def hand_written(batch: list) -> list:
        x = np.concatenate([r.data["x"] for r in batch])
        with torch.inference_mode():
            return [{"y": net(torch.from_numpy(x.copy())).numpy()}]

    served = ServedFunction(
        lambda x: net(x), "mlp", [parse_spec("x:float32[64]")], [parse_spec("y:float32[64]")], "cpu", lambda *_: None
    )
    trampoline = Trampoline(served, batched=True)
    raw = per_call_us(hand_written, requests, args.calls)
    ours = per_call_us(trampoline.handle, requests, args.calls)
    print("| handler | µs per call |\n|---|---|")
    print(f"| hand-written PyTriton handler | {raw:.1f} |\n| tritonnb trampoline | {ours:.1f} |")
    print(f"\ntritonnb adds {ours - raw:.1f} µs per request in-process")


if __name__ == "__main__":
    main()
