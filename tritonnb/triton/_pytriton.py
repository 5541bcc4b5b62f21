"""The one place that touches PyTriton's private names (pinned to nvidia-pytriton 0.7.0).

These live here:
- ``ServerProcess``: PyTriton's ``Triton`` with tritonserver started in its own session (so "Interrupt kernel"
  cannot kill it), its output sent to a log sink instead of the user's cells, and the libpython fix.
- ``Generation``: one loaded instance of a stream (a decoupled model): its own workspace (own sockets), a PyTriton
  ``Model`` proxy whose handlers run in this process, loaded through Triton's model-control API and retired on its
  own. Every other model goes through ``tritonnb.triton.channel`` instead.
- Hooks into the stub files sent with each load, calling the helper module sent with them (``stub/``): a handshake
  that survives a loaded machine, per-request errors, stream cancellation, and DLPack under numpy 2.

``tests/test_pytriton_contract.py`` pins the private names used below, so an upgrade fails loudly there first.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import importlib.resources
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tritonnb.signature import TensorSpec
from tritonnb.triton.engine import require_pytriton, stub_environment

try:
    from pytriton.constants import PYTRITON_HOME as PYTRITON_HOME  # re-exported: triton.lifecycle reads it
    from pytriton.decorators import TritonContext
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.models.model import Model, ModelEvent
    from pytriton.proxy.data import TensorStore
    from pytriton.server.triton_server import TritonServer
    from pytriton.triton import (
        DEFAULT_PROTECTED_ENDPOINTS,
        TRITON_ACCESS_HEADER,
        Triton,
        TritonConfig,
        TritonLifecyclePolicy,
        TritonSecurityConfig,
    )
    from pytriton.utils.distribution import get_libs_path
    from pytriton.utils.workspace import Workspace
except ImportError:
    require_pytriton()  # raises EngineError naming the fix where PyTriton is missing
    raise

__all__ = [
    "DLPACK_PATCHES",
    "ERROR_OUTPUT",
    "ERROR_RESPONSE_PATCHES",
    "HANDSHAKE_PATCHES",
    "LOGGER",
    "MODEL_IMPORT_PATCHES",
    "NO_AUTO_COMPLETE",
    "NO_INFERENCE_IN_FLIGHT",
    "PRIVATE_ENDPOINTS",
    "PROXY_PATCHES",
    "PR_SET_PDEATHSIG",
    "PYTRITON_HOME",
    "SERVICE_STARTED",
    "SHM_FOLDER",
    "STREAM_PARAMETER",
    "STREAM_PATCHES",
    "STUB_IMPORT",
    "STUB_MODULE",
    "TENSOR_STORE_REGION",
    "TRITON_ACCESS_HEADER",
    "ExitHandler",
    "Generation",
    "LogSink",
    "Patch",
    "ServerProcess",
    "Stub",
    "TritonConfig",
    "error_response",
    "is_model_copy",
    "patched_file",
    "patched_proxy_files",
    "process_group",
    "process_running",
    "read_proc",
    "remove_shared_memory",
    "restricted_endpoints",
    "shared_memory_mapped_by",
    "stub_file",
    "stubs_among",
    "triton_config_fields",
    "triton_config_from_env",
    "tritonserver_args",
]

LOGGER = logging.getLogger("tritonnb")
LogSink = Callable[[str], None]
ExitHandler = Callable[[int], None]  # gets the exit code; negative: killed by that signal
PR_SET_PDEATHSIG = 1
# tritonserver logs this on SIGINT once no inference is in flight; from then on nothing is lost by ending it
NO_INFERENCE_IN_FLIGHT = "All models are stopped"
# tritonserver logs these once it listens on an endpoint: proof that the port answering is its own, not another
# server's that took the port first (two kernels starting at once), which a health check alone cannot tell apart
SERVICE_STARTED = {
    "grpc": "Started GRPCInferenceService at ",
    "http": "Started HTTPService at ",
    "metrics": "Started Metrics Service at ",
}
# Triton's auto-complete starts (and stops) an extra python backend stub per load just to ask a model.py that has
# nothing to add; PyTriton sends a complete config, so skipping it saves about 1.3 s per load on this machine. It stays
# on when a served model repository holds a model whose config relies on it.
NO_AUTO_COMPLETE = "--disable-auto-complete-config"
# Triton's API groups that private serving puts behind the access token too, beside PyTriton's default ones (model
# control, statistics, trace, logging, shared memory). Server health stays open: it says nothing about the models.
PRIVATE_ENDPOINTS = ("inference", "metadata", "model-config")


def restricted_endpoints(private: bool) -> list[str]:
    """The API groups (Triton's ``--http-restricted-api`` names) that need the server's access token."""
    return [*DEFAULT_PROTECTED_ENDPOINTS, *(PRIVATE_ENDPOINTS if private else ())]


def tritonserver_args(
    repositories: Sequence[str | os.PathLike[str]], auto_complete: bool, startup_models: Sequence[str] = ()
) -> list[str]:
    """tritonserver flags beyond PyTriton's: each model repository (besides PyTriton's empty one; a folder, or an
    object store URL Triton reads itself), the models to load as it starts (explicit model control loads none by
    itself), and auto-complete off unless asked for. Passed as separate arguments: PyTriton's own would split a
    path with spaces."""
    args = [arg for repository in repositories for arg in ("--model-repository", os.fspath(repository))]
    args += [arg for name in startup_models for arg in ("--load-model", name)]
    return args if auto_complete else [*args, NO_AUTO_COMPLETE]


@functools.cache
def _libc() -> ctypes.CDLL:
    """The C library, loaded in the parent: ``find_library`` runs ``ldconfig``, unsafe between fork and exec."""
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _DetachedTritonServer(TritonServer):
    """tritonserver in a session of its own, output to a sink, libpython of this interpreter first, fast stop."""

    graceful_stop = True  # ServerProcess.stop(graceful=False) turns it off for one stop

    def __init__(
        self,
        *,
        log_sink: LogSink,
        exit_timeout_s: float,
        on_unexpected_exit: ExitHandler,
        extra_args: Sequence[str] = (),
        stub_bin: pathlib.Path | None = None,
        environment: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(verbose=False, **kwargs)
        self._extra_args = tuple(extra_args)
        self._stub_bin = stub_bin
        self._environment = dict(environment or {})  # variables tritonserver needs beyond this process's
        self._log_sink = log_sink
        self._on_unexpected_exit = on_unexpected_exit
        self._exit_timeout_s = exit_timeout_s
        self._nothing_in_flight = threading.Event()
        self._stop_requested = False
        self.stopped_gracefully = False
        self.listening: set[str] = set()  # endpoints (see SERVICE_STARTED) this tritonserver has said it listens on
        self.model_copies: set[pathlib.Path] = set()  # seen while serving: still ours to remove after a crash
        self.stubs: dict[int, Stub] = {}  # the python backend stubs seen after the last load, by pid

    def start(self) -> None:
        """Start tritonserver like PyTriton does, plus ``_new_session=True`` and our log sink."""
        import sh

        if self.is_alive():
            raise RuntimeError(f"tritonserver already runs (pid {self._tritonserver_running_cmd.pid})")
        prctl = _libc().prctl  # looked up here: the hook below runs between fork and exec, where no lookup is safe

        def die_with_parent_thread() -> None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

        self._nothing_in_flight.clear()
        self._stop_requested = False
        self.listening = set()
        command = sh.Command(self._server_path.as_posix())
        self._tritonserver_running_cmd = command(
            *self._server_config.to_args_list(),
            *self._extra_args,
            _env=self._get_env(),
            _err_to_out=True,
            _out=self._record_logs,
            _out_bufsize=1,
            _err_bufsize=1,
            _bg=True,
            _bg_exc=False,
            _done=self._handle_exit,
            _preexec_fn=die_with_parent_thread,
            _new_session=True,
        )

    def stop(self) -> None:
        """SIGINT; once Triton says no inference is in flight, end its whole process group (stubs included).
        With ``graceful_stop`` off, it is ended at once, without waiting for requests in flight.

        Triton's own exit would then unload every model and poll once a second, which took 3-4 s for nothing. What
        the unload would have removed goes here instead: the stubs' shared memory, and the temporary folders Triton
        copied each loaded model's files to.
        """
        command = self._tritonserver_running_cmd
        if command is None:
            return
        self._stop_requested = True
        if self.graceful_stop and self.is_alive():
            command.process.signal(signal.SIGINT)
            self.stopped_gracefully = self._nothing_in_flight.wait(self._exit_timeout_s + 1)
        members = process_group(command.pid)  # tritonserver leads its own process group
        regions = shared_memory_mapped_by(members)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)  # also when it died by itself: its stubs may linger
        with contextlib.suppress(Exception):
            command.wait(timeout=10)
        for region in regions:
            region.unlink(missing_ok=True)
        for folder in self.model_copies:  # every load was noted: this covers the stubs that died before us too
            shutil.rmtree(folder, ignore_errors=True)

    def remember_stubs(self) -> None:
        """Note the stubs running now (after a load): their model-file folders, so that a stop after a crash, when
        the stubs are gone, can still remove them; and their pids, to notice a stub that dies."""
        command = self._tritonserver_running_cmd
        if command is not None:
            self.stubs = stubs_among(process_group(command.pid))
            serving = {stub.folder for stub in self.stubs.values() if stub.folder is not None}
            # a copy Triton removed when it unloaded an older generation is forgotten, or a kernel that reloads
            # for days would keep one path per reload
            self.model_copies = {folder for folder in self.model_copies if folder.exists()} | serving

    def live_stubs(self) -> collections.Counter[str]:
        """How many of the remembered stubs still run, by model name."""
        return collections.Counter(stub.model for pid, stub in list(self.stubs.items()) if process_running(pid))

    def _handle_exit(self, command: Any, success: bool, exit_code: int) -> None:
        """PyTriton's exit handler (which also ends the stubs, through ``stop``), then ours for an exit nobody asked
        for; an exit we asked for (SIGKILL after SIGINT) is no failure worth a warning."""
        unexpected = not self._stop_requested
        handle = functools.partial(super()._handle_exit, command, success or self._stop_requested, exit_code)
        try:
            _on_a_thread_of_its_own(handle)
        finally:
            if unexpected:
                self._on_unexpected_exit(exit_code)

    def _record_logs(self, line: bytes | str) -> None:
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        if NO_INFERENCE_IN_FLIGHT in line:
            self._nothing_in_flight.set()
        for endpoint, started in SERVICE_STARTED.items():
            if started in line:
                self.listening.add(endpoint)
        self._log_sink(line)

    def _get_env(self) -> dict:
        env = super()._get_env()
        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir:  # the python backend stub must find this interpreter's libpython, not the distro's
            env["LD_LIBRARY_PATH"] = f"{libdir}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        if self._stub_bin is not None:  # under numpy 2, the stub's Python: a numpy 1 of its own (triton.engine)
            env["PATH"] = f"{self._stub_bin}:{env['PATH']}"
        env.update(self._environment)
        return env


def _on_a_thread_of_its_own(work: Callable[[], None]) -> None:
    """Run ``work`` on a short-lived thread and destroy that thread's gevent hub afterwards.

    PyTriton's exit handler creates a ``tritonclient.http`` client (gevent underneath) on whichever thread ``sh``
    happens to call it from: its hub, an epoll and an eventfd, would otherwise stay with that thread, two file
    descriptors per crash, or be shared with a client the user's thread holds.
    """

    pending = [work]  # taken out before the call: gevent's hub keeps this frame (and what it holds) after destroy()

    def run() -> None:
        try:
            pending.pop()()
        finally:
            hub_local = sys.modules.get("gevent._hub_local")
            hub = hub_local.get_hub_if_exists() if hub_local is not None else None
            if hub is not None:
                hub.destroy(destroy_loop=True)

    thread = threading.Thread(target=run, name="tritonnb-exit-handler", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # at interpreter shutdown no thread may start: run it here
        work()
        return
    thread.join()


class ServerProcess(Triton):
    """PyTriton's ``Triton`` with the detached, quiet tritonserver above. Models are loaded by ``Generation``, and
    the models of ``repositories`` by name through the same model-control API (tritonserver loads none by itself).

    PyTriton's own ``model_repository`` option would replace its (empty) repository with one folder and have
    tritonserver load every model in it at start (``--load-model=*``), where one model that fails ends tritonserver.
    Models bound through PyTriton are never written to any repository: their config and files go with each load
    request, and Triton writes them to a temporary folder of its own.
    """

    def __init__(
        self,
        config: TritonConfig,
        workspace: pathlib.Path,
        log_sink: LogSink,
        on_unexpected_exit: ExitHandler,
        repositories: Sequence[str | os.PathLike[str]] = (),
        auto_complete: bool = False,
        startup_models: Sequence[str] = (),
        environment: Mapping[str, str] | None = None,
        private: bool = False,
    ) -> None:
        require_pytriton()  # the version this module patches
        self._log_sink = log_sink
        self._on_unexpected_exit = on_unexpected_exit
        self._extra_args = tritonserver_args(repositories, auto_complete, startup_models)
        self._environment = dict(environment or {})
        super().__init__(
            config=config,
            workspace=workspace,
            triton_lifecycle_policy=TritonLifecyclePolicy(launch_triton_on_startup=True, local_model_store=False),
            # a new token for each process; ``private`` puts inference, metadata and model config behind it too
            security_config=TritonSecurityConfig(restricted_endpoints=restricted_endpoints(private)),
        )

    def _initialize_server(self) -> None:
        path = self._prepare_triton_inference_server()
        exit_timeout = self._triton_server_config["exit_timeout_secs"]  # Triton waits 30 s when unset
        self._triton_server_config["load-model"] = None  # PyTriton's "*": models are loaded one by one, after start
        self._triton_server = _DetachedTritonServer(
            path=(path / "bin" / "tritonserver").as_posix(),
            libs_path=get_libs_path(),
            config=self._triton_server_config,
            log_sink=self._log_sink,
            exit_timeout_s=float(30 if exit_timeout is None else exit_timeout),
            on_unexpected_exit=self._on_unexpected_exit,
            extra_args=self._extra_args,
            stub_bin=stub_environment(self._workspace.path / "stub-env"),
            environment=self._environment,
        )

    def stop(self, graceful: bool = True) -> bool:
        """PyTriton's stop; ``graceful=False`` ends tritonserver without waiting for requests in flight."""
        if self._triton_server is not None:
            self._triton_server.graceful_stop = graceful
        return super().stop()

    def launch(self) -> None:
        """Start tritonserver in the background; the caller waits for readiness."""
        self._run_server()

    @property
    def pid(self) -> int | None:
        """The tritonserver process id, while it runs."""
        server = self._triton_server
        cmd = server._tritonserver_running_cmd if server is not None else None
        return cmd.pid if cmd is not None else None

    @property
    def shm_prefix(self) -> str:
        """The prefix of the python backend's shared-memory regions in ``/dev/shm``."""
        return self._python_backend_config["shm-region-prefix-name"]

    def remember_stubs(self) -> None:
        """See ``_DetachedTritonServer.remember_stubs``."""
        if self._triton_server is not None:
            self._triton_server.remember_stubs()

    @property
    def model_copies(self) -> set[pathlib.Path]:
        """The temporary model-file folders of every stub seen so far."""
        return self._triton_server.model_copies if self._triton_server is not None else set()

    def live_stubs(self) -> collections.Counter[str]:
        """See ``_DetachedTritonServer.live_stubs``."""
        return self._triton_server.live_stubs() if self._triton_server is not None else collections.Counter()

    def remove_shared_memory(self) -> list[str]:
        """Unlink the python backend's shared-memory regions a killed tritonserver could not remove itself."""
        return remove_shared_memory(self.shm_prefix)

    @property
    def stopped_gracefully(self) -> bool:
        """Whether the last stop saw Triton report that no inference was in flight before ending it."""
        return self._triton_server is not None and self._triton_server.stopped_gracefully

    @property
    def listening(self) -> set[str]:
        """The endpoints (``http``, ``grpc``, ``metrics``) tritonserver has said it listens on."""
        return self._triton_server.listening if self._triton_server is not None else set()

    def process_alive(self) -> bool:
        """Whether the tritonserver process is running."""
        return self._is_alive_impl()


