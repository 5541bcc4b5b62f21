"""The built wheel, installed non-editable in a fresh environment, carries the whole kit and runs the quickstart."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv
import zipfile

import nbformat

ROOT = pathlib.Path(__file__).parent.parent
QUICKSTART = ROOT / "notebooks" / "01_quickstart.ipynb"


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


def _fresh_environment(tmp_path: pathlib.Path, wheel: pathlib.Path) -> pathlib.Path:
    """A new venv with the wheel installed for real, and this environment's other packages (torch included)
    linked in beside it, so nothing is downloaded twice and tritonnb can only come from the wheel."""
    env_dir = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True,
    )
    site = pathlib.Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # this environment's packages, and the system's where it sees them (a GPU workstation's torch): first one wins
    folders = [pathlib.Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]
    for folder in folders:
        for entry in folder.iterdir():
            if not entry.name.startswith(("tritonnb", "__editable__", "pip")) and not (site / entry.name).exists():
                (site / entry.name).symlink_to(entry)  # linked, not on a .pth path: PyTriton finds its bundled libs
    return python


def test_wheel_ships_every_subpackage_and_no_dev_code(tmp_path):
    names = zipfile.ZipFile(_build_wheel(tmp_path)).namelist()
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "tritonnb").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))
    assert "tritonnb/py.typed" in names
    assert not [n for n in names if n.startswith(("devtools/", "benchmarks/", "tests/"))]


def test_installed_wheel_runs_the_quickstart(tmp_path):
    python = _fresh_environment(tmp_path, _build_wheel(tmp_path))
    where = subprocess.run(
        [str(python), "-c", "import tritonnb, tritonnb.widgets.panel; print(tritonnb.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(tmp_path / "env")), where
    missing = subprocess.run(  # every declared dependency is importable metadata-wise in that environment
        [
            str(python),
            "-c",
            "from importlib.metadata import requires, version\n"
            "from packaging.requirements import Requirement\n"
            "for text in requires('tritonnb'):\n"
            "    r = Requirement(text)\n"
            "    if r.marker is None and not r.specifier.contains(version(r.name), prereleases=True):\n"
            "        print(r)\n",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert missing == ""
    notebook = nbformat.read(QUICKSTART, as_version=4)  # plus a last cell saying which tritonnb the kernel ran
    notebook.cells.append(nbformat.v4.new_code_cell("import tritonnb\nprint('KERNEL RAN', tritonnb.__file__)"))
    copy = tmp_path / "notebooks" / QUICKSTART.name
    copy.parent.mkdir()
    nbformat.write(notebook, copy)
    done = subprocess.run(  # the notebook's kernel is started with this environment's python
        [str(python), str(ROOT / "devtools" / "run_notebook.py"), str(copy)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all cells ran" in done.stdout
    assert "READY" in done.stdout
    assert f"KERNEL RAN {tmp_path / 'env'}" in done.stdout
