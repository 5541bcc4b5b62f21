"""Specs: tensors (``name:dtype[dims]``), the dtype maps between numpy, torch and Triton, and a model's whole spec."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from tritonnb.errors import SignatureMismatch, SpecError, TritonnbError

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_OUTPUT",
    "DTYPES",
    "DTYPE_ALIASES",
    "DTYPE_OF_TRITON",
    "ModelSpec",
    "TensorSpec",
    "arrays_from",
    "as_specs",
    "default_inputs",
    "parameters_of",
    "parse_spec",
    "sample_inputs",
    "version_list",
]

# dtype name -> (numpy dtype, Triton datatype as spoken by the HTTP/gRPC protocol)
DTYPES: dict[str, tuple[type, str]] = {
    "float16": (np.float16, "FP16"),
    "float32": (np.float32, "FP32"),
    "float64": (np.float64, "FP64"),
    "int8": (np.int8, "INT8"),
    "int16": (np.int16, "INT16"),
    "int32": (np.int32, "INT32"),
    "int64": (np.int64, "INT64"),
    "uint8": (np.uint8, "UINT8"),
    "bool": (np.bool_, "BOOL"),
    "bytes": (np.bytes_, "BYTES"),
}
DTYPE_OF_TRITON = {triton: name for name, (_, triton) in DTYPES.items()}  # e.g. "FP32" -> "float32"
DTYPE_ALIASES = {
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
    "fp64": "float64",
    "double": "float64",
    "string": "bytes",
    "str": "bytes",
    "bytes_": "bytes",
}

_SPEC = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*):(?P<dtype>[A-Za-z0-9_]+)(?:\[(?P<dims>[^\]]*)\])?$")


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One model input or output: a name, a dtype name and the per-sample dims (-1 = any size)."""

    name: str
    dtype: str
    dims: tuple[int, ...] = (-1,)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SpecError(f"unsupported dtype {self.dtype!r} for {self.name!r}; supported: {', '.join(DTYPES)}")
        if not self.dims:
            raise SpecError(f"{self.name!r} needs at least one dim, e.g. {self.name}:{self.dtype}[1]")
        if any(d == 0 or d < -1 for d in self.dims):
            raise SpecError(f"dims of {self.name!r} must be positive or -1, got {list(self.dims)}")

    @property
    def numpy_dtype(self) -> type:
        """The numpy scalar type of this tensor."""
        return DTYPES[self.dtype][0]

    @property
    def triton_dtype(self) -> str:
        """The protocol datatype name, e.g. ``FP32``."""
        return DTYPES[self.dtype][1]

    def __str__(self) -> str:
        return f"{self.name}:{self.dtype}[{','.join(map(str, self.dims))}]"


def parse_spec(text: str) -> TensorSpec:
    """Parse ``name:dtype[d1,d2,...]``; dims default to ``[-1]``."""
    match = _SPEC.match(text.strip().replace(" ", ""))
    if not match:
        raise SpecError(f"bad tensor spec {text!r}: expected name:dtype[dims], e.g. x:float32[-1,64]")
    dtype = match["dtype"].lower()
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    dims_text = match["dims"]
    if dims_text is None:
        dims: tuple[int, ...] = (-1,)
    else:
        try:
            dims = tuple(int(d) for d in dims_text.split(",") if d != "")
        except ValueError:
            raise SpecError(f"bad dims in {text!r}: dims are integers or -1, e.g. [-1,64]") from None
    return TensorSpec(match["name"], dtype, dims)


def as_specs(specs: object, what: str) -> tuple[TensorSpec, ...]:
    """Normalise a sequence of TensorSpec or spec strings (or one string) into a tuple of TensorSpec."""
    if specs is None:
        return ()
    if isinstance(specs, (str, TensorSpec)):
        specs = [specs]
    result = tuple(s if isinstance(s, TensorSpec) else parse_spec(str(s)) for s in specs)  # type: ignore[union-attr]
    names = [s.name for s in result]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SpecError(f"{what} names must be unique; repeated: {', '.join(duplicated)}")
    return result


DEFAULT_OUTPUT = TensorSpec("output", "float32", (-1,))  # the output of a model declared without outputs
DEFAULT_MAX_BATCH_SIZE = 32  # of a model that returns once; a stream is not batched


def parameters_of(fn: Callable) -> list[inspect.Parameter]:
    """``fn``'s parameters; SignatureMismatch when Python cannot tell them (some built-ins and C functions)."""
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        raise SignatureMismatch(
            f"cannot read the parameters of {fn!r}: wrap it in a def, or declare the inputs"
        ) from None


