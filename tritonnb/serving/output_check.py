"""The output contract: a function's return value mapped onto the declared outputs, cast and shape-checked.

Triton's python backend does not check a model's outputs against its config (a declared ``[4]`` returned as
``[1, 2]`` reaches the client as 200), so every result is checked here before it leaves the kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tritonnb.errors import OutputError
from tritonnb.serving.torch_bridge import host_array
from tritonnb.signature import TensorSpec

__all__ = ["checked_outputs", "outputs_in_order"]


def checked_outputs(result: Any, specs: Sequence[TensorSpec], batch: int | None) -> dict[str, np.ndarray]:
    """Map a return value (tensor, tuple/list, or dict) onto ``specs`` as host arrays of the declared dtypes.

    ``batch`` is the request's batch size (None for a model without batching): each output must then have it as its
    first dim, followed by the declared per-sample dims (-1 matches any size). OutputError names the output, what
    was declared and what came back.
    """
    values = outputs_in_order(result, specs)
    outputs = {}
    for spec, value in zip(specs, values):
        if value is None:
            raise OutputError(f"output {spec.name!r} is None; declared {_declared(spec)}")
        try:
            array = host_array(value, spec.dtype)
        except TypeError as error:
            raise OutputError(f"output {spec.name!r}: {error} (declared {_declared(spec)})") from None
        _check_shape(spec, array.shape, batch)
        outputs[spec.name] = array
    return outputs


def outputs_in_order(result: Any, specs: Sequence[TensorSpec]) -> list[Any]:
    """The values of a tensor, tuple/list or dict return value, one per declared output, in declared order."""
    names = [s.name for s in specs]
    if isinstance(result, Mapping):
        missing = [n for n in names if n not in result]
        extra = [str(k) for k in result if k not in names]
        if missing or extra:
            raise OutputError(
                f"returned dict keys {sorted(map(str, result))} do not match declared outputs {names}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unexpected {extra}" if extra else "")
            )
        return [result[n] for n in names]
    if isinstance(result, tuple) or (isinstance(result, list) and len(specs) > 1):
        if len(result) != len(specs):
            raise OutputError(f"returned {len(result)} values but {len(specs)} outputs are declared: {names}")
        return list(result)
    if len(specs) != 1:
        raise OutputError(f"returned one value but {len(specs)} outputs are declared: {names}; return a tuple or dict")
    return [result]


def _check_shape(spec: TensorSpec, shape: tuple[int, ...], batch: int | None) -> None:
    expected = spec.dims if batch is None else (batch, *spec.dims)
    if len(shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected, shape)):
        return
    shown = "[" + ", ".join("any" if e == -1 else str(e) for e in expected) + "]"
    where = "" if batch is None else f" for a batch of {batch}"
    raise OutputError(
        f"output {spec.name!r} is declared {_declared(spec)}: shape {shown}{where}; the function returned shape "
        f"{list(shape)}"
    )


def _declared(spec: TensorSpec) -> str:
    return f"{spec.dtype}[{','.join(map(str, spec.dims))}]"
