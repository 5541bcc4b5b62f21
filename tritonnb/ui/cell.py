"""Running a ``%%triton_model`` cell and picking the function it serves."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

from tritonnb.errors import CellError

__all__ = ["run_cell_and_pick"]


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