def default_inputs(fn: Callable) -> tuple[TensorSpec, ...]:
    """One ``float32[-1]`` input per parameter of ``fn``, named after it (used when no inputs are declared)."""
    params = [
        p.name for p in parameters_of(fn) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return tuple(TensorSpec(name, "float32", (-1,)) for name in params)


def sample_inputs(
    specs: Sequence[TensorSpec], batch_size: int | None, rng: np.random.Generator, any_dim: int = 1
) -> dict[str, np.ndarray]:
    """Random arrays that fit ``specs``: -1 dims become ``any_dim``; a leading batch dim when ``batch_size``."""
    arrays = {}
    for spec in specs:
        shape = [any_dim if d == -1 else d for d in spec.dims]
        if batch_size is not None:
            shape = [batch_size, *shape]
        if spec.dtype == "bytes":
            arrays[spec.name] = np.full(shape, b"x", dtype=object)
        elif spec.dtype == "bool":
            arrays[spec.name] = rng.random(shape) < 0.5
        elif spec.numpy_dtype in (np.float16, np.float32, np.float64):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.numpy_dtype)
        else:
            info = np.iinfo(spec.numpy_dtype)
            arrays[spec.name] = rng.integers(max(info.min, -100), min(info.max, 100), shape, dtype=spec.numpy_dtype)
    return arrays


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Everything Triton's model config depends on: a change here needs a reload, anything else a swap."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_delay_us: int = 0
    instances: int = 1
    stream: bool = False  # a decoupled model: any number of responses per request, one per yield

    def __post_init__(self) -> None:
        if not self.inputs:
            raise SpecError(f"model {self.name!r} needs at least one input")
        if not self.outputs:
            raise SpecError(f"model {self.name!r} needs at least one output")
        clash = {s.name for s in self.inputs} & {s.name for s in self.outputs}
        if clash:
            raise SpecError(f"model {self.name!r}: names used for both an input and an output: {sorted(clash)}")
        if self.max_batch_size < 0:
            raise SpecError(f"max batch size must be 0 (no batching) or more, got {self.max_batch_size}")
        if self.batch_delay_us < 0:
            raise SpecError(f"batch delay must be 0 or more microseconds, got {self.batch_delay_us}")
        if self.instances < 1:
            raise SpecError(f"instances must be 1 or more, got {self.instances}")
        if self.stream and self.max_batch_size > 0:
            raise SpecError(
                f"model {self.name!r} streams, and a stream is not batched: leave max batch size out (or 0), "
                f"got {self.max_batch_size}"
            )

    @property
    def shaped_inputs(self) -> list[str]:
        """Inputs with more than one dim per sample: Triton's generate extension (``/generate``, ``/generate_stream``)
        takes each input as a flat JSON list or one value and cannot shape these."""
        return [s.name for s in self.inputs if len(s.dims) != 1]

    @property
    def batched(self) -> bool:
        """Whether Triton batches requests (and the first dim of every tensor is the batch)."""
        return self.max_batch_size > 0

    def describe(self) -> str:
        """Inputs, outputs and batching in one line, e.g. ``x:float32[4] -> y:float32[4] (max 32, ...)``."""
        inputs = ", ".join(map(str, self.inputs))
        outputs = ", ".join(map(str, self.outputs))
        return f"{inputs} -> {outputs} ({self.batching_text()})"

    def batching_text(self) -> str:
        """How requests are batched and how many instances run, e.g. ``max 32, delay 100 µs, 2 inst.``."""
        if self.stream:
            batching = "stream"
        elif self.batched:
            batching = f"max {self.max_batch_size}, delay {self.batch_delay_us} µs"
        else:
            batching = "off"
        return f"{batching}, {self.instances} inst."


def arrays_from(spec: ModelSpec, data: Any, error: type[TritonnbError] = SpecError) -> dict[str, np.ndarray]:
    """A request's arrays from a user's data: a dict of arrays by input name, one array for a one-input model, or an
    .npz path; torch tensors too. A sample without a batch dim gets one when the model batches, and a batch of one
    loses it when the model does not, so the same data fits every config. ``error`` is raised naming what is wrong."""
    if isinstance(data, (str, pathlib.Path)):
        try:
            with np.load(data, allow_pickle=True) as npz:  # bytes inputs are object arrays; the file is the user's
                data = dict(npz)
        except (OSError, ValueError) as failure:
            raise error(f"cannot read input data from {str(data)!r}: {failure}") from None
    if not isinstance(data, dict):
        if len(spec.inputs) != 1:
            raise error(f"model {spec.name!r} has {len(spec.inputs)} inputs: give a dict of arrays by name")
        data = {spec.inputs[0].name: data}
    names = [s.name for s in spec.inputs]
    if sorted(data) != sorted(names):
        raise error(f"input data names {sorted(data)} do not match the model's inputs {names}")
    arrays = {}
    for input_spec in spec.inputs:
        value = data[input_spec.name]
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        try:
            array = np.asarray(value, dtype=object if input_spec.dtype == "bytes" else input_spec.numpy_dtype)
        except (TypeError, ValueError) as failure:
            raise error(f"input data {input_spec.name!r} is not {input_spec.dtype}: {failure}") from None
        per_sample = len(input_spec.dims)
        if spec.batched and array.ndim == per_sample:  # one sample: the request carries a batch of one
            array = array[np.newaxis]
        elif not spec.batched and array.ndim == per_sample + 1 and array.shape[0] == 1:  # a batch of one, unbatched
            array = array[0]
        arrays[input_spec.name] = array
    return arrays


def version_list(versions: Iterable[str | int]) -> str:
    """Model versions as Triton's APIs report them, in numeric order and once each: ``"1,2,10"``."""
    return ",".join(sorted({str(v) for v in versions}, key=lambda v: (len(v), v)))
