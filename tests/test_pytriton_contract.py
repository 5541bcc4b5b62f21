"""Pins the PyTriton 0.7.0 internals that tritonnb.triton._pytriton relies on; an upgrade fails here first."""

from __future__ import annotations

import ast
import asyncio
import ctypes
import importlib.util
import inspect
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pytriton.models.model import Model
from pytriton.proxy.data import TensorStore
from pytriton.server.triton_server import TritonServer
from pytriton.triton import Triton, TritonConfig

ROOT = pathlib.Path(__file__).parent.parent
STUB_PATH = ROOT / "tritonnb" / "triton" / "stub" / "_tritonnb_stub.py"
HOOK = re.compile(r"\b_tritonnb_stub\.(\w+)")


def test_pinned_version():
    assert version("nvidia-pytriton") == "0.7.0"


def test_triton_server_internals():
    source = inspect.getsource(TritonServer)
    for name in ("_tritonserver_running_cmd", "_server_path", "_server_config", "_handle_exit", "_get_env"):
        assert name in source, name
    assert "verbose" in inspect.signature(TritonServer.__init__).parameters


def test_triton_internals():
    for name in (
        "_prepare_triton_inference_server",
        "_run_server",
        "_is_alive_impl",
        "_triton_server_config",
        "get_access_token",
    ):
        assert name in inspect.getsource(Triton), name
    assert "log_verbose" in TritonConfig.__dataclass_fields__
    assert callable(TritonConfig.from_env)


def test_load_model_flag_can_be_dropped():
    from pytriton.server.triton_server_config import TritonServerConfig

    assert '["load-model"] = "*"' in inspect.getsource(Triton._prepare_triton_config)  # ServerProcess unsets it
    config = TritonServerConfig()
    config["load-model"] = "*"
    config["model-repository"] = "/store"
    config["load-model"] = None
    assert config.to_args_list() == ["--model-repository", "/store"]


def _pytriton_stub_files() -> dict[str, bytes]:
    version_one = SimpleNamespace(model_version=1, SCRIPT_FILES_TO_COPY=Model.SCRIPT_FILES_TO_COPY)
    return Model.get_proxy_model_files(version_one)


def test_every_anchor_is_in_pytritons_stub_files_once():
    from tritonnb.triton._pytriton import PROXY_PATCHES

    files = _pytriton_stub_files()
    for name, patches in PROXY_PATCHES.items():
        text = files[f"file:1/{name}"].decode()
        for old, new in patches:
            assert text.count(old) == 1, (name, old)
            text = text.replace(old, new)


def test_stub_patches_apply_to_the_stub_files():
    from tritonnb.triton._pytriton import STUB_MODULE, patched_proxy_files

    files = patched_proxy_files(_pytriton_stub_files())
    assert files[f"file:1/{STUB_MODULE}.py"] == STUB_PATH.read_bytes()  # sent beside model.py
    text = files["file:1/communication.py"].decode()
    assert f"from . import {STUB_MODULE}\n" in text and "_tritonnb_stub.connect(sock" in text
    compile(text, "communication.py", "exec")
    model = files["file:1/model.py"].decode()
    assert f"from . import {STUB_MODULE}, communication, data\n" in model
    assert "@_tritonnb_stub.per_request_errors\ndef _wrap_response(" in model
    assert "_tritonnb_stub.input_array(input_tensor" in model and "_tritonnb_stub.output_tensor(name" in model
    compile(model, "model.py", "exec")


def test_hooks_call_what_the_stub_module_defines():
    from tritonnb.triton._pytriton import PROXY_PATCHES, STUB_MODULE

    called = {name for patches in PROXY_PATCHES.values() for _, new in patches for name in HOOK.findall(new)}
    assert called, "no hook found"
    tree = ast.parse(STUB_PATH.read_text())
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    defined |= {target.id for node in tree.body if isinstance(node, ast.Assign) for target in node.targets}
    assert called <= defined, sorted(called - defined)
    assert STUB_PATH.stem == STUB_MODULE


