"""The wheel lane: tritonnb's wheel, installed for real into an environment that has numpy 2 (tests/wheel_build.py),
keeps that numpy, and the binding, output, streaming and numpy 2 tests pass there against the installed package."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest
from wheel_build import WheelBuild, WheelEnv

ROOT = pathlib.Path(__file__).resolve().parent.parent
LANE = ["tests/test_binding.py", "tests/test_outputs.py", "tests/test_streaming.py", "tests/test_numpy2.py"]
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def wheel_env(wheel_build: WheelBuild | None) -> WheelEnv:
    """The environment, its pip installs started with the session (see conftest.wheel_build)."""
    assert wheel_build is not None, "conftest starts the build when this module's tests are collected"
    return wheel_build.finish()


def _clean_environ(env: WheelEnv) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "TRITONNB"))}
    return {**inherited, "PATH": os.pathsep.join([str(env.env / "bin"), os.environ.get("PATH", os.defpath)])}


def test_installing_the_wheel_keeps_numpy_2(wheel_env):
    now = subprocess.run(
        [wheel_env.python, "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert int(wheel_env.numpy_before.split(".")[0]) >= 2
    assert now == wheel_env.numpy_before, f"pip changed numpy from {wheel_env.numpy_before} to {now}"


def test_without_the_engine_the_first_start_names_the_command(wheel_env):
    assert wheel_env.before_engine.startswith("EngineError: NVIDIA's PyTriton"), wheel_env.before_engine
    assert "-m tritonnb install` once (it keeps your numpy)" in wheel_env.before_engine


def test_the_lane_passes_against_the_installed_package(wheel_env, tmp_path):
    """The tests run from a copy of tests/ and devtools/ without the package's source, so ``import tritonnb`` is the
    installed wheel's."""
    for folder in ("tests", "devtools"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    where = subprocess.run(
        [wheel_env.python, "-c", "import tritonnb; print(tritonnb.__file__)"],
        cwd=tmp_path,
        env=_clean_environ(wheel_env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert pathlib.Path(where).is_relative_to(wheel_env.env), where
    done = subprocess.run(
        [wheel_env.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *LANE],
        cwd=tmp_path,
        env=_clean_environ(wheel_env),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"\nwheel lane (numpy {wheel_env.numpy_before}, tritonnb from {where}): {summary}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
