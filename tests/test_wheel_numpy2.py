"""The wheel lane (tests/wheel_build.py): tritonnb's wheel, installed for real into an environment that has numpy 2,
keeps that numpy; before `python -m tritonnb install` a start names that command; after it, the binding, output,
streaming and numpy 2 tests pass there against the installed package."""

from __future__ import annotations

import pytest
from binder_build import inside
from wheel_build import LANE, WheelBuild, WheelLane

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def lane(wheel_build: WheelBuild | None) -> WheelLane:
    """The lane, run in the background from the session's start (see conftest.wheel_build)."""
    assert wheel_build is not None, "conftest starts the lane when this module's tests are collected"
    return wheel_build.finish()


def test_installing_the_wheel_keeps_numpy_2(lane):
    assert int(lane.numpy_before.split(".")[0]) >= 2
    assert lane.numpy_after == lane.numpy_before, f"pip changed numpy from {lane.numpy_before} to {lane.numpy_after}"


def test_without_the_engine_the_first_start_names_the_command(lane):
    assert lane.before_engine.startswith("EngineError: NVIDIA's PyTriton"), lane.before_engine
    assert "-m tritonnb install` once (it keeps your numpy)" in lane.before_engine


def test_the_lane_passes_against_the_installed_package(lane):
    assert inside(lane.tritonnb_file, lane.env), f"the tests imported {lane.tritonnb_file}, not the wheel's"
    summary = lane.tests_output.strip().splitlines()[-1] if lane.tests_output.strip() else ""
    print(f"\nwheel lane, numpy {lane.numpy_before}, {' '.join(LANE)}: {summary}")
    assert lane.tests_exit == 0, lane.tests_output[-6000:]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, summary
