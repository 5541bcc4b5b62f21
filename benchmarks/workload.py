"""The model every request-path benchmark serves: a torch MLP with fixed weights, and a hook that times it.

Not run on its own: ``benchmarks.compare`` and ``benchmarks.latency_breakdown`` import it, in their own process and in
the server subprocesses of ``benchmarks/servers/``. It imports only numpy and torch, so those servers stay lean.

On the CPU (the default) the MLP is ``Linear(64, 256), ReLU, Linear(256, 64)``, one sample of 64 float32 per request.
With ``--device cuda`` it is the GPU-sized ``256 -> 8192 -> 8192 -> 256`` (fp32, about 270 MB of weights).
``--features`` and ``--hidden`` override the widths on either device (``--hidden 512,512 --features 256`` runs the
CUDA shape, smaller, on the CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CallTimer",
    "Workload",
    "add_workload_arguments",
    "build_mlp",
    "load_mlp",
    "served_function",
    "workload_from_args",
]

SHAPES = {"cpu": (64, (256,)), "cuda": (256, (8192, 8192))}  # device kind -> (features in and out, hidden widths)


def build_mlp(dims: Sequence[int]) -> Any:
    """``Linear(dims[0], dims[1]), ReLU, ..., Linear(dims[-2], dims[-1])`` on the CPU, in eval mode."""
    import torch

    layers: list[Any] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(dims)):
        if index:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(width_in, width_out))
    return torch.nn.Sequential(*layers).eval()


def load_mlp(weights: str, dims: Sequence[int], device: str, threads: int) -> Any:
    """In a server subprocess: the MLP with the benchmark's saved weights, on ``device``; ``threads`` > 0 sets torch's
    intra-op thread count for the calling thread."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    model = build_mlp(dims)
    model.load_state_dict(torch.load(weights, map_location="cpu"))
    return model.to(device).eval()


@dataclasses.dataclass(frozen=True)
class Workload:
    """The MLP's widths and the device it runs on."""

    features: int
    hidden: tuple[int, ...]
    device: str = "cpu"

    @classmethod
    def for_device(cls, device: str, features: int | None = None, hidden: Sequence[int] | None = None) -> Workload:
        """The default shape for ``device`` (cpu or cuda[:K]), with any width overridden."""
        default_features, default_hidden = SHAPES["cuda" if device.startswith("cuda") else "cpu"]
        return cls(features or default_features, tuple(hidden or default_hidden), device)

    @property
    def dims(self) -> tuple[int, ...]:
        """Every layer width, input to output."""
        return (self.features, *self.hidden, self.features)

    @property
    def cuda(self) -> bool:
        """Whether the model runs on a GPU."""
        return self.device.startswith("cuda")

    def describe(self) -> str:
        """For report headers: ``MLP 64->256->64 (fp32, cpu)``."""
        return f"MLP {'->'.join(str(d) for d in self.dims)} (fp32, {self.device})"

    def build(self) -> Any:
        """The MLP with this benchmark's weights (seed 0), on the device."""
        import torch

        torch.manual_seed(0)
        return build_mlp(self.dims).to(self.device)

    def sample(self) -> np.ndarray:
        """The one sample every request sends: ``float32[features]``, fixed."""
        return np.random.default_rng(0).standard_normal(self.features).astype(np.float32)

    def run(self, model: Any, batch: np.ndarray) -> np.ndarray:
        """The model's answer for a host batch, on the host: what every server must return."""
        import torch

        with torch.inference_mode():
            return model(torch.from_numpy(batch).to(self.device)).cpu().numpy()

    def tolerance(self) -> dict[str, float]:
        """``np.allclose`` arguments for a server's answer: a batched GPU matmul may round differently."""
        return {"rtol": 1e-3, "atol": 1e-4} if self.cuda else {"rtol": 1e-4, "atol": 1e-5}

    def save(self, model: Any, path: Path) -> None:
        """Write the weights the server subprocesses load (from the CPU, so any device can read them)."""
        import torch

        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


class CallTimer:
    """Calls and total nanoseconds of the served function, in an int64 pair: in memory, or in a file that a server
    subprocess updates (``np.memmap``) and the benchmark reads."""

    def __init__(self, path: Path | None = None, create: bool = False) -> None:
        self.path = path
        if path is None:
            self._counts = np.zeros(2, dtype=np.int64)
        else:
            if create:
                np.zeros(2, dtype=np.int64).tofile(path)
            self._counts = np.memmap(path, dtype=np.int64, mode="r+", shape=(2,))

    def add(self, ns: int) -> None:
        """Count one call that took ``ns``."""
        self._counts[0] += 1
        self._counts[1] += ns

    def read(self) -> tuple[int, int]:
        """(calls, total ns) so far."""
        counts = np.fromfile(self.path, dtype=np.int64, count=2) if self.path is not None else self._counts
        return int(counts[0]), int(counts[1])


def served_function(model: Any, timer: CallTimer | None = None, sync: bool = False) -> Callable[[Any], Any]:
    """The function tritonnb serves (and exports): a torch tensor ``x`` in, ``model(x)`` out. With ``timer``, each
    call's wall time is added to it (``sync``: after waiting for the GPU, else a CUDA call would time its launch only).
    """
    if timer is None:

        def mlp(x: Any) -> Any:
            return model(x)

        return mlp

    import torch

    def timed_mlp(x: Any) -> Any:
        began = time.perf_counter_ns()
        y = model(x)
        if sync:
            torch.cuda.synchronize(y.device)
        timer.add(time.perf_counter_ns() - began)
        return y

    return timed_mlp


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--features`` and ``--hidden``."""
    parser.add_argument(
        "--device", default="cpu", help="where every server runs the MLP: cpu, or cuda[:K] for the GPU-sized MLP"
    )
    parser.add_argument("--features", type=int, default=None, help="input and output width (cpu 64, cuda 256)")
    parser.add_argument(
        "--hidden",
        type=lambda s: tuple(int(w) for w in s.split(",")),
        default=None,
        help="hidden widths, comma-separated (cpu 256, cuda 8192,8192)",
    )


def workload_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Workload:
    """The workload the arguments ask for; exits with a message where it asks for CUDA and torch sees none."""
    import torch

    device = args.device
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        parser.error(f"unknown --device {device!r}: use cpu, cuda or cuda:K")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.exit(
                2,
                f"{parser.prog}: --device {device} asked for, but torch {torch.__version__} sees no CUDA device here "
                "(a CPU build of torch, no GPU, or no driver); run without --device, or with --device cpu\n",
            )
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            parser.exit(2, f"{parser.prog}: {device} does not exist: torch sees {torch.cuda.device_count()} GPU(s)\n")
    return Workload.for_device(device, args.features, args.hidden)
