"""Captures a served function with everything it uses from the notebook, for a python-backend model file.

Method: cloudpickle inside ``torch.save``. cloudpickle serialises functions and classes defined in the notebook *by
value* (their code, closures, the helper functions and constants they reference), and ``torch.save`` stores the
tensors of the torch modules they close over in its zip format, so the file loads with ``torch.load(...,
map_location=device)`` on another machine, GPU or not. tritonnb's own small calling layer (tensor conversion and
the output checks) goes in by value too, so the fleet needs no tritonnb.

The trade-off, against writing the function's source into ``model.py``: it captures what the notebook really ran
(closures, objects built in earlier cells, trained weights) with no source to re-execute, but the file is bytecode:
it loads only on the same Python minor version, needs torch, numpy and cloudpickle in the serving image, and is not
readable (the source is kept beside it for that). Modules the function imports from installed packages are
referenced by name, so the image needs them installed too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import dis
import io
import pathlib
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from tritonnb.errors import ExportError
from tritonnb.serving.output_check import checked_outputs
from tritonnb.serving.torch_bridge import call_with_tensors
from tritonnb.signature import TensorSpec

__all__ = ["FUNCTION_FILE", "PortableFunction", "captured_function", "used_variables"]

FUNCTION_FILE = "function.pt"


@dataclasses.dataclass
class PortableFunction:
    """The user's function with its input and output specs: what the exported ``model.py`` calls per batch."""

    fn: Callable
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    by_keyword: bool

    def __call__(self, arrays: dict[str, np.ndarray], batch: int | None, device: str) -> dict[str, np.ndarray]:
        """Run on host arrays (``batch`` samples, None without batching); checked host arrays of the outputs."""
        result = call_with_tensors(self.fn, self.by_keyword, self.inputs, arrays, device)
        return checked_outputs(result, self.outputs, batch)


def captured_function(function: PortableFunction) -> bytes:
    """The bytes of ``function.pt``; ExportError naming the variable when something it uses cannot be captured."""
    import cloudpickle
    import torch

    _check_capturable(function.fn)
    buffer = io.BytesIO()
    with _by_value(function.fn):
        try:
            torch.save(function, buffer, pickle_module=cloudpickle)
        except Exception as error:  # a failure the per-variable check did not single out
            raise ExportError(f"cannot capture {_name(function.fn)}: {type(error).__name__}: {error}") from None
    return buffer.getvalue()


def _check_capturable(fn: Callable) -> None:
    """Try every variable the function (and the notebook functions it calls) uses; name the first that fails."""
    import cloudpickle

    for path, value in used_variables(fn, (_name(fn),), set()):
        try:
            cloudpickle.dumps(value)
        except Exception as error:
            kind = type(value).__qualname__
            raise ExportError(
                f"cannot capture {path[-1]!r} ({kind}), used by {' -> '.join(path[:-1])}: {error}. "
                "Open files, sockets, locks and threads cannot be shipped to a server; create it inside the "
                "function, or pass what it holds (a path, a value) instead"
            ) from None


def used_variables(
    fn: Callable, path: tuple[str, ...] = (), seen: set[int] | None = None
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of each closure variable and global ``fn`` uses, recursing into notebook functions."""
    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    seen = set() if seen is None else seen
    if code is None or id(fn) in seen:
        return
    seen.add(id(fn))
    cells = zip(code.co_freevars, fn.__closure__ or ())
    used = [(name, _cell_value(cell)) for name, cell in cells]
    fn_globals = getattr(fn, "__globals__", {})
    used += [(name, fn_globals[name]) for name in sorted(_global_names(code)) if name in fn_globals]
    for name, value in used:
        if value is _EMPTY or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, types.FunctionType) and _is_by_value(value):
            yield from used_variables(value, (*path, name), seen)
        else:
            yield (*path, name), value


_EMPTY = object()


def _cell_value(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # a closure variable not assigned yet
        return _EMPTY


_GLOBAL_OPS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL"}


def _global_names(code: types.CodeType) -> set[str]:
    """The global names ``code`` (and the code nested in it) reads or writes; not attribute names."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in _GLOBAL_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _is_by_value(fn: Callable) -> bool:
    """Whether cloudpickle ships ``fn``'s code (defined in the notebook or a local module), not a reference."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    return module is None or module.__name__ == "__main__" or _is_local(module)


def _is_local(module: types.ModuleType) -> bool:
    """A module of the user's own (a file beside the notebook), not an installed package or the standard library."""
    file = getattr(module, "__file__", None)
    if file is None:
        return False
    path = pathlib.Path(file).resolve()
    installed = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(part in ("site-packages", "dist-packages") for part in path.parts) and not any(
        path.is_relative_to(pathlib.Path(root).resolve()) for root in installed
    )


@contextlib.contextmanager
def _by_value(fn: Callable) -> Iterator[None]:
    """Ship tritonnb's calling layer and the function's own local module by value while saving."""
    import cloudpickle

    import tritonnb

    modules = [tritonnb]
    own = sys.modules.get(getattr(fn, "__module__", "") or "")
    if own is not None and own.__name__ != "__main__" and _is_local(own) and not own.__name__.startswith("tritonnb"):
        modules.append(own)
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
