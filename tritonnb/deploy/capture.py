"""Captures a served function with everything it uses from the notebook, for a python-backend model file.

Method: cloudpickle inside ``torch.save``. cloudpickle serialises functions and classes defined in the notebook *by
value* (their code, closures, the helper functions and constants they reference), and ``torch.save`` stores the
tensors of the torch modules they close over in its zip format, so the file loads with ``torch.load(...,
map_location=device)`` on another machine, GPU or not. tritonnb's own small calling layer (tensor conversion and
the output checks) goes in by value too, so the fleet needs no tritonnb.

Modules beside the notebook (``.py`` files in its folder or on a ``sys.path`` entry that is neither the standard
library nor site-packages) go in by value as well: a dry run of the pickler finds every module the function reaches
by reference, the local ones are registered with cloudpickle's ``register_pickle_by_value`` until none is left, and
the served repository never imports them (a module of the notebook named ``model`` would otherwise resolve to the
backend's own ``model.py``). Modules of installed packages stay references: their distributions, pinned to the
installed versions, become the model's requirements. What cannot be carried (compiled code beside the notebook, a
local module imported inside a function's body) is an ExportError naming it.

The trade-off, against writing the function's source into ``model.py``: it captures what the notebook really ran
(closures, objects built in earlier cells, trained weights) with no source to re-execute, but the file is bytecode:
it loads only on the same Python minor version, needs torch, numpy and cloudpickle in the serving image, and is not
readable (the source is kept beside it for that).
"""

from __future__ import annotations

import contextlib
import dataclasses
import dis
import importlib.metadata
import importlib.util
import io
import pathlib
import re
import sys
import sysconfig
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from tritonnb.errors import ExportError
from tritonnb.serving.output_check import checked_outputs
from tritonnb.serving.torch_bridge import call_with_tensors
from tritonnb.signature import TensorSpec

__all__ = [
    "FUNCTION_FILE",
    "IMAGE_PACKAGES",
    "Capture",
    "PortableFunction",
    "capture",
    "captured_function",
    "used_variables",
]

FUNCTION_FILE = "function.pt"
# distributions the Dockerfile installs itself (or that are not needed there): never listed in requirements.txt
IMAGE_PACKAGES = frozenset({"torch", "numpy", "cloudpickle", "nvidia-pytriton", "tritonnb"})


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


@dataclasses.dataclass(frozen=True)
class Capture:
    """``function.pt``'s bytes and what the function needs around it."""

    data: bytes
    carried: tuple[str, ...]  # modules beside the notebook shipped by value inside function.pt
    requirements: tuple[str, ...]  # "distribution==version" of the installed packages it uses (not torch/numpy)
    unresolved: tuple[str, ...]  # installed modules it uses that no distribution claims


def captured_function(function: PortableFunction) -> bytes:
    """The bytes of ``function.pt``; ExportError naming the variable when something it uses cannot be captured."""
    return capture(function).data


def capture(function: PortableFunction) -> Capture:
    """``function.pt`` with the local modules it uses inside, and the installed packages it needs."""
    import torch

    _check_capturable(function.fn)
    found = _modules_used(function)
    buffer = io.BytesIO()
    with _by_value(found.carried):
        try:
            torch.save(function, buffer, pickle_module=_portable_pickle())
        except Exception as error:  # a failure the per-variable check did not single out
            raise ExportError(f"cannot capture {_name(function.fn)}: {type(error).__name__}: {error}") from None
    requirements, unresolved = _requirements(found.installed)
    return Capture(buffer.getvalue(), tuple(sorted(found.carried)), requirements, unresolved)


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
    location = _location(module)
    return location is not None and _is_local_path(location)


def _location(module: types.ModuleType) -> pathlib.Path | None:
    """The file of a module, or the folder of a namespace package; None for built-in and frozen modules."""
    file = getattr(module, "__file__", None)
    if file:
        return pathlib.Path(file)
    paths = list(getattr(module, "__path__", None) or [])
    return pathlib.Path(paths[0]) if paths else None


def _is_local_path(path: pathlib.Path) -> bool:
    """Whether ``path`` lies outside site-packages and the standard library."""
    path = path.resolve()
    installed = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return not any(part in ("site-packages", "dist-packages") for part in path.parts) and not any(
        path.is_relative_to(pathlib.Path(root).resolve()) for root in installed
    )


# --- which modules the function reaches, found by a dry run of the pickler ------------------------------------


