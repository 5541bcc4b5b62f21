"""The Triton engine tritonnb drives: NVIDIA's PyTriton 0.7.0 (which carries tritonserver 2.51), installed beside
any numpy, and a numpy 1 of its own for Triton's python-backend stub where the environment has numpy 2.

Why not a plain dependency: PyTriton 0.7.0's metadata asks for ``numpy<2``, so pip would downgrade a workstation's
numpy 2 under every other package. tritonnb does not need that pin. The stub (C++, pybind11 2.10) builds its numpy
arrays through numpy 1's C API; under numpy 2 it reads every dtype's item size as 0. tritonnb moves numeric tensors
through DLPack instead (see ``tritonnb.triton._pytriton``), which does not touch that ABI. Bytes tensors have no DLPack
form, so for them the stub process, and only it, imports numpy 1.26 from a folder of its own: it only relays
tensors to the kernel (the user's code runs in the kernel, with the environment's numpy).

``python -m tritonnb install`` sets both up; ``require_pytriton`` says what is missing.
"""

from __future__ import annotations

import importlib.metadata
import pathlib
import subprocess
import sys

import numpy as np

from tritonnb.errors import EngineError, SpecError

__all__ = [
    "INSTALL_COMMAND",
    "PYTRITON",
    "STUB_NUMPY",
    "check_bytes_supported",
    "install",
    "numpy_2",
    "require_pytriton",
    "stub_environment",
    "stub_numpy_folder",
    "stub_numpy_ready",
]

PYTRITON = "nvidia-pytriton==0.7.0"
STUB_NUMPY = "numpy==1.26.4"  # the last numpy 1: wheels for CPython 3.9 to 3.12
INSTALL_COMMAND = f"{sys.executable} -m tritonnb install"  # this environment's Python, by its full path


def require_pytriton() -> None:
    """Raise EngineError, naming the command that fixes it, unless PyTriton 0.7.0 is installed."""
    try:
        version = importlib.metadata.version("nvidia-pytriton")
    except importlib.metadata.PackageNotFoundError:
        raise EngineError(
            f"NVIDIA's PyTriton ({PYTRITON}, which carries tritonserver) is not installed in this environment "
            f"({sys.prefix}): run `{INSTALL_COMMAND}` once (it keeps your numpy)"
        ) from None
    if version != PYTRITON.split("==")[1]:
        raise EngineError(
            f"tritonnb needs {PYTRITON} (it patches its internals), this environment has {version}: "
            f"run `{INSTALL_COMMAND}`"
        )


def stub_numpy_folder() -> pathlib.Path:
    """Where ``install`` puts the stub's own numpy 1 (inside this environment, per Python version)."""
    return pathlib.Path(sys.prefix, "share", "tritonnb", f"stub-numpy-py{sys.version_info[0]}{sys.version_info[1]}")


def numpy_2() -> bool:
    """Whether this environment's numpy is 2 or later (the stub cannot build numpy arrays under it)."""
    return int(np.__version__.split(".")[0]) >= 2


def stub_numpy_ready() -> bool:
    """Whether the stub needs a numpy 1 of its own (this environment has numpy 2) and ``install`` has provided one."""
    return numpy_2() and (stub_numpy_folder() / "numpy").is_dir()


def stub_environment(folder: pathlib.Path) -> pathlib.Path | None:
    """Where this environment has numpy 2 and ``install`` has provided the stub's numpy 1: write a virtual environment
    for the stub into ``folder`` and return its ``bin`` folder, to put first on tritonserver's ``PATH``; else None.

    The stub runs its embedded Python isolated (``PYTHONPATH`` is ignored) and finds its packages through the
    ``python3`` on ``PATH``. This environment's ``python3`` is this interpreter; its site-packages holds only a
    ``.pth`` file: the stub's numpy 1 first, then every package folder of the kernel's Python.
    """
    if not stub_numpy_ready():
        return None
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    base = pathlib.Path(getattr(sys, "_base_executable", sys.executable))
    site = folder / "lib" / f"python{version}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    packages = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and pathlib.Path(p).is_dir()]
    (site / "tritonnb-stub.pth").write_text("\n".join([str(stub_numpy_folder()), *packages]) + "\n")
    (folder / "pyvenv.cfg").write_text(
        f"home = {base.parent}\ninclude-system-site-packages = false\nversion = {sys.version.split()[0]}\n"
    )
    bin_folder = folder / "bin"
    bin_folder.mkdir(exist_ok=True)
    for name in ("python3", f"python{version}"):
        link = bin_folder / name
        if not link.is_symlink():
            link.symlink_to(base)
    return bin_folder


def check_bytes_supported(names: list[str]) -> None:
    """SpecError if tensors of dtype bytes (``names``) cannot be served here: numpy 2 and no stub numpy."""
    if not names or not numpy_2() or stub_numpy_ready():
        return
    where = (
        f"run `{INSTALL_COMMAND}` once to give the stub a numpy 1.26 of its own (your numpy stays {np.__version__})"
        if sys.version_info < (3, 13)
        else "numpy 1 has no build for Python 3.13: serve bytes from Python 3.12 or earlier, or under numpy<2"
    )
    raise SpecError(
        f"bytes tensors ({', '.join(names)}) cannot be served under numpy {np.__version__} yet: Triton 2.51's "
        f"python-backend stub (in {PYTRITON}) reads and writes them through numpy 1's C API; {where}"
    )


def install() -> int:
    """Install PyTriton without its numpy pin, and (up to Python 3.12) the stub's own numpy 1. Returns pip's code."""
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    steps = [[*pip, "--no-deps", PYTRITON]]
    if sys.version_info < (3, 13):
        target = stub_numpy_folder()
        steps.append([*pip, "--no-deps", "--only-binary=:all:", "--upgrade", "--target", str(target), STUB_NUMPY])
    for step in steps:
        print("tritonnb install:", " ".join(step[len(pip) :]), flush=True)
        code = subprocess.call(step)
        if code != 0:
            return code
    if len(steps) > 1:
        print(f"tritonnb install: done; the stub's numpy is in {stub_numpy_folder()}")
    else:
        print("tritonnb install: done; numpy 1 has no build for Python 3.13, so bytes tensors need numpy<2 here")
    return 0