SHM_FOLDER = pathlib.Path("/dev/shm")
TENSOR_STORE_REGION = f"{SHM_FOLDER}/psm_"  # PyTriton's tensor store: multiprocessing.shared_memory segments


def process_group(pgid: int) -> list[int]:
    """The ids of the processes in process group ``pgid`` (from /proc)."""
    members = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = read_proc(entry.name, "stat").decode(errors="replace")
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # pid (comm) state ppid pgrp ...
                members.append(int(entry.name))
    return members


def read_proc(pid: int | str, name: str) -> bytes:
    """``/proc/<pid>/<name>``; OSError when the process is gone.

    Read with a plain ``open``: ``pathlib`` interns every part of a path, and a new pid each time is an insertion
    into (and a removal from) CPython's table of interned strings. Scanning /proc on every load and polling the
    stubs once a second filled that table until it doubled, a step of 1.8 MiB in the kernel's memory."""
    with open(f"/proc/{pid}/{name}", "rb") as file:
        return file.read()


@dataclasses.dataclass(frozen=True)
class Stub:
    """A python backend stub process: the model it serves, and the temporary folder (``<tmp>/folderXXXXXX``) that
    Triton copied that model's files to (it removes the folder on unload; None if elsewhere)."""

    model: str
    folder: pathlib.Path | None