@dataclasses.dataclass
class _Found:
    """Modules a pickle of the function reaches: carried by value, or referenced from installed packages."""

    carried: set[str] = dataclasses.field(default_factory=set)
    installed: dict[str, str] = dataclasses.field(default_factory=dict)  # module -> what uses it


_SKIP, _LOCAL, _INSTALLED = "skip", "local", "installed"


def _modules_used(function: PortableFunction) -> _Found:
    """Register local modules by value until a dry run reaches no new one; ExportError for one that can't be."""
    found = _Found()
    while True:
        with _by_value(found.carried):
            references, imports = _dry_run(function)
        local = {name: user for name, user in references.items() if _module_kind(name) == _LOCAL}
        for name, user in local.items():
            _check_carriable(name, user)
        new = {_carried_root(name) for name in local} - found.carried
        if not new:
            break
        found.carried |= new
    _check_imports(imports)
    found.installed = {n: u for n, u in {**references, **imports}.items() if _module_kind(n) == _INSTALLED}
    return found


def _dry_run(function: PortableFunction) -> tuple[dict[str, str], dict[str, str]]:
    """Pickle the function without keeping it (tensor data skipped): the modules it reaches by reference, and the
    modules imported inside the bodies of the functions that go by value, each with the first user seen."""
    import cloudpickle

    references: dict[str, str] = {}
    imports: dict[str, str] = {}

    class Recorder(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            _record(obj, references, imports)
            return super().reducer_override(obj)

        def persistent_id(self, obj: Any) -> Any:
            return "storage" if _is_storage(obj) else None

    try:
        Recorder(_Discard(), protocol=2).dump(function)
    except Exception as error:
        raise ExportError(f"cannot capture {_name(function.fn)}: {type(error).__name__}: {error}") from None
    return references, imports


class _Discard:
    """A file that forgets what is written to it."""

    def write(self, data: bytes) -> int:
        return len(data)


def _is_storage(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and torch.is_storage(obj)


def _record(obj: Any, references: dict[str, str], imports: dict[str, str]) -> None:
    """Note the module ``obj`` is pickled from (when by reference) and the imports in its code (when by value)."""
    import cloudpickle.cloudpickle as cp

    if isinstance(obj, types.ModuleType):
        if cp._should_pickle_by_reference(obj):
            references.setdefault(obj.__name__, f"module {obj.__name__}")
        return
    if isinstance(obj, types.FunctionType) and not cp._should_pickle_by_reference(obj):
        package = obj.__globals__.get("__package__") or ""
        for name in _imported_names(obj.__code__, package):
            imports.setdefault(name, _name(obj))
        return
    owner = obj if isinstance(obj, (type, types.BuiltinFunctionType, types.FunctionType)) else type(obj)
    module = getattr(owner, "__module__", None)
    if isinstance(module, str):
        references.setdefault(module, f"{module}.{getattr(owner, '__qualname__', '?')}")


def _imported_names(code: types.CodeType, package: str) -> Iterator[str]:
    """The absolute names of the modules ``code`` (and the code nested in it) imports."""
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        if instruction.opname == "IMPORT_NAME":
            level = instructions[index - 2].argval if index >= 2 else 0
            yield _absolute(instruction.argval, level if isinstance(level, int) else 0, package)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _imported_names(const, package)


def _absolute(name: str, level: int, package: str) -> str:
    """A relative import's absolute name (``from .x import y`` in package ``p``: ``p.x``)."""
    if level == 0:
        return name
    base = package.rsplit(".", level - 1)[0] if level > 1 else package
    return f"{base}.{name}" if name and base else (base or name)


def _module_kind(name: str) -> str:
    """``local`` (beside the notebook), ``installed`` (a package), or ``skip`` (standard library, the notebook,
    tritonnb, or nothing importable by that name)."""
    top = name.partition(".")[0]
    if not top or top in ("__main__", "__mp_main__", "tritonnb") or top in sys.stdlib_module_names:
        return _SKIP
    module = sys.modules.get(name) or sys.modules.get(top)
    location = _location(module) if module is not None else _spec_location(top)
    if location is None:
        return _SKIP if module is None else _INSTALLED
    return _LOCAL if _is_local_path(location) else _INSTALLED


def _spec_location(top: str) -> pathlib.Path | None:
    """Where an importable but not yet imported top-level module lives; None if it cannot be found."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("built-in", "frozen"):
        return pathlib.Path(spec.origin)
    locations = list(spec.submodule_search_locations or [])
    return pathlib.Path(locations[0]) if locations else None


def _carried_root(name: str) -> str:
    """The module to register by value: its top-level package (which covers the submodules) when that is local
    too, else the module itself (a local part of a namespace package that is installed elsewhere)."""
    top = sys.modules.get(name.partition(".")[0])
    return top.__name__ if top is not None and _is_local(top) else name


_SOURCE_SUFFIXES = (".py", ".pyc")


def _check_carriable(name: str, user: str) -> None:
    """ExportError unless module ``name`` beside the notebook is Python code that can go by value."""
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None) if module is not None else None
    if file and not file.endswith(_SOURCE_SUFFIXES):
        raise ExportError(
            f"cannot carry module {name!r} ({file}), used by {user}: it is compiled code beside the notebook, and "
            "only Python source can go inside the export. Install it as a package (pip install) so the image can "
            "install it too, or keep the function off it"
        )


def _check_imports(imports: dict[str, str]) -> None:
    """ExportError for a module beside the notebook imported inside a function's body: the import would run on
    the server, where that module does not exist (and ``model`` is the backend's own file)."""
    local = {name: user for name, user in imports.items() if _module_kind(name) == _LOCAL}
    if local:
        listed = ", ".join(f"{name!r} (in {user})" for name, user in sorted(local.items()))
        raise ExportError(
            f"cannot carry {listed}: a module beside the notebook imported inside a function's body would be "
            "imported again on the server, where it does not exist. Import it at the top of the cell or module "
            "instead (import x / from x import f), so the export carries it"
        )


@contextlib.contextmanager
def _by_value(carried: Iterable[str] = ()) -> Iterator[None]:
    """Ship tritonnb's calling layer and the local modules ``carried`` by value while pickling."""
    import cloudpickle

    import tritonnb

    modules = [tritonnb, *(sys.modules[name] for name in sorted(carried) if not name.startswith("tritonnb"))]
    registered = []
    try:
        for module in modules:
            if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


# --- the installed packages it needs ----------------------------------------------------------------------------


def _requirements(installed: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``name==version`` of the distributions that provide ``installed`` (less the image's own), and the top-level
    modules that no distribution claims."""
    owners = importlib.metadata.packages_distributions()
    by_top: dict[str, list[str]] = {}
    for name in installed:
        by_top.setdefault(name.partition(".")[0], []).append(name)
    pins: dict[str, str] = {}
    unresolved: list[str] = []
    for top, names in sorted(by_top.items()):
        found = [_distribution_of(name, owners.get(top, [])) for name in names]
        distributions = {_normalized(d.metadata["Name"]): d for d in found if d is not None}
        if not distributions:
            unresolved.append(top)
        for key, distribution in distributions.items():
            if key not in IMAGE_PACKAGES:
                pins[key] = f"{distribution.metadata['Name']}=={distribution.version}"
    return tuple(sorted(pins.values(), key=str.lower)), tuple(unresolved)


def _distribution_of(name: str, candidates: list[str]) -> importlib.metadata.Distribution | None:
    """The distribution that installed module ``name``, among those claiming its top-level name: the only one, or
    (a namespace package such as ``google``) the one whose files hold the module."""
    distributions = []
    for candidate in dict.fromkeys(candidates):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            distributions.append(importlib.metadata.distribution(candidate))
    if len(distributions) <= 1:
        return distributions[0] if distributions else None
    location = _location(sys.modules[name]) if name in sys.modules else None
    for distribution in distributions if location is not None else ():
        files = {pathlib.Path(str(distribution.locate_file(f))).resolve() for f in distribution.files or []}
        if location.resolve() in files:
            return distribution
    return None


def _normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _portable_pickle() -> Any:
    """cloudpickle, with numpy's scalar types pickled through their dtype: numpy 2 names ``np.bool_`` ``numpy.bool``,
    which numpy 1 (the python-backend stub's own, under tritonnb's server) does not have."""
    import types

    import cloudpickle
    import numpy as np

    class Pickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, type) and issubclass(obj, np.generic) and obj.__module__ == "numpy":
                with contextlib.suppress(TypeError):
                    return getattr, (np.dtype(obj), "type")
            return super().reducer_override(obj)

    module = types.ModuleType("cloudpickle")  # torch.save reads the name and subclasses the Pickler
    module.Pickler = Pickler  # type: ignore[attr-defined]
    return module
