"""Running a ``%%triton_model`` cell and picking the function it serves."""

from __future__ import annotations

import ast
import collections
import inspect
import linecache
import weakref
from collections.abc import Callable, MutableMapping
from typing import Any

from tritonnb.errors import CellError

__all__ = ["forget_source_with", "run_cell_and_pick"]


def run_cell_and_pick(source: str, name: str, namespace: dict[str, Any], filename: str) -> Callable:
    """Execute ``source`` in ``namespace`` and return the function named ``name``, else the only one defined."""
    tree = ast.parse(source, filename=filename)
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    assigned = {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    exec(compile(tree, filename, "exec"), namespace)
    if name in defined or (name in assigned and callable(namespace.get(name))):
        chosen = name
    elif len(defined) == 1:
        chosen = defined[0]
    elif not defined:
        raise CellError(f"the cell defines no function to serve as {name!r}: define one with def")
    else:
        raise CellError(
            f"the cell defines several functions ({', '.join(defined)}) and none is named {name!r}; "
            f"name the one to serve {name!r}"
        )
    fn = namespace[chosen]
    if inspect.iscoroutinefunction(fn):
        raise CellError(f"{chosen} is async and returns once; serve a plain def function (or an async generator)")
    if not callable(fn):
        raise CellError(f"{chosen} is not callable")
    return fn


_LIVE_BY_SOURCE: collections.Counter[str] = collections.Counter()  # a cell source's name -> functions still alive


def forget_source_with(fn: Callable, filename: str, filename_map: MutableMapping[str, int]) -> None:
    """Once ``fn`` is gone (swapped out, and no longer called or kept), drop the cell source registered for its
    tracebacks under ``filename`` (linecache's entry and IPython's ``filename_map`` entry) unless another live
    function came from the same name. A kernel that runs the cell all day then keeps the source of the functions
    it still has, not one per run. A callable without weak references keeps its source."""
    try:
        weakref.finalize(fn, _forget_source, filename, filename_map)
    except TypeError:
        return
    _LIVE_BY_SOURCE[filename] += 1


def _forget_source(filename: str, filename_map: MutableMapping[str, int]) -> None:
    _LIVE_BY_SOURCE[filename] -= 1
    if _LIVE_BY_SOURCE[filename] <= 0:
        del _LIVE_BY_SOURCE[filename]
        linecache.cache.pop(filename, None)
        filename_map.pop(filename, None)
