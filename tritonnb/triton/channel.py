"""The kernel's end of the short request path: Triton's python-backend stub to the notebook's function and back.

Each loaded generation of a model listens on a unix socket per version in its own workspace. Every stub instance
Triton starts for it (``stub/channel_model.py``) connects once to its version's socket, and a thread of the kernel's
serves that connection alone: it reads a batch, calls the handler and writes the answers back
(``stub/_tritonnb_wire.py`` says how they are framed). A request thus wakes one thread per direction and crosses no
queue, no second thread and no other process on the way.

Streams (decoupled models, any number of responses per request) still go through PyTriton's proxy
(``tritonnb.triton._pytriton.Generation``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tritonnb.errors import TritonnbError
from tritonnb.signature import TensorSpec
from tritonnb.triton._pytriton import ERROR_OUTPUT, LOGGER, STUB_MODULE, stub_file
from tritonnb.triton.stub import _tritonnb_wire as wire

__all__ = ["Channel", "ChannelGeneration", "ChannelStats", "Request", "channel_model_config", "channel_stats"]

Handler = Callable[[list["Request"]], list[dict[str, np.ndarray]]]
WIRE_MODULE = "_tritonnb_wire"
CLOSE_WAIT_S = 2.0  # how long retiring waits for a connection's thread to finish the batch it holds


@dataclasses.dataclass
class Request:
    """One request of a batch, as a handler gets it: its input arrays and its parameters."""

    data: dict[str, np.ndarray]
    parameters: dict[str, Any]


@dataclasses.dataclass
class ChannelStats:
    """What the channels of one model have served: batches, requests, and where their time went (nanoseconds)."""

    batches: int = 0
    requests: int = 0
    kernel_ns: int = 0  # from a batch read in full to its answers ready to send, the handler included
    stub_ns: int = 0  # inside the stubs' execute(), as they report it (one batch late)


_STATS: dict[str, ChannelStats] = {}
_STATS_LOCK = threading.Lock()


def channel_stats(model_name: str) -> ChannelStats | None:
    """A copy of what the channels of ``model_name`` have served in this process; None if none has."""
    with _STATS_LOCK:
        stats = _STATS.get(model_name)
        return None if stats is None else dataclasses.replace(stats)


def _record(model_name: str, requests: int, kernel_ns: int, stub_ns: int) -> None:
    with _STATS_LOCK:
        stats = _STATS.setdefault(model_name, ChannelStats())
        stats.batches += 1
        stats.requests += requests
        stats.kernel_ns += kernel_ns
        stats.stub_ns += stub_ns


class Channel:
    """Listens on ``socket_path``; each stub that connects gets a thread calling the next of ``handlers`` in turn."""

    def __init__(self, model_name: str, socket_path: pathlib.Path, handlers: Sequence[Handler]) -> None:
        self.model_name = model_name
        self.socket_path = socket_path
        self._handlers = list(handlers)
        self._connections: dict[socket.socket, threading.Thread] = {}  # open now, each with the thread serving it
        self._accepted = 0
        self._broken: str | None = None  # why a connection's thread ended other than by a close
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(socket_path.as_posix())
            self._listener.listen(16)
        except OSError:
            self._listener.close()
            raise
        self._acceptor = threading.Thread(target=self._accept, name=f"tritonnb-channel-{model_name}", daemon=True)
        self._acceptor.start()

    def is_alive(self) -> bool:
        """Whether the channel still serves: not closed, taking stubs, and no connection broken by a failure."""
        return not self._closed.is_set() and self._acceptor.is_alive() and self._broken is None

    @property
    def connected(self) -> int:
        """How many stubs are connected now."""
        return len(self._connections)

    def close(self) -> None:
        """Stop taking stubs, close every connection, and wait a moment for their threads to end."""
        with self._lock:
            self._closed.set()
            connections = dict(self._connections)
        for sock in [self._listener, *connections]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
        deadline = time.monotonic() + CLOSE_WAIT_S
        for thread in [self._acceptor, *connections.values()]:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()
        self.socket_path.unlink(missing_ok=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                if self._closed.is_set():  # accepted while closing: nobody serves it
                    connection.close()
                    return
                handler = self._handlers[self._accepted % len(self._handlers)]
                thread = threading.Thread(
                    target=self._serve,
                    args=(connection, handler),
                    name=f"tritonnb-channel-{self.model_name}-{self._accepted}",
                    daemon=True,
                )
                self._accepted += 1
                self._connections[connection] = thread
            thread.start()

    def _serve(self, connection: socket.socket, handler: Handler) -> None:
        """Answer one stub's batches until it disconnects or the channel closes; then close its connection.

        A frame that cannot be read whole (the stub died mid-frame, or no memory for it) ends the connection: the
        stream is out of step from there. Anything else wrong with a batch is answered as that batch's error.
        """
        try:
            while True:
                frame = wire.receive(connection)
                if frame is None:
                    return
                started = time.perf_counter_ns()
                header, body = frame
                reply = self._answer(handler, header, body)
                _record(
                    self.model_name,
                    len(header.get("requests", ())),
                    time.perf_counter_ns() - started,
                    header.get("stub_ns", 0),
                )
                wire.send(connection, *reply)
        except OSError:  # the stub went away, or the channel closed
            return
        except BaseException as error:  # e.g. MemoryError for a huge frame: this stub's requests fail from now on
            self._broken = f"{type(error).__name__}: {error}"
            LOGGER.exception("model %s: a channel to its stub broke", self.model_name)
        finally:
            with self._lock:
                self._connections.pop(connection, None)
            connection.close()

    def _answer(self, handler: Handler, header: dict[str, Any], body: memoryview) -> tuple[dict[str, Any], list[Any]]:
        """The reply frame: each request's outputs or error, or one error for the whole batch if it failed as one."""
        try:
            requests = [Request(inputs, parameters) for inputs, parameters in wire.read_requests(header, body)]
            responses = handler(requests)
            if len(responses) != len(requests):
                raise RuntimeError(f"{len(responses)} answers for {len(requests)} requests")
            return wire.responses_frame([_error_or_outputs(response) for response in responses])
        except BaseException as error:  # a user's sys.exit() included: the stub must hear back in any case
            if isinstance(error, TritonnbError):  # the handler has reported it (and its traceback) already
                return {"error": str(error)}, []
            LOGGER.exception("model %s: serving a batch failed", self.model_name)
            return {"error": f"model '{self.model_name}': {type(error).__name__}: {error}"}, []


