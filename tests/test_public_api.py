"""The package's declared surface: what the README and the notebooks call resolves, every module declares
``__all__``, every error class lives in ``errors`` and derives from ``TritonnbError``, and imports run one way."""

from __future__ import annotations

import ast
import importlib
import json
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import tritonnb
from tritonnb.states import ModelState, ServerState

ROOT = pathlib.Path(__file__).parent.parent
PACKAGE = ROOT / "tritonnb"
# Sent to Triton, not imported in the kernel: they run where only Triton's python backend is.
NOT_IMPORTABLE = ("tritonnb.deploy.templates", "tritonnb.triton.stub")
# Each layer may import itself and the layers after it in this list, never one before it.
LAYERS = ("ui", "deploy", "loadtest", "serving", "triton", "observe")
BOTTOM = ("errors", "states", "signature", "http_get", "state")  # shared by every layer
DOTTED = re.compile(r"\btritonnb(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from (tritonnb(?:\.\w+)*) import ([\w, ]+)", re.M)


def _modules() -> list[str]:
    names = ["tritonnb"]
    for info in pkgutil.walk_packages(tritonnb.__path__, "tritonnb."):
        if not info.name.startswith(NOT_IMPORTABLE):
            names.append(info.name)
    return names


def _documented_code() -> list[tuple[str, str]]:
    """(where, code) of every Python block of the README and every code cell of the notebooks."""
    blocks = [("README.md", b) for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        blocks += [(notebook.name, "".join(c["source"])) for c in cells if c["cell_type"] == "code"]
    return blocks


def test_every_documented_call_resolves_after_import_tritonnb_alone():
    dotted, imports = set(), set()
    for _, code in _documented_code():
        dotted |= set(DOTTED.findall(code))
        for module, names in FROM_IMPORT.findall(code):
            imports |= {(module, name.strip()) for name in names.split(",") if name.strip()}
    assert {"tritonnb.perf.plot", "tritonnb.bind"} <= dotted, "the README and notebooks call these"
    # a fresh interpreter, so that nothing imported by this test session makes a name resolve
    script = f"""
import importlib, operator, tritonnb
missing = []
for chain in {sorted(dotted)!r}:
    try:
        operator.attrgetter(chain.removeprefix("tritonnb."))(tritonnb)
    except AttributeError as error:
        missing.append(f"{{chain}}: {{error}}")
for module, name in {sorted(imports)!r}:
    try:
        getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        missing.append(f"from {{module}} import {{name}}: {{error}}")
print("\\n".join(missing))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"documented names that do not resolve:\n{result.stdout}"


def test_documented_modules_are_reachable_but_not_imported_by_import_tritonnb():
    script = (
        "import sys, tritonnb\n"
        "assert 'tritonnb.loadtest.perf' not in sys.modules, 'import tritonnb stays cheap'\n"
        "print(tritonnb.perf.run_perf.__module__, tritonnb.tune.tune.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tritonnb.loadtest.perf", "tritonnb.loadtest.tune"]


@pytest.mark.parametrize("name", _modules())
def test_every_module_declares_what_it_offers(name):
    module = importlib.import_module(name)
    declared = getattr(module, "__all__", None)
    assert declared is not None, f"{name} has no __all__"
    missing = [n for n in declared if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_every_error_class_lives_in_errors_and_is_a_tritonnb_error():
    from tritonnb import errors

    strays = []
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            is_error = isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == name
            if is_error and (name != "tritonnb.errors" or not issubclass(value, errors.TritonnbError)):
                strays.append(f"{name}.{value.__qualname__}")
    assert not strays, f"error classes outside tritonnb.errors or not TritonnbError: {strays}"
    defined = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.TritonnbError)}
    assert defined <= set(tritonnb.__all__), f"errors not exported from tritonnb: {defined - set(tritonnb.__all__)}"


def _run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of a module but those under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _imported_layers(path: pathlib.Path) -> set[str]:
    """The ``tritonnb.<layer>`` packages a module imports at run time (at any depth of its code)."""
    found = set()
    for node in _run_time_nodes(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for imported in names:
            parts = imported.split(".")
            if parts[0] == "tritonnb" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_run_down_the_layers_only(layer):
    above = set(LAYERS[: LAYERS.index(layer)])
    upward = {
        f"{path.relative_to(ROOT)} imports tritonnb.{target}"
        for path in sorted((PACKAGE / layer).rglob("*.py"))
        for target in _imported_layers(path) & above
    }
    assert not upward, "\n".join(sorted(upward))


def test_the_bottom_imports_no_layer():
    for name in BOTTOM:
        assert not _imported_layers(PACKAGE / f"{name}.py"), f"tritonnb.{name} is shared by every layer"


def test_states_compare_print_hash_and_serialise_as_their_names():
    assert ServerState.NOT_READY == "NOT READY" and f"{ServerState.NOT_READY}" == "NOT READY"
    assert {"NOT READY": 1}[ServerState.NOT_READY] == 1 and {ServerState.DOWN: 2}["DOWN"] == 2
    assert json.dumps({"state": ModelState.LOADING}) == '{"state": "LOADING"}'
    assert ModelState.from_triton("UNLOADING") is ModelState.UNLOADING
    assert ModelState.from_triton(None) is ModelState.from_triton("SOMETHING NEW") is ModelState.UNAVAILABLE
