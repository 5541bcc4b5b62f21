"""Moves tensors between Triton's numpy arrays and torch on the model's device, and back to host."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tritonnb.errors import SpecError
from tritonnb.signature import DTYPES, TensorSpec

__all__ = [
    "call_with_tensors",
    "host_array",
    "no_autograd",
    "resolve_device",
    "to_torch",
    "torch_threads",
    "use_torch_threads",
]


def resolve_device(device: str | None) -> str:
    """Return the torch device to serve on: ``cuda`` when available unless told otherwise."""
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise SpecError(f"device {device!r} was asked for but torch sees no CUDA device here; use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SpecError(f"device {device!r} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise SpecError(f"unknown device {device!r}: use cpu, cuda or cuda:K")


def torch_threads() -> int:
    """The calling thread's torch intra-op thread count: call it where the user's setting holds (the kernel)."""
    import torch

    return torch.get_num_threads()


_this_thread = threading.local()


def use_torch_threads(count: int) -> None:
    """Give the calling thread ``count`` torch intra-op threads (calls into torch only when that count changes).

    Under OpenMP (torch's CPU builds) the count is kept per OS thread: ``torch.set_num_threads`` in the notebook does
    not reach the handler threads PyTriton starts, which would run with OpenMP's default (every core), and the helper
    threads of every batched matmul would then spin on the cores that tritonserver and the clients need.
    """
    if getattr(_this_thread, "torch_threads", None) == count:
        return
    if _openmp():
        import torch

        torch.set_num_threads(count)
    _this_thread.torch_threads = count


@functools.cache
def _openmp() -> bool:
    import torch

    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def to_torch(array: np.ndarray, spec: TensorSpec, device: str) -> Any:
    """Turn one input array into a torch tensor on ``device`` (bytes stay a numpy array)."""
    import torch

    if spec.dtype == "bytes":
        return array
    if not array.flags.writeable:  # shared-memory views are read-only; torch wants to own its data
        array = array.copy()
    tensor = torch.from_numpy(array)
    return tensor if device == "cpu" else tensor.to(device, non_blocking=False)


def call_with_tensors(
    fn: Callable, by_keyword: bool, inputs: Sequence[TensorSpec], arrays: dict[str, np.ndarray], device: str
) -> Any:
    """Call ``fn`` on ``arrays`` as torch tensors on ``device``, by input name or in order, without autograd."""
    tensors = {s.name: to_torch(arrays[s.name], s, device) for s in inputs}
    with no_autograd():
        return fn(**tensors) if by_keyword else fn(*tensors.values())


def no_autograd() -> Any:
    """``torch.no_grad()``, for a call or a step of a served function (it holds per thread and per step).

    Not ``torch.inference_mode()``: a module the function moves (``net.to("cuda")``) or creates (lazily, on its first
    call) would get inference tensors as parameters, and the notebook could no longer train it. ``no_grad`` costs about
    1 µs more per call (``benchmarks/trampoline_overhead.py``), against a request path of about 2 ms.
    """
    import torch

    return torch.no_grad()


def host_array(value: Any, dtype: str) -> np.ndarray:
    """A torch tensor (any device), numpy array, list or scalar as a host array of ``dtype`` (a spec dtype name).

    TypeError when that would change values beyond float rounding: float to int, or integers that do not fit.
    """
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach()
        if str(value.dtype) == "torch.bfloat16":  # numpy has no bfloat16: widen in torch, cast below
            value = value.float()
        value = value.cpu().numpy()
    if dtype == "bytes":
        items = np.asarray(value, dtype=object)
        return np.vectorize(lambda v: v.encode() if isinstance(v, str) else bytes(v), otypes=[object])(items)
    target = np.dtype(DTYPES[dtype][0])
    array = np.asarray(value)
    source = array.dtype
    if source == target:
        return array
    if source.kind in "iu" and target.kind in "iu":  # narrowing or a change of sign: only values that fit
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise TypeError(f"{source} values from {array.min()} to {array.max()} do not fit {dtype}")
    elif not np.can_cast(source, target, casting="same_kind"):
        raise TypeError(f"{source} cannot be safely cast to {dtype}")
    return array.astype(target)
