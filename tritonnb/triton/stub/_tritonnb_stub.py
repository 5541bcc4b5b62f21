"""tritonnb's additions to PyTriton's python-backend stub, called from hooks in the stub files sent with each load.

Sent beside PyTriton's ``model.py`` (streams) and imported by it (``from . import _tritonnb_stub``); see
``PROXY_PATCHES`` in ``tritonnb.triton._pytriton`` for where each hook sits. tritonnb's own ``channel_model.py``
(every other model) uses its DLPack conversions and its patient ``connect`` too. It runs inside Triton's stub, an
isolated Python where ``triton_python_backend_utils`` exists, so it imports nothing from tritonnb, and it reads
``pb_utils``' attributes only when called: the stub fills them in after it has imported the model's module.

- Per-request errors: a response carrying only ``ERROR_OUTPUT`` fails its own request, not the whole batch.
- Streams: a request of a decoupled model gets a marker path (parameter ``STREAM_PARAMETER``); once its client
  cancels, the file is created, nothing more is sent, and the stream ends as cancelled.
- numpy 2: numeric tensors go through DLPack both ways (the stub's own conversions use numpy 1's ABI). The stub
  marks a consumed capsule ``used_dlpack``, not the protocol's ``used_dltensor``, and numpy's capsule destructor then
  logged a traceback for every output: ``output_tensor`` gives the capsule the protocol's name itself.
- Handshake: connecting to the first instance's socket is retried until the deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import pathlib
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

ERROR_OUTPUT = "__tritonnb_error__"  # the same as tritonnb.triton._pytriton.ERROR_OUTPUT
STREAM_PARAMETER = "tritonnb-cancel-marker"  # the same as tritonnb.triton._pytriton.STREAM_PARAMETER
HANDSHAKE_TIMEOUT_S = 30.0
CANCEL_POLL_S = 0.2
CONNECT_RETRY_S = 0.005
DLPACK = int(np.__version__.split(".")[0]) >= 2
NO_DLPACK_KINDS = "OSU"  # object, bytes and str arrays: no DLPack form
USED_CAPSULE = ctypes.c_char_p(b"used_dltensor")  # kept for good: a capsule keeps the pointer to its name


class _Streams:
    """Where the markers of this stub's streams go, and the streams whose client has cancelled."""

    def __init__(self) -> None:
        self.workspace = ""
        self.cancelled: set[bytes] = set()


_STREAMS = _Streams()
_BYTES_INPUTS: dict[int, frozenset[str]] = {}  # by id() of the model config it was worked out from


def per_request_errors(wrap_response: Callable[..., Any]) -> Callable[..., Any]:
    """PyTriton's ``_wrap_response``, answering a response that carries ``ERROR_OUTPUT`` with that error."""

    @functools.wraps(wrap_response)
    def wrapped(response: Any, requested_outputs_names: Any, model_outputs_dict: Any) -> Any:
        if response.data is not None and ERROR_OUTPUT in response.data:
            message = response.data[ERROR_OUTPUT].item(0).decode("utf-8", "replace")
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
        return wrap_response(response, requested_outputs_names, model_outputs_dict)

    return wrapped


def use_workspace(workspace_path: pathlib.Path) -> None:
    """Put this stub's stream markers in the model's workspace."""
    _STREAMS.workspace = workspace_path.as_posix()


def marker(requests_id: bytes) -> str:
    """The marker path of one stream of this stub."""
    return f"{_STREAMS.workspace}/{os.getpid()}-{requests_id.hex()}.cancelled"


def add_markers(requests: list[Any], requests_id: bytes, model_config: dict[str, Any]) -> None:
    """Give each request of a decoupled model its stream's marker path, as parameter ``STREAM_PARAMETER``."""
    if not model_config.get("model_transaction_policy", {}).get("decoupled", False):
        return
    for request in requests:
        request.parameters = dict(request.parameters or {})
        request.parameters[STREAM_PARAMETER] = marker(requests_id)


def cancelled(triton_requests: list[Any], requests_id: bytes) -> bool:
    """Whether a client of this stream has cancelled it; the first time, create its marker."""
    if requests_id in _STREAMS.cancelled:
        return True
    if not any(request.is_cancelled() for request in triton_requests):
        return False
    _STREAMS.cancelled.add(requests_id)
    pathlib.Path(marker(requests_id)).touch()
    return True


async def next_response(responses_queue: asyncio.Queue, triton_requests: list[Any], requests_id: bytes) -> Any:
    """The next item of ``responses_queue``, checking for cancellation every ``CANCEL_POLL_S`` meanwhile."""
    while True:
        try:
            return await asyncio.wait_for(responses_queue.get(), CANCEL_POLL_S)
        except asyncio.TimeoutError:
            cancelled(triton_requests, requests_id)


def unless_cancelled(triton_responses: list[Any] | None, senders: int, requests_id: bytes) -> list[Any] | None:
    """``triton_responses``, or for a cancelled stream one cancellation error per sender."""
    if requests_id not in _STREAMS.cancelled:
        return triton_responses
    error = pb_utils.TritonError("the client cancelled the stream", pb_utils.TritonError.CANCELLED)
    return [pb_utils.InferenceResponse(error=error) for _ in range(senders)]


def stream_ended(requests_id: bytes) -> None:
    """Forget a stream that has ended, and remove its marker."""
    if requests_id in _STREAMS.cancelled:
        _STREAMS.cancelled.discard(requests_id)
        pathlib.Path(marker(requests_id)).unlink(missing_ok=True)


def output_tensor(name: str, array: np.ndarray) -> Any:
    """A response's output tensor: through DLPack under numpy 2, except bytes."""
    if not DLPACK or array.dtype.kind in NO_DLPACK_KINDS:
        return pb_utils.Tensor(name, array)
    capsule = np.require(array, requirements="CW").__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    ctypes.pythonapi.PyCapsule_SetName(ctypes.py_object(capsule), USED_CAPSULE)  # consumed: the tensor frees it
    return tensor


def input_array(input_tensor: Any, name: str, model_config: dict[str, Any]) -> np.ndarray:
    """A request's input as an array: through DLPack under numpy 2, except bytes (``TYPE_STRING``)."""
    if not DLPACK or name in bytes_inputs(model_config):
        return input_tensor.as_numpy()
    return np.from_dlpack(input_tensor)


def bytes_inputs(model_config: dict[str, Any]) -> frozenset[str]:
    """The names of the model's bytes inputs, worked out once per model config (a stub serves one model)."""
    names = _BYTES_INPUTS.get(id(model_config))
    if names is None:
        names = frozenset(spec["name"] for spec in model_config["input"] if spec["data_type"] == "TYPE_STRING")
        _BYTES_INPUTS[id(model_config)] = names
    return names


def connect(sock: socket.socket, socket_path: pathlib.Path, should_stop_before_s: float) -> None:
    """Connect to the handshake socket, retrying while it is bound but not yet listening, until the deadline."""
    while True:
        try:
            sock.connect(socket_path.as_posix())
            return
        except ConnectionRefusedError:
            if time.time() >= should_stop_before_s:
                raise
            time.sleep(CONNECT_RETRY_S)