def _error_or_outputs(response: dict[str, np.ndarray]) -> dict[str, np.ndarray] | str:
    error = response.get(ERROR_OUTPUT)
    return response if error is None else error.item(0).decode("utf-8", "replace")


def config_datatype(spec: TensorSpec) -> str:
    """The model config's data type of a tensor, e.g. ``TYPE_FP32`` (bytes are ``TYPE_STRING``)."""
    return "TYPE_STRING" if spec.triton_dtype == "BYTES" else f"TYPE_{spec.triton_dtype}"


def channel_model_config(
    name: str,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    batch_delay_us: int,
    instances: int,
    socket_paths: Mapping[int, pathlib.Path],
) -> dict[str, Any]:
    """The Triton model config of a generation whose versions are served through the channels at ``socket_paths``
    (by version number): Triton serves exactly those versions."""
    sockets = {str(version): path.as_posix() for version, path in sorted(socket_paths.items())}
    config: dict[str, Any] = {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [{"name": s.name, "data_type": config_datatype(s), "dims": list(s.dims)} for s in inputs],
        "output": [{"name": s.name, "data_type": config_datatype(s), "dims": list(s.dims)} for s in outputs],
        "instance_group": [{"count": instances, "kind": "KIND_CPU"}],
        "version_policy": {"specific": {"versions": sorted(socket_paths)}},
        "parameters": {wire.SOCKET_PARAMETER: {"string_value": json.dumps(sockets)}},
    }
    if max_batch_size > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": batch_delay_us}
    return config


class ChannelGeneration:
    """One loaded instance of a model served through channels, one per version: its workspace, sockets and Triton
    model config. ``handlers`` holds each version's handlers (one per model instance), by version number."""

    def __init__(
        self,
        name: str,
        handlers: Mapping[int, Sequence[Handler]],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        max_batch_size: int,
        batch_delay_us: int,
        workspace: pathlib.Path,
    ) -> None:
        self.workspace = workspace
        workspace.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.channels: dict[int, Channel] = {}
        try:
            for version, version_handlers in sorted(handlers.items()):
                self.channels[version] = Channel(name, workspace / f"v{version}.sock", version_handlers)
        except OSError:
            self.retire()
            raise
        instances = len(next(iter(handlers.values())))
        sockets = {version: channel.socket_path for version, channel in self.channels.items()}
        self._config = channel_model_config(name, inputs, outputs, max_batch_size, batch_delay_us, instances, sockets)

    def load_request(self) -> tuple[str, dict[str, bytes]]:
        """The model config (JSON) and files that Triton's load API takes: the same stub in every version folder."""
        stub = {
            "model.py": stub_file("channel_model.py"),
            f"{WIRE_MODULE}.py": stub_file(f"{WIRE_MODULE}.py"),
            f"{STUB_MODULE}.py": stub_file(),
        }
        files = {f"file:{version}/{name}": content for version in self.channels for name, content in stub.items()}
        return json.dumps(self._config), files

    def attach(self) -> None:
        """Nothing to do: each stub connected while Triton loaded it."""

    def is_alive(self) -> bool:
        """Whether every version's channel still takes stubs."""
        return all(channel.is_alive() for channel in self.channels.values())

    def unlink_shared_memory(self) -> None:
        """Nothing to do: a channel shares no memory."""

    def retire(self) -> None:
        """Close the channels and remove the workspace (after Triton has stopped routing to them)."""
        try:
            for channel in self.channels.values():
                channel.close()
        finally:
            shutil.rmtree(self.workspace, ignore_errors=True)
