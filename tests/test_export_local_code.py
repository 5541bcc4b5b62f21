"""Exports carry the modules beside the notebook by value and pin the installed packages they use: a function that
calls ``from model import forward`` (a user's ``model.py``, the name of the python backend's own file) is served
correctly by a fresh tritonserver that cannot import the notebook's folder, nor tritonnb."""

from __future__ import annotations

import importlib
import json
import pathlib
import shutil
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import yaml
from helpers import fp32, infer_json, serve_export

import tritonnb
from tritonnb.errors import ExportError

LOCAL_MODULES = {
    # the module the function imports from: named like the backend's own model.py, to catch a clash
    "model.py": "from layers import scale\n\nOFFSET = 0.5\n\n\ndef forward(x):\n    return scale(x) + OFFSET\n",
    # a second local module, reached only through the first
    "layers.py": "FACTOR = 3.0\n\n\ndef scale(x):\n    return x * FACTOR\n",
}


@pytest.fixture
def notebook_folder(tmp_path, monkeypatch) -> Iterator[pathlib.Path]:
    """A notebook's folder with ``model.py`` and ``layers.py``, first on sys.path and the working directory, as in
    a kernel started there; afterwards its modules leave sys.modules and its path leaves sys.path."""
    folder = tmp_path / "notebook"
    folder.mkdir()
    for name, text in LOCAL_MODULES.items():
        (folder / name).write_text(text)
    monkeypatch.chdir(folder)
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    yield folder
    for name in ("model", "layers", "_speedups"):
        sys.modules.pop(name, None)


def test_a_function_using_a_local_module_named_model_serves_from_the_export(triton, notebook_folder, tmp_path):
    """``from model import forward`` (model.py beside the notebook, which imports layers.py) and an installed
    package (PyYAML): the local modules go inside function.pt, PyYAML into requirements.txt at its installed
    version, and a fresh tritonserver started elsewhere serves the notebook's answers."""
    from model import forward  # the notebook's own model.py
    from yaml import safe_load  # an installed package, used by reference

    def served(x):
        return forward(x) * safe_load("2")

    tritonnb.bind(served, "mlp", inputs=["x:float32[4]"], outputs=["y:float32[4]"], max_batch_size=8)
    try:
        result = tritonnb.export("mlp", tmp_path / "repo")
    finally:
        tritonnb.unbind("mlp")
    repo = tmp_path / "repo"
    pin = f"PyYAML=={yaml.__version__}"
    assert any("carried inside function.pt: layers, model" in note for note in result.notes), result.notes
    assert any(pin in note for note in result.notes), result.notes
    metadata = json.loads((repo / "mlp" / "1" / "export.json").read_text())
    assert (metadata["carried_modules"], metadata["requirements"]) == (["layers", "model"], [pin])
    requirements = [line for line in (repo / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert requirements == [pin]  # torch, numpy and cloudpickle stay in the Dockerfile's own line
    dockerfile = (repo / "Dockerfile").read_text()
    assert "COPY requirements.txt /tmp/tritonnb-requirements.txt" in dockerfile
    assert "-r /tmp/tritonnb-requirements.txt" in dockerfile

    inputs = np.arange(8, dtype=np.float32).reshape(2, 4)
    expected = (inputs * 3.0 + 0.5) * 2
    elsewhere = tmp_path / "elsewhere"  # no model.py, no layers.py: the served process cannot import them
    elsewhere.mkdir()
    with serve_export(repo, elsewhere, tmp_path / "tritonserver.log") as url:
        status, body = infer_json(url, "mlp", [fp32("x", [2, 4], inputs.ravel().tolist())])
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["outputs"][0]["data"]).reshape(2, 4), expected, rtol=1e-6)
    log = (tmp_path / "tritonserver.log").read_text()
    assert "must not need tritonnb" not in log
    assert "Traceback" not in log, log[-3000:]  # under numpy 2, outputs go through DLPack without a word


def test_a_local_module_imported_inside_the_function_is_named(triton, notebook_folder, tmp_path):
    """An import inside the body would run again on the server, where the module does not exist (and ``model``
    would be the backend's own file): the export fails naming it, and writes nothing."""

    def imports_inside(x):
        import model

        return model.forward(x)

    tritonnb.bind(imports_inside, "inside", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    try:
        with pytest.raises(ExportError, match=r"cannot carry 'model' \(in .*imports_inside\)"):
            tritonnb.export("inside", tmp_path / "repo")
    finally:
        tritonnb.unbind("inside")
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").rglob("*"))


def test_compiled_code_beside_the_notebook_is_named(triton, notebook_folder, tmp_path):
    """A compiled module beside the notebook (markupsafe's C extension, copied there) cannot go inside the export:
    the error names it and its file."""
    import markupsafe

    compiled = sorted(pathlib.Path(markupsafe.__file__).parent.glob("_speedups*.so"))
    if not compiled:
        pytest.skip("this markupsafe has no compiled _speedups module")
    shutil.copy(compiled[0], notebook_folder)
    from _speedups import _escape_inner  # the copy beside the notebook

    tritonnb.bind(lambda x: x * len(_escape_inner("<")), "native", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    try:
        with pytest.raises(ExportError, match=r"cannot carry module '_speedups' \(.*notebook.*\.so\).*compiled"):
            tritonnb.export("native", tmp_path / "repo")
    finally:
        tritonnb.unbind("native")
