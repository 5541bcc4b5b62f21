"""The wheel lane's environment: tritonnb's wheel installed for real (not editable) into a clean virtual environment
that already has numpy 2, as on a workstation, which must keep that numpy.

``start()`` builds the wheel from a copy of the repository and launches the pip installs in the background (conftest
does so when the session begins); ``finish()`` waits and checks that numpy was not downgraded.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import time

import pytest
from binder_build import FIND_TRITONNB, _copy_repository, _run, inside

PIP_TIMEOUT_S = 1200
TEST_TOOLS = ["pytest>=8", "pytest-timeout", "psutil"]
# what a first cell meets before `python -m tritonnb install`: written to the file "before-engine"
BEFORE_ENGINE = """
import tritonnb
try:
    tritonnb.start()
    said = "started without the engine"
except tritonnb.EngineError as error:
    said = f"EngineError: {error}"
open("before-engine", "w").write(said)
"""


@dataclasses.dataclass
class WheelEnv:
    """The environment and the numpy version it had before tritonnb came."""

    env: pathlib.Path
    numpy_before: str
    before_engine: str  # what tritonnb.start() said before `python -m tritonnb install`

    @property
    def python(self) -> pathlib.Path:
        """Its interpreter."""
        return self.env / "bin" / "python"


class WheelBuild:
    """One build, in the background: numpy 2 and torch first, then the wheel, the test tools and the engine."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.env = base / "env"
        self.log = base / "pip.log"
        self._script: subprocess.Popen | None = None
        self._started = 0.0
        self._finished: WheelEnv | None = None

    def start(self) -> WheelBuild:
        """Build the wheel (seconds), then launch the installs."""
        self._started = time.perf_counter()
        source = self.base / "repo"
        _copy_repository(source)
        _run("pip wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(self.base)])
        (wheel,) = self.base.glob("tritonnb-*.whl")
        shutil.rmtree(source)
        python = self.env / "bin" / "python"
        steps = [
            [sys.executable, "-m", "venv", str(self.env)],  # no --system-site-packages
            [python, "-m", "pip", "install", "-q", "numpy>=2", "torch==2.13.0"],
            [python, "-c", "import numpy; open('numpy-before', 'w').write(numpy.__version__)"],
            [python, "-m", "pip", "install", "-q", str(wheel), *TEST_TOOLS],
            [python, "-c", BEFORE_ENGINE],
            [python, "-m", "tritonnb", "install"],
        ]
        script = " && ".join(shlex.join(map(str, step)) for step in steps)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        with self.log.open("w") as log:
            self._script = subprocess.Popen(
                ["bash", "-c", script], cwd=self.base, env=environ, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def finish(self) -> WheelEnv:
        """Wait for the installs; fail unless they worked, kept numpy 2 and installed tritonnb for real."""
        if self._finished is not None:
            return self._finished
        assert self._script is not None, "start() first"
        waited = time.perf_counter()
        try:
            code = self._script.wait(timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._script.kill()
            pytest.fail(f"the wheel environment took over {PIP_TIMEOUT_S} s to build")
        if code != 0:
            pytest.fail(f"building the wheel environment failed (exit {code}):\n{self.log.read_text()[-5000:]}")
        built = WheelEnv(self.env, *((self.base / name).read_text() for name in ("numpy-before", "before-engine")))
        where = [str(built.python), "-c", f"import importlib.util; print({FIND_TRITONNB})"]
        found = _run("import tritonnb", where, cwd=self.base)
        assert inside(found.strip(), self.env), found
        print(
            f"\nwheel environment built in {time.perf_counter() - self._started:.1f} s in the background; waited "
            f"{time.perf_counter() - waited:.1f} s for it here"
        )
        self._finished = built
        return built

    def remove(self) -> None:
        """Stop the installs if they still run, and delete the environment."""
        if self._script is not None and self._script.poll() is None:
            self._script.kill()
            self._script.wait()
        shutil.rmtree(self.base, ignore_errors=True)