def test_the_stub_module_stands_alone():
    """It runs in the stub's isolated Python: no tritonnb there; its constants must match the kernel's."""
    from tritonnb.triton import _pytriton

    source = STUB_PATH.read_text()
    tree = ast.parse(source)
    compile(source, STUB_PATH.name, "exec")
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in imported if name.split(".")[0] == "tritonnb"]
    constants = {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
    }
    assert constants["ERROR_OUTPUT"] == _pytriton.ERROR_OUTPUT
    assert constants["STREAM_PARAMETER"] == _pytriton.STREAM_PARAMETER


def test_the_stub_module_is_ruff_clean():
    pytest.importorskip("ruff")
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, str(STUB_PATH)], cwd=ROOT, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


class FakeTensor:
    """What the stub's ``pb_utils.Tensor`` records: how it was made."""

    def __init__(self, name: str, array: np.ndarray, via: str = "numpy") -> None:
        self.name, self.array, self.via = name, array, via

    @classmethod
    def from_dlpack(cls, name: str, capsule: Any) -> FakeTensor:
        """As Triton 2.51's stub does, marks the capsule consumed, under its own name (``used_dlpack``)."""
        ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), STUBS_USED_NAME)
        tensor = cls(name, None, "dlpack")
        tensor.capsule = capsule
        return tensor


STUBS_USED_NAME = ctypes.c_char_p(b"used_dlpack")


def capsule_name(capsule: Any) -> bytes:
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    return get_name(capsule)


class FakeError:
    CANCELLED = "CANCELLED"

    def __init__(self, message: str, code: str | None = None) -> None:
        self.message, self.code = message, code


