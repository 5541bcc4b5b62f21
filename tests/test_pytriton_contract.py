"""Pins the PyTriton 0.7.0 internals that tritonnb.triton._pytriton relies on; an upgrade fails here first."""

from __future__ import annotations

import inspect
from importlib.metadata import version
from types import SimpleNamespace

from pytriton.models.model import Model
from pytriton.proxy.data import TensorStore
from pytriton.server.triton_server import TritonServer
from pytriton.triton import Triton, TritonConfig


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


def test_stub_patches_apply_to_the_stub_files():
    from tritonnb.triton._pytriton import patched_proxy_files

    version_one = SimpleNamespace(model_version=1, SCRIPT_FILES_TO_COPY=Model.SCRIPT_FILES_TO_COPY)
    files = patched_proxy_files(Model.get_proxy_model_files(version_one))
    text = files["file:1/communication.py"].decode()
    assert "except ConnectionRefusedError:" in text and "timeout_s: float = 30.0" in text
    compile(text, "communication.py", "exec")
    model = files["file:1/model.py"].decode()
    assert "__tritonnb_error__" in model and "pb_utils.TritonError(message)" in model
    assert "_tritonnb_np.from_dlpack(input_tensor)" in model and "pb_utils.Tensor.from_dlpack(name" in model
    assert "input_tensor.as_numpy()" in model  # kept for bytes and for a stub with numpy 1
    compile(model, "model.py", "exec")


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
