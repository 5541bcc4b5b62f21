"""The wheel lane: tritonnb's wheel installed for real (not editable) into a clean virtual environment that already
has numpy 2, as on a workstation, which must keep that numpy; then the lane's tests run there, against the installed
package, from a copy of tests/ and devtools/ that has no source of the package beside it.

Everything runs in the background from the session's start (conftest), one script: the installs take minutes and
the lane's tests mostly wait on servers, so both overlap the rest of the suite. ``finish()`` waits for the script.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
from binder_build import ROOT, _copy_repository, _run

PIP_TIMEOUT_S = 1800
TEST_TOOLS = ["pytest>=8", "pytest-timeout", "psutil"]
LANE = ["tests/test_binding.py", "tests/test_outputs.py", "tests/test_streaming.py", "tests/test_numpy2.py"]
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
WHERE = "import numpy, tritonnb; open('installed', 'w').write(tritonnb.__file__ + '\\n' + numpy.__version__)"


@dataclasses.dataclass
class WheelLane:
    """What the lane saw."""

    env: pathlib.Path
    numpy_before: str  # before tritonnb came
    numpy_after: str  # once it was installed and its tests ran
    tritonnb_file: str  # where ``import tritonnb`` found the package, from the tests' folder
    before_engine: str  # what tritonnb.start() said before `python -m tritonnb install`
    tests_exit: int
    tests_output: str


class WheelBuild:
    """The lane's script, in the background."""

    def __init__(self, base: pathlib.Path) -> None:
        self.base = base
        self.env = base / "env"
        self.tests = base / "lane"
        self.log = base / "lane.log"
        self._script: subprocess.Popen | None = None
        self._started = 0.0
        self._finished: WheelLane | None = None

    def start(self) -> WheelBuild:
        """Build the wheel and copy the tests (seconds), then launch the script."""
        self._started = time.perf_counter()
        source = self.base / "repo"
        _copy_repository(source)
        _run("pip wheel", [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(self.base)])
        (wheel,) = self.base.glob("tritonnb-*.whl")
        shutil.rmtree(source)
        for folder in ("tests", "devtools"):
            shutil.copytree(ROOT / folder, self.tests / folder, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", self.tests / "pyproject.toml")
        python = self.env / "bin" / "python"
        steps = [
            [sys.executable, "-m", "venv", str(self.env)],  # no --system-site-packages
            [python, "-m", "pip", "install", "-q", "numpy>=2", "torch==2.13.0"],
            [python, "-c", "import numpy; open('numpy-before', 'w').write(numpy.__version__)"],
            [python, "-m", "pip", "install", "-q", str(wheel), *TEST_TOOLS],
            [python, "-c", BEFORE_ENGINE],
            [python, "-m", "tritonnb", "install"],
            ["cd", self.tests],
            [python, "-c", WHERE],
        ]
        tests = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *LANE]
        script = " && ".join(shlex.join(map(str, step)) for step in steps)
        script += f" && {{ {shlex.join(map(str, tests))} > ../tests.log 2>&1; echo $? > ../tests.exit; }}"
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TRITONNB", "PYTEST"))
        }
        environ["PATH"] = os.pathsep.join([str(self.env / "bin"), os.environ.get("PATH", os.defpath)])
        with self.log.open("w") as log:
            self._script = subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.base,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: remove() ends the tests it runs too
            )
        return self

    def finish(self) -> WheelLane:
        """Wait for the script; fail with its log unless the installs worked (the tests' outcome is returned)."""
        if self._finished is not None:
            return self._finished
        assert self._script is not None, "start() first"
        waited = time.perf_counter()
        try:
            code = self._script.wait(timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self._script.pid, signal.SIGKILL)
            pytest.fail(f"the wheel lane took over {PIP_TIMEOUT_S} s")
        if code != 0:
            pytest.fail(f"the wheel lane's installs failed (exit {code}):\n{self.log.read_text()[-5000:]}")
        tritonnb_file, numpy_after = (self.tests / "installed").read_text().split("\n")
        self._finished = WheelLane(
            env=self.env,
            numpy_before=(self.base / "numpy-before").read_text(),
            numpy_after=numpy_after,
            tritonnb_file=tritonnb_file,
            before_engine=(self.base / "before-engine").read_text(),
            tests_exit=int((self.base / "tests.exit").read_text()),
            tests_output=(self.base / "tests.log").read_text(),
        )
        print(
            f"\nwheel lane ran in {time.perf_counter() - self._started:.1f} s in the background; waited "
            f"{time.perf_counter() - waited:.1f} s for it here"
        )
        return self._finished

    def remove(self) -> None:
        """Stop the script (and the tests it runs) if it still runs, and delete the environment."""
        if self._script is not None and self._script.poll() is None:
            os.killpg(self._script.pid, signal.SIGKILL)
            self._script.wait()
        shutil.rmtree(self.base, ignore_errors=True)