@pytest.fixture
def stub(monkeypatch):
    """The stub module, loaded with a stand-in for the stub's ``triton_python_backend_utils``."""
    pb_utils = SimpleNamespace(Tensor=FakeTensor, TritonError=FakeError, InferenceResponse=SimpleNamespace)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    spec = importlib.util.spec_from_file_location(STUB_PATH.stem, STUB_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stub_turns_an_error_output_into_that_requests_error(stub):
    wrap = stub.per_request_errors(lambda response, names, outputs: ("wrapped", response.data))
    error = wrap(SimpleNamespace(data={"__tritonnb_error__": np.array([b"bad input"], dtype=object)}), [], {})
    assert error.output_tensors == [] and error.error.message == "bad input"
    assert wrap(SimpleNamespace(data={"y": 1}), [], {}) == ("wrapped", {"y": 1})
    assert wrap(SimpleNamespace(data=None), [], {}) == ("wrapped", None)


def test_stub_marks_a_cancelled_stream_once_and_cleans_up(stub, tmp_path, monkeypatch):
    stub.use_workspace(tmp_path)
    requests_id = (7).to_bytes(4, "big")
    requests = [SimpleNamespace(parameters=None)]
    stub.add_markers(requests, requests_id, {"model_transaction_policy": {"decoupled": False}})
    assert requests[0].parameters is None  # not a stream
    stub.add_markers(requests, requests_id, {"model_transaction_policy": {"decoupled": True}})
    marker = pathlib.Path(requests[0].parameters["tritonnb-cancel-marker"])
    assert marker.parent == tmp_path and not marker.exists()

    client = SimpleNamespace(gone=False)
    triton_requests = [SimpleNamespace(is_cancelled=lambda: client.gone)]
    assert not stub.cancelled(triton_requests, requests_id)
    assert stub.unless_cancelled(["data"], 1, requests_id) == ["data"]

    monkeypatch.setattr(stub, "CANCEL_POLL_S", 0.01)

    async def cancel_while_waiting():
        queue = asyncio.Queue()
        client.gone = True
        waiting = asyncio.ensure_future(stub.next_response(queue, triton_requests, requests_id))
        while not marker.exists():
            await asyncio.sleep(0.01)
        await queue.put("item")
        return await waiting

    assert asyncio.run(cancel_while_waiting()) == "item"
    assert stub.cancelled(triton_requests, requests_id)
    (response,) = stub.unless_cancelled(["data"], 1, requests_id)
    assert response.error.code == FakeError.CANCELLED
    stub.stream_ended(requests_id)
    assert not marker.exists() and not stub.cancelled([SimpleNamespace(is_cancelled=lambda: False)], requests_id)


class FakeInput:
    """A stub input tensor: ``as_numpy`` and DLPack, told apart."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def as_numpy(self) -> str:
        return "as_numpy"

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


@pytest.mark.parametrize("dlpack", [False, True])
def test_stub_moves_numeric_tensors_through_dlpack_only_under_numpy_2(stub, monkeypatch, dlpack):
    monkeypatch.setattr(stub, "DLPACK", dlpack)
    config = {"input": [{"name": "x", "data_type": "TYPE_FP32"}, {"name": "s", "data_type": "TYPE_STRING"}]}
    numbers = np.arange(4, dtype=np.float32)
    assert stub.input_array(FakeInput(np.zeros(1)), "s", config) == "as_numpy"
    read = stub.input_array(FakeInput(numbers), "x", config)
    assert (read == "as_numpy") if not dlpack else (read == numbers).all()
    output = stub.output_tensor("y", numbers[::2])
    assert output.via == ("dlpack" if dlpack else "numpy")
    if dlpack:  # the protocol's name for a consumed capsule, which numpy's capsule destructor knows
        assert capsule_name(output.capsule) == b"used_dltensor"
    assert stub.output_tensor("y", np.array([b"a"], dtype=object)).via == "numpy"


def test_stub_retries_the_handshake_until_the_socket_listens(stub, tmp_path):
    path = tmp_path / "config.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path.as_posix())  # bound, not listening yet: connections are refused
    with server, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as late:
        with pytest.raises(ConnectionRefusedError):
            stub.connect(late, path, time.time())
        threading.Timer(0.05, server.listen).start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            stub.connect(sock, path, time.time() + 5)


def test_the_stub_finds_its_packages_through_the_python_on_path():
    """tritonnb.triton.engine gives the stub its own numpy 1 by putting a virtual environment's bin first on PATH:
    PyTriton
    does the same for its own environment, and the stub's Python ignores PYTHONPATH (it runs isolated)."""
    assert 'env["PATH"] = f"{python_bin_directory.as_posix()}:{env[\'PATH\']}"' in inspect.getsource(
        TritonServer._get_env
    )


def test_model_and_tensor_store_internals():
    for name in ("get_model_config", "get_proxy_model_files", "setup", "clean", "is_alive", "on_model_event"):
        assert callable(getattr(Model, name)), name
    assert isinstance(TensorStore._instances, dict)
    assert "self._shm_segments" in inspect.getsource(TensorStore)
    assert "workspace-path" in inspect.getsource(Model._get_triton_model_config)


def test_access_restriction_internals():
    """Private serving relies on PyTriton's security config, its default API groups and its header name (which
    ``tritonnb.http_get`` spells out so as not to import PyTriton)."""
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, TRITON_ACCESS_HEADER, TritonSecurityConfig

    from tritonnb.http_get import ACCESS_TOKEN_HEADER, GRPC_ACCESS_TOKEN_HEADER
    from tritonnb.triton._pytriton import restricted_endpoints

    assert ACCESS_TOKEN_HEADER == TRITON_ACCESS_HEADER
    assert f"triton-grpc-protocol-{TRITON_ACCESS_HEADER}" == GRPC_ACCESS_TOKEN_HEADER
    assert set(DEFAULT_PROTECTED_ENDPOINTS) == {"shared-memory", "model-repository", "statistics", "trace", "logging"}
    private = TritonSecurityConfig(restricted_endpoints=restricted_endpoints(private=True))
    assert {"inference", "metadata", "model-config"} <= set(private.restricted_endpoints)
    assert private.access_token and private.access_token != TritonSecurityConfig().access_token  # new each time
