"""The shipped notebooks run top to bottom in a real kernel and leave no server behind."""

from __future__ import annotations

import pathlib

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _tritonservers() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "tritonserver"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_clean(path):
    before = _tritonservers()
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [o for c in notebook.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    texts = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "READY" in texts and "stopped in" in texts
    assert _tritonservers() <= before
