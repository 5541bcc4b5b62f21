"""The ``torchscript`` format: the function traced into a TorchScript module for Triton's PyTorch backend.

Triton's PyTorch backend feeds inputs by the names of ``forward``'s arguments (or, when the names are not Python
identifiers, in the order of the config) and takes outputs in the order of the config, so the traced module takes
the declared inputs as its arguments and returns the declared outputs as a tuple, cast to their declared dtypes.
"""

from __future__ import annotations

import io
import keyword
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tritonnb.deploy.capture import used_variables
from tritonnb.errors import ExportError
from tritonnb.serving.output_check import outputs_in_order
from tritonnb.serving.torch_bridge import to_torch
from tritonnb.signature import ModelSpec, sample_inputs

__all__ = ["MODEL_FILE", "traced_model"]

MODEL_FILE = "model.pt"


def traced_model(fn: Callable, by_keyword: bool, spec: ModelSpec, device: str) -> bytes:
    """The bytes of ``model.pt``; ExportError when the function cannot be traced."""
    if any(s.dtype == "bytes" for s in spec.inputs + spec.outputs):
        raise ExportError(
            f"model {spec.name!r} has bytes inputs or outputs, which TorchScript cannot take; use --format python"
        )
    arrays = sample_inputs(spec.inputs, 2 if spec.batched else None, np.random.default_rng(0))
    for s in spec.inputs:  # integers as zeros: valid indices for an embedding, where random ones may not be
        if np.issubdtype(arrays[s.name].dtype, np.integer):
            arrays[s.name] = np.zeros_like(arrays[s.name])
    example = tuple(to_torch(arrays[s.name], s, device) for s in spec.inputs)
    module = _named_forward(spec)(fn, by_keyword, spec)
    try:
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=True)
    except Exception as error:
        raise ExportError(
            f"model {spec.name!r} cannot be traced ({type(error).__name__}: {error}); use --format python"
        ) from None
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _torch_dtype(dtype: str) -> torch.dtype:
    return getattr(torch, dtype)


class _Outputs(torch.nn.Module):
    """Calls the function as the server does and returns its outputs as a tuple, in declared order and dtypes."""

    def __init__(self, fn: Callable, by_keyword: bool, spec: ModelSpec) -> None:
        super().__init__()
        self.fn, self.by_keyword, self.spec = fn, by_keyword, spec
        # the torch modules the function uses become submodules, so their weights are traced as parameters
        modules = {id(v): v for _, v in used_variables(fn) if isinstance(v, torch.nn.Module)}
        self.used = torch.nn.ModuleList(modules.values())

    def run(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.by_keyword:
            result = self.fn(**{s.name: t for s, t in zip(self.spec.inputs, tensors)})
        else:
            result = self.fn(*tensors)
        values = outputs_in_order(result, self.spec.outputs)
        return tuple(v.to(_torch_dtype(s.dtype)) for v, s in zip(values, self.spec.outputs))


def _named_forward(spec: ModelSpec) -> type[_Outputs]:
    """A subclass whose ``forward`` takes the inputs by their names, as the PyTorch backend matches them."""
    names = [s.name for s in spec.inputs]
    if not all(n.isidentifier() and not keyword.iskeyword(n) for n in names):
        names = [f"input__{i}" for i in range(len(names))]  # matched in config order instead
    params = ", ".join(names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {params}):\n    return self.run({params})\n", namespace)
    return type("TracedFunction", (_Outputs,), {"forward": namespace["forward"]})
