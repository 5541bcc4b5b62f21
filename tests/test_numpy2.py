"""numpy 2: the stub of Triton 2.51 cannot build numpy arrays under it; tritonnb moves numeric tensors through DLPack
and gives the stub a numpy 1 of its own for bytes (``python -m tritonnb install``, run by scripts/setup.sh)."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pytest
from helpers import free_ports, port_ports, process_tree, wait_gone

import tritonnb
from tritonnb.triton import engine

pytestmark = pytest.mark.skipif(not engine.numpy_2(), reason="this environment has numpy 1")
DTYPES = {
    "float16": [1.5, -2, 3, 4],
    "float32": [1, 2.5, 3, 4],
    "float64": [1, 2, 3, 1e300],
    "int8": [1, -2, 3, 127],
    "int32": [1, 2, -3, 2**31 - 1],
    "int64": [1, 2, 3, 2**40],
    "uint8": [1, 2, 3, 250],
    "bool": [True, False, True, True],
}


def _stub_numpy_folders(server) -> set[str]:
    """The numpy package folders the server's python backend stubs have loaded."""
    folders = set()
    for process in process_tree(server.pid)[1:]:
        for mapping in process.memory_maps():
            if "_multiarray_umath" in mapping.path:
                folders.add(str(pathlib.Path(mapping.path).parent.parent))
    return folders


@pytest.fixture
def fresh_server():
    """A server of this process, started by the test (the stub's environment is chosen at start); stopped after."""
    servers = []

    def start():
        servers.append(tritonnb.start(**port_ports(free_ports())))
        return servers[-1]

    yield start
    processes = process_tree(servers[-1].pid) if servers and servers[-1].state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == []


def _round_trip(dtype: str) -> np.ndarray:
    tritonnb.bind(lambda x: x, f"same_{dtype}", inputs=[f"x:{dtype}[4]"], outputs=[f"y:{dtype}[4]"])
    sent = np.array([DTYPES[dtype]], dtype=dtype)
    return sent, tritonnb.client(f"same_{dtype}")(sent)["y"]


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="numpy 1 has no build for Python 3.13")
def test_every_dtype_round_trips_with_the_stubs_own_numpy_1(fresh_server):
    assert engine.stub_numpy_ready(), "scripts/setup.sh runs python -m tritonnb install"
    server = fresh_server()
    for dtype in DTYPES:
        sent, got = _round_trip(dtype)
        assert got.dtype == sent.dtype and got.tolist() == sent.tolist(), dtype
    tritonnb.bind(lambda x: x, "same_bytes", inputs=["x:bytes[2]"], outputs=["y:bytes[2]"])
    assert tritonnb.client("same_bytes")(np.array([[b"a\0b", b""]], object))["y"].tolist() == [[b"a\0b", b""]]
    assert _stub_numpy_folders(server) == {str(engine.stub_numpy_folder() / "numpy")}


def test_numeric_dtypes_go_through_dlpack_where_the_stub_has_numpy_2(fresh_server, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "stub_numpy_folder", lambda: tmp_path)  # as before `python -m tritonnb install`
    server = fresh_server()
    for dtype in DTYPES:
        sent, got = _round_trip(dtype)
        assert got.dtype == sent.dtype and got.tolist() == sent.tolist(), dtype
    (folder,) = _stub_numpy_folders(server)
    assert folder == str(pathlib.Path(np.__file__).parent)  # the environment's numpy 2
    with pytest.raises(
        tritonnb.SpecError, match=r"bytes tensors \(x\) cannot be served under numpy 2.*(tritonnb install|Python 3.13)"
    ):
        tritonnb.bind(lambda x: x.float(), "text", inputs=["x:bytes[1]"], outputs=["y:float32[1]"])
    assert "text" not in server.models
    sent, got = _round_trip("float32")  # still serving
    assert got.tolist() == sent.tolist()


def test_a_pip_install_keeps_numpy_2():
    """tritonnb does not list PyTriton (whose metadata asks for numpy<2); nothing it requires pins numpy below 2."""
    import importlib.metadata

    from packaging.requirements import Requirement

    requirements = [Requirement(r) for r in importlib.metadata.requires("tritonnb") or []]
    assert not [r for r in requirements if r.name == "nvidia-pytriton" and not r.marker]
    (numpy,) = [r for r in requirements if r.name == "numpy"]
    assert numpy.specifier.contains(np.__version__)
