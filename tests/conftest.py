"""Fixtures: a real tritonnb server on free loopback ports, and a real IPython shell with the extension."""

from __future__ import annotations

import os

import pytest
from binder_build import BinderBuild
from helpers import free_ports, port_ports, process_tree, wait_gone, wait_ports_free
from wheel_build import WheelBuild

import tritonnb


@pytest.fixture(scope="module")
def triton():
    """A running tritonnb server for the module; stopped afterwards, leaving no process and no port behind."""
    ports = free_ports()
    server = tritonnb.start(**port_ports(ports))
    yield server
    processes = process_tree(server.pid) if server.state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == [], "tritonserver or stub processes outlived stop()"
    assert wait_ports_free(ports) == []


@pytest.fixture(scope="module")
def shell():
    """A real IPython InteractiveShell with ``%load_ext tritonnb``; the server is stopped afterwards."""
    from IPython.core.interactiveshell import InteractiveShell

    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "tritonnb")
    yield ip
    ip.run_line_magic("unload_ext", "tritonnb")
    assert tritonnb.server() is None


@pytest.fixture
def served():
    """A fresh server of this process serving ``double`` (x:float32[4] -> y:float32[4]); the test may restart or
    kill it. Stopped afterwards, leaving no process behind."""
    server = tritonnb.start(**port_ports(free_ports()))
    tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    yield server
    processes = process_tree(server.pid) if server.state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == []


def _in_the_background(request, folder, build_type, module: str):
    """A build of minutes (pip installs) that starts with the session, when ``module``'s tests are collected, and
    goes on in the background while other tests run; removed at the end."""
    if not any(item.path.name == module for item in request.session.items):
        yield None
        return
    build = build_type(folder).start()
    yield build
    build.remove()


@pytest.fixture(scope="session", autouse=True)
def binder_build(request, tmp_path_factory):
    """The Binder test's environment (tests/test_notebooks.py)."""
    yield from _in_the_background(request, tmp_path_factory.mktemp("binder"), BinderBuild, "test_notebooks.py")


@pytest.fixture(scope="session", autouse=True)
def wheel_build(request, tmp_path_factory):
    """The wheel lane: numpy 2, then the wheel, then its tests (tests/test_wheel_numpy2.py)."""
    yield from _in_the_background(request, tmp_path_factory.mktemp("wheel"), WheelBuild, "test_wheel_numpy2.py")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run where torch sees CUDA (or with TRITONNB_GPU_TEST_DEVICE=cpu); elsewhere they are
    skipped, and counted as skipped."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests or os.environ.get("TRITONNB_GPU_TEST_DEVICE") == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device: scripts/test_gpu.sh runs these on a GPU machine")
        for item in gpu_tests:
            item.add_marker(skip)
