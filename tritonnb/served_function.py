"""The callable Triton's handler threads run: numpy in, the user's torch function, numpy out."""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tritonnb.errors import ModelError, SignatureMismatch
from tritonnb.signature import TensorSpec, parameters_of
from tritonnb.torch_bridge import outputs_to_numpy, to_torch, torch_threads, use_torch_threads

ErrorReporter = Callable[[str, str], None]


def _calls_by_keyword(fn: Callable, inputs: Sequence[TensorSpec]) -> bool:
    """True to call ``fn(**inputs)``, False to call it with inputs in declared order; raise if neither fits."""
    names = [s.name for s in inputs]
    params = parameters_of(fn)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    named = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {n for n, p in named.items() if p.default is p.empty}
    positional_only = any(p.kind == p.POSITIONAL_ONLY and p.default is p.empty for p in params)
    if not positional_only and required <= set(names) and (var_kw or set(names) <= set(named)):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    least = sum(p.default is p.empty for p in positional)
    if not any(p.kind == p.KEYWORD_ONLY and p.default is p.empty for p in params) and (
        least <= len(names) and (var_pos or len(names) <= len(positional))
    ):
        return False
    shown = ", ".join(str(p) for p in params)
    raise SignatureMismatch(
        f"{getattr(fn, '__name__', 'function')}({shown}) cannot take the inputs {names}: "
        "name its parameters after the inputs, or take them positionally in the declared order"
    )


class ServedFunction:
    """A user function bound to its specs and device; what a hot swap replaces."""

    def __init__(
        self,
        fn: Callable,
        model_name: str,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        device: str,
        report_error: ErrorReporter,
    ) -> None:
        self.fn = fn
        self.model_name = model_name
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.device = device
        self._by_keyword = _calls_by_keyword(fn, inputs)
        self._report_error = report_error
        self.torch_threads = torch_threads()  # the binding (kernel) thread's setting, applied in handler threads

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the function on one (possibly batched) set of input arrays."""
        import torch

        try:
            use_torch_threads(self.torch_threads)
            tensors = {s.name: to_torch(arrays[s.name], s, self.device) for s in self.inputs}
            with torch.inference_mode():
                result = self.fn(**tensors) if self._by_keyword else self.fn(*tensors.values())
            return outputs_to_numpy(result, self.outputs)
        except Exception as error:
            self._report_error(self.model_name, traceback.format_exc())
            raise ModelError(f"model {self.model_name!r} raised {type(error).__name__}: {error}") from None


class Trampoline:
    """The stable callable bound into Triton once per loaded generation; ``target`` is swapped in place."""

    def __init__(self, target: ServedFunction, batched: bool) -> None:
        self.target = target
        self.batched = batched
        self._in_flight = 0
        self._last_request = time.monotonic()
        self._count_lock = threading.Lock()

    def idle_for(self) -> float:
        """Seconds since the last request finished; 0 while one is in flight."""
        with self._count_lock:
            return 0.0 if self._in_flight else time.monotonic() - self._last_request

    def handlers(self, instances: int) -> list[Callable[[list], list]]:
        """One distinct callable per Triton model instance, all calling this trampoline."""
        return [lambda requests: self.handle(requests) for _ in range(instances)]

    def handle(self, requests: list) -> list[dict[str, np.ndarray]]:
        """PyTriton's request-list interface: merge a dynamic batch, call the target once, split the result."""
        with self._count_lock:
            self._in_flight += 1
        try:
            return self._handle(requests)
        finally:
            with self._count_lock:
                self._in_flight -= 1
                self._last_request = time.monotonic()

    def _handle(self, requests: list) -> list[dict[str, np.ndarray]]:
        target = self.target  # read once: a swap mid-batch must not mix two functions
        if not self.batched or len(requests) == 1:
            return [self._checked(target, r.data, _batch_size(r.data)) for r in requests]
        sizes = [_batch_size(r.data) for r in requests]
        try:
            merged = {name: np.concatenate([r.data[name] for r in requests]) for name in requests[0].data}
        except ValueError:  # ragged per-sample shapes (-1 dims) cannot be merged: serve them one by one
            return [self._checked(target, r.data, n) for r, n in zip(requests, sizes)]
        result = self._checked(target, merged, sum(sizes))
        responses, start = [], 0
        for size in sizes:  # views, like np.split's, but without its per-part overhead (~1 µs each)
            responses.append({name: array[start : start + size] for name, array in result.items()})
            start += size
        return responses

    def _checked(self, target: ServedFunction, arrays: dict[str, np.ndarray], batch: int | None) -> dict:
        result = target(arrays)
        if self.batched and batch is not None:
            wrong = {n: a.shape for n, a in result.items() if a.ndim == 0 or a.shape[0] != batch}
            if wrong:
                message = f"model {target.model_name!r}: outputs must keep the batch dim {batch}, got shapes {wrong}"
                target._report_error(target.model_name, message)
                raise ModelError(message)
        return result


def _batch_size(arrays: dict[str, Any]) -> int | None:
    first = next(iter(arrays.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 else None