def stubs_among(pids: Sequence[int]) -> dict[int, Stub]:
    """The python backend stubs among these processes, by pid (from their command lines)."""
    stubs = {}
    for pid in pids:
        try:
            argv = read_proc(pid, "cmdline").decode(errors="replace").split("\0")
        except OSError:
            continue
        # stub <folder>/<version>/model.py <shm region> <sizes...> <parent pid> <backend dir> <...> <instance> <...>
        if len(argv) > 8 and argv[0].endswith("triton_python_backend_stub"):
            folder = pathlib.Path(argv[1]).parent.parent
            model = argv[8].rsplit("_", 2)[0]  # instances are named <model>_<group>_<index>
            stubs[pid] = Stub(model, folder if is_model_copy(folder) else None)
    return stubs


def is_model_copy(folder: pathlib.Path) -> bool:
    """Whether ``folder`` is named like the temporary copy Triton makes of a loaded model's files."""
    return folder.parent == pathlib.Path(tempfile.gettempdir()) and folder.name.startswith("folder")


def process_running(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = read_proc(pid, "stat").decode(errors="replace")
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def shared_memory_mapped_by(pids: Sequence[int]) -> set[pathlib.Path]:
    """The tensor-store segments in /dev/shm that these processes have mapped."""
    regions = set()
    for pid in pids:
        try:
            maps = read_proc(pid, "maps").decode(errors="replace")
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(TENSOR_STORE_REGION):
                regions.add(pathlib.Path(fields[5].removesuffix(" (deleted)")))
    return regions


def remove_shared_memory(prefix: str) -> list[str]:
    """Unlink ``/dev/shm/<prefix>*`` (PyTriton names the python backend's regions ``pytrtion<pid>-<hex>...``)."""
    removed = []
    for path in SHM_FOLDER.glob(f"{prefix}*") if prefix and SHM_FOLDER.is_dir() else ():
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def triton_config_fields() -> set[str]:
    """The option names ``TritonConfig`` (and so ``tritonnb.start``) accepts."""
    return set(TritonConfig.__dataclass_fields__)


def triton_config_from_env() -> dict[str, Any]:
    """``PYTRITON_TRITON_CONFIG_*`` settings, as PyTriton reads them (unset fields left out)."""
    return {k: v for k, v in TritonConfig.from_env().to_dict().items() if v is not None}


# The stub-side helper module, sent beside PyTriton's model.py with each load and imported by the copies of PyTriton's
# stub files sent with it (the stub imports model.py as ``<version>.model``, so its siblings import relatively). Each
# patch below is a hook into it, anchored on PyTriton 0.7.0's exact text: (old, new), old found exactly once.
STUB_MODULE = "_tritonnb_stub"
STUB_IMPORT = f"from . import {STUB_MODULE}\n"
Patch = tuple[str, str]

# PyTriton's stub-side handshake: a second model instance, loaded in parallel with the first, may find the first's
# socket file bound but not yet listening (ConnectionRefusedError), and gives up after 1 s, which a loaded machine
# can exceed. The copy of communication.py sent to Triton retries the connection, within a longer deadline.
HANDSHAKE_PATCHES: tuple[Patch, ...] = (
    (
        "import zmq.asyncio  # pytype: disable=import-error\n",
        f"import zmq.asyncio  # pytype: disable=import-error\n\n{STUB_IMPORT}",
    ),
    (
        "def get_config_from_handshake_server(socket_path: pathlib.Path, timeout_s: float = 1.0) -> dict:",
        "def get_config_from_handshake_server(\n"
        "    socket_path: pathlib.Path, timeout_s: float = _tritonnb_stub.HANDSHAKE_TIMEOUT_S\n"
        ") -> dict:",
    ),
    (
        "        sock.connect(socket_path.as_posix())\n",
        "        _tritonnb_stub.connect(sock, socket_path, should_stop_before_s)\n",
    ),
)

MODEL_IMPORT_PATCHES: tuple[Patch, ...] = (
    ("from . import communication, data\n", f"from . import {STUB_MODULE}, communication, data\n"),
)

# A response that carries only this output is sent to its own client as an error; the other requests of the same
# batch get their results. PyTriton fails a whole batch when the callable raises; the stub's ``_wrap_response`` in the
# copy of model.py sent to Triton is decorated to turn this output into that request's error instead.
ERROR_OUTPUT = "__tritonnb_error__"
ERROR_RESPONSE_PATCHES: tuple[Patch, ...] = (
    (
        "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n",
        "@_tritonnb_stub.per_request_errors\n"
        "def _wrap_response(response: Response, requested_outputs_names, model_outputs_dict):\n",
    ),
)

# Streams (decoupled models). Triton marks a request cancelled when its gRPC client cancels the stream or goes away;
# only the stub can ask (``request.is_cancelled()``), and PyTriton has no way back to the kernel that runs the
# generator. The copy of model.py sent to Triton gives each request of a decoupled model a marker path (the parameter
# STREAM_PARAMETER, which the kernel sees); while it streams, the stub checks for cancellation on each response and
# every 0.2 s, then creates that file once, sends nothing more, ends the request as cancelled and removes the
# file when the stream is over. The kernel checks for the file before each step of the generator and closes it (see
# ``tritonnb.serving.streaming``).
STREAM_PARAMETER = "tritonnb-cancel-marker"
STREAM_PATCHES: tuple[Patch, ...] = (
    (
        "            self._tracable_model = TracableModel()\n",
        "            _tritonnb_stub.use_workspace(workspace_path)\n"
        "            self._tracable_model = TracableModel()\n",
    ),
    (
        "        requests_payload = self._serializer_deserializer.serialize_requests(requests)\n",
        "        _tritonnb_stub.add_markers(requests, requests_id, self._model_config)\n"
        "        requests_payload = self._serializer_deserializer.serialize_requests(requests)\n",
    ),
    (
        "            try:\n                flags, responses_payload = await responses_queue.get()\n\n",
        "            try:\n"
        "                flags, responses_payload = await _tritonnb_stub.next_response(\n"
        "                    responses_queue, triton_requests, requests_id\n"
        "                )\n\n",
    ),
    (
        "                triton_flags = 0\n                if eos:\n",
        "                if _tritonnb_stub.cancelled(triton_requests, requests_id) and not eos:\n"
        "                    continue\n"
        "                triton_responses = _tritonnb_stub.unless_cancelled(\n"
        "                    triton_responses, len(triton_senders), requests_id\n"
        "                )\n"
        "                triton_flags = 0\n                if eos:\n",
    ),
    (
        "        self._requests_map.pop(requests_id)\n        responses_future.set_result(None)\n",
        "        _tritonnb_stub.stream_ended(requests_id)\n"
        "        self._requests_map.pop(requests_id)\n        responses_future.set_result(None)\n",
    ),
)

# numpy 2. The stub (C++, built with pybind11 2.10 against numpy 1) makes its numpy arrays through numpy 1's C API
# and, under numpy 2, reads every dtype's item size as 0 (numpy 2 moved that field of PyArray_Descr): inputs arrive
# as copies of their first element and outputs fail with "output tensor shape does not match size". DLPack does not
# go through that ABI, so where the stub's Python has numpy 2, the copy of model.py sent to Triton moves numeric
# tensors through it, both ways. Under numpy 1 the stub keeps its own path (its DLPack export names the capsule
# "used_dlpack", which numpy 1's deleter rejects). Bytes have no DLPack form: see ``tritonnb.triton.engine``.
DLPACK_PATCHES: tuple[Patch, ...] = (
    (
        "                request[input_name] = input_tensor.as_numpy()\n",
        "                request[input_name] = "
        "_tritonnb_stub.input_array(input_tensor, input_name, self._model_config)\n",
    ),
    ("                pb_utils.Tensor(name, value)\n", "                _tritonnb_stub.output_tensor(name, value)\n"),
)
PROXY_PATCHES: dict[str, tuple[Patch, ...]] = {
    "communication.py": HANDSHAKE_PATCHES,
    "model.py": MODEL_IMPORT_PATCHES + ERROR_RESPONSE_PATCHES + STREAM_PATCHES + DLPACK_PATCHES,
}


def error_response(message: str) -> dict[str, np.ndarray]:
    """The response that fails one request of a batch with ``message`` (see ``ERROR_OUTPUT``)."""
    return {ERROR_OUTPUT: np.array([message.encode("utf-8", "replace")], dtype=object)}


def stub_file(name: str = f"{STUB_MODULE}.py") -> bytes:
    """A file of ``tritonnb/triton/stub``, as sent to Triton (by default the stub-side helper module)."""
    return (importlib.resources.files("tritonnb.triton") / "stub" / name).read_bytes()


def patched_file(key: str, content: bytes) -> bytes:
    """One of PyTriton's stub files with its ``PROXY_PATCHES`` applied."""
    text = content.decode()
    for old, new in PROXY_PATCHES.get(key.rsplit("/", 1)[-1], ()):
        if text.count(old) != 1:
            raise RuntimeError(f"PyTriton's {key} changed: cannot apply {old.strip()!r}")
        text = text.replace(old, new)
    return text.encode()


def patched_proxy_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """PyTriton's stub files with ``PROXY_PATCHES`` applied, and the helper module beside each ``model.py``."""
    patched = {key: patched_file(key, content) for key, content in files.items()}
    for key in files:
        folder, _, name = key.rpartition("/")
        if name == "model.py":
            patched[f"{folder}/{STUB_MODULE}.py"] = stub_file()
    return patched


def _pytriton_tensor(spec: TensorSpec) -> Tensor:
    return Tensor(name=spec.name, dtype=spec.numpy_dtype, shape=spec.dims)


class Generation:
    """One loaded instance of a stream (a decoupled model: any number of responses per request), with its own
    workspace, proxy threads and Triton model config. Every other model goes through ``tritonnb.triton.channel``."""

    def __init__(
        self,
        name: str,
        handlers: Sequence[Callable[[list], list]],
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        max_batch_size: int,
        batch_delay_us: int,
        workspace: pathlib.Path,
    ) -> None:
        batching = max_batch_size > 0
        config = ModelConfig(
            batching=batching,
            max_batch_size=max_batch_size,
            batcher=DynamicBatcher(max_queue_delay_microseconds=batch_delay_us),
            decoupled=True,
        )
        self.workspace = Workspace(workspace)
        self.model = Model(
            model_name=name,
            model_version=1,
            inference_fn=list(handlers),
            inputs=[_pytriton_tensor(s) for s in inputs],
            outputs=[_pytriton_tensor(s) for s in outputs],
            config=config,
            workspace=self.workspace,
            triton_context=TritonContext(),
            strict=False,
        )
        self.model.on_model_event(self._on_event)

    def load_request(self) -> tuple[str, dict[str, bytes]]:
        """The model config (JSON) and proxy files that Triton's load API takes."""
        return json.dumps(self.model.get_model_config()), patched_proxy_files(self.model.get_proxy_model_files())

    def attach(self) -> None:
        """Connect this process's handlers to the stub Triton has just loaded."""
        self.model.setup()

    def is_alive(self) -> bool:
        """Whether the proxy threads of this generation are running."""
        return self.model.is_alive()

    def unlink_shared_memory(self) -> None:
        """Unlink the tensor-store segments this process mapped for this generation: for after its stubs died
        without unlinking them (killed by a stop, or a crash). The mappings stay valid until ``retire``."""
        prefix = self.workspace.path.as_posix()
        for address, store in list(TensorStore._instances.items()):
            if str(address).startswith(prefix):
                for name in list(getattr(store, "_shm_segments", {})):
                    (SHM_FOLDER / name).unlink(missing_ok=True)

    def retire(self) -> None:
        """Stop the proxy threads and free the workspace (after Triton has stopped routing to it)."""
        try:
            self.model.clean()
        finally:
            prefix = self.workspace.path.as_posix()
            for address in [a for a in list(TensorStore._instances) if str(a).startswith(prefix)]:
                TensorStore._instances.pop(address, None)
            shutil.rmtree(self.workspace.path, ignore_errors=True)

    def _on_event(self, model: Model, event: ModelEvent, context: Any = None) -> None:
        LOGGER.warning("model %s: %s %s", model.model_name, event.value, context or "")
