"""tritonnb's python-backend model: hands each batch to the kernel that serves it, over one unix socket.

Sent to Triton as a model's ``model.py`` with ``_tritonnb_wire.py`` (the frame format) and ``_tritonnb_stub.py``
(DLPack under numpy 2, the patient connect) beside it. One stub instance, one connection, one thread: a batch goes
out as one frame, and its answers come back as one, with no hand-off between threads on this side.
"""

from __future__ import annotations

import functools
import json
import pathlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import triton_python_backend_utils as pb_utils

from . import _tritonnb_stub as stub
from . import _tritonnb_wire as wire


class TritonPythonModel:
    """Relays batches to the kernel's channel of its version, named in the model config's ``tritonnb-channel``
    parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        """Connect to the kernel's socket."""
        self.config = json.loads(args["model_config"])
        self.name = args["model_name"]
        self.input_names = [spec["name"] for spec in self.config["input"]]
        sockets = json.loads(self.config["parameters"][wire.SOCKET_PARAMETER]["string_value"])
        path = pathlib.Path(sockets[args["model_version"]])  # each version has a channel of its own
        self.sock: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stub.connect(self.sock, path, time.time() + stub.HANDSHAKE_TIMEOUT_S)
        self.stub_ns = 0  # time spent in the previous execute(), reported with the next batch

    def execute(self, requests: list[Any]) -> list[Any]:
        """Send the batch to the kernel and answer each request with what came back."""
        started = time.perf_counter_ns()
        batch = []
        for request in requests:
            inputs = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    inputs[name] = stub.input_array(tensor, name, self.config)
            parameters = request.parameters()
            batch.append((inputs, json.loads(parameters) if parameters not in ("", "{}") else {}))
        header, buffers = wire.requests_frame(batch, self.stub_ns)
        reply = None
        if self.sock is not None:
            try:
                wire.send(self.sock, header, buffers)
                reply = wire.receive(self.sock)
            except BaseException:  # out of step with the kernel from here: fail fast from now on
                reply = None
            if reply is None:
                self.sock.close()
                self.sock = None
        if reply is None:
            return failed_batch(
                f"the kernel serving model '{self.name}' closed this instance's connection: the model was reloaded "
                "or unbound, or its kernel stopped"
            )
        header, body = reply
        if "error" in header:
            return failed_batch(header["error"])
        answers = wire.read_responses(header, body)
        if len(answers) != len(requests):
            return failed_batch(
                f"the kernel sent {len(answers)} answers for {len(requests)} requests of model '{self.name}'"
            )
        responses = [_response(answer) for answer in answers]
        self.stub_ns = time.perf_counter_ns() - started
        return responses

    def finalize(self) -> None:
        """Close the connection (the kernel's thread for it ends)."""
        if self.sock is not None:
            self.sock.close()


class ModelError(Exception):
    """A batch that failed as a whole: its name and message are the error's whole text."""


def failed_batch(message: str) -> list:
    """What ``execute()`` returns to fail the whole batch with ``message`` alone, counted as failed by Triton.

    Raising in ``execute()`` would do the same, but the stub then sends the exception's traceback with it (``At:``
    and this file's path in Triton's temporary folder), and Triton puts that in every client's error body. An
    exception raised by C code carries no traceback: the stub takes ``len()`` of what ``execute()`` returned, and
    this list's ``__len__`` is a finished generator's ``throw``, which raises ``ModelError(message)`` in C.
    """

    def finished() -> Iterator[None]:
        yield

    generator = finished()
    generator.close()
    raise_it = functools.partial(generator.throw, ModelError(message))  # not a method: called without arguments
    return type("FailedBatch", (list,), {"__len__": raise_it})()


def _response(answer: dict[str, Any] | str) -> Any:
    """A request's response: its outputs, or the error that fails it alone."""
    if isinstance(answer, str):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(answer))
    return pb_utils.InferenceResponse(output_tensors=[stub.output_tensor(name, a) for name, a in answer.items()])
