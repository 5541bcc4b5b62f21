"""The built wheel carries the whole kit and no development code.

That a non-editable install resolves its dependencies and runs the tutorials is the Binder test's part
(tests/test_notebooks.py: ``pip install -r binder/requirements.txt`` installs ``.[tutorials]`` for real into a clean
environment and runs every notebook with it, under numpy 2); that it keeps an environment's numpy 2 and serves there
is the wheel lane's (tests/test_wheel_numpy2.py).
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).parent.parent


def _build_wheel(tmp_path: pathlib.Path) -> pathlib.Path:
    source = tmp_path / "source"  # a copy: the build must not write into the checkout
    shutil.copytree(ROOT / "tritonnb", source / "tritonnb", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp_path / "dist")],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("tritonnb-*.whl")
    return wheel


def test_wheel_ships_every_subpackage_and_no_dev_code(tmp_path):
    names = zipfile.ZipFile(_build_wheel(tmp_path)).namelist()
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "tritonnb").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    assert "tritonnb/py.typed" in names
    assert "tritonnb/triton/stub/_tritonnb_stub.py" in names  # package data, sent with each model's files
    assert not [n for n in names if n.startswith(("devtools/", "benchmarks/", "tests/"))]
