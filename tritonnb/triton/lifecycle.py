"""The lifecycle of this kernel's tritonserver: start, stop, restart, and relaunch after a crash.

``TritonServer`` knows the process, its folders, ports, log and supervisor, and nothing of the models served on it:
``tritonnb.serving.server.Server`` builds on it and fills in the hooks (``_before_end_process``, ``_before_stop``,
``_after_stop``, ``_serve_again``, ``_heal``) with what its models need.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from tritonnb.errors import BindError, NoServerError, PortBusyError, ServerStartError
from tritonnb.http_get import answers_ok, get_json, token_headers
from tritonnb.states import ServerState
from tritonnb.triton import process_exit
from tritonnb.triton._pytriton import PYTRITON_HOME, ServerProcess, TritonConfig
from tritonnb.triton.browser_route import BrowserRoute, RouteProbe
from tritonnb.triton.leftovers import record_owner, remove_leftovers
from tritonnb.triton.logs import ServerLog
from tritonnb.triton.memory import trim_heap
from tritonnb.triton.model_control import ModelControl
from tritonnb.triton.object_store import StorePath
from tritonnb.triton.repository import needs_auto_complete
from tritonnb.triton.settings import ServerSettings
from tritonnb.triton.supervisor import Supervisor

__all__ = ["EXIT_WAIT_S", "HOME_PREFIX", "STARTUP_TIMEOUT_S", "VERTEX_AI_PLACEHOLDER", "TritonServer"]

STARTUP_TIMEOUT_S = 120.0
EXIT_WAIT_S = 2.0  # when the process ends, how long a stop waits for a recovery in progress (Jupyter: 2.5 s)
HOME_PREFIX = "tritonnb-"  # folders are named tritonnb-<pid>-<random>, so leftovers of dead processes can be found
# Vertex AI's predict route needs its model loaded when tritonserver starts: until the notebook binds a model of that
# name (which replaces this one), this stands in for it, and answers that it is not bound yet
VERTEX_AI_PLACEHOLDER = """import triton_python_backend_utils as pb_utils

MESSAGE = "model {name!r} is not served yet: run its cell (tritonnb serves it on Vertex AI's predict route then)"


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse(error=pb_utils.TritonError(MESSAGE)) for _ in requests]
"""


class TritonServer:
    """A background tritonserver owned by this process.

    If tritonserver exits without being asked (OOM killer, a crash, a stray kill), it is started again on the same
    ports and ``_serve_again`` runs, unless ``restart_on_crash`` is False (see ``tritonnb.triton.supervisor``).
    """

    def __init__(
        self, settings: ServerSettings, restart_on_crash: bool = True, public_url: tuple[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.public_url = public_url  # (URL, where it came from): where a browser reaches the HTTP port, if given
        # probed in the background while tritonserver starts: a Jupyter server's proxy can take a request to answer
        self._route_probe = RouteProbe(settings.port("http"), settings.port("metrics"), public_url)
        remove_leftovers(PYTRITON_HOME, HOME_PREFIX)
        self.home = PYTRITON_HOME / f"{HOME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.home.mkdir(parents=True)
        record_owner(self.home)
        self.sockets = _socket_root(self.home)
        self.log = ServerLog(self.home / "tritonserver.log")
        self.log.capture_python_logging()
        self.version = ""
        self.started_at = 0.0
        self.control = ModelControl(self.grpc_url.removeprefix("grpc://"), self.http_url, lambda: self.access_token)
        self._process: ServerProcess | None = None
        self._stopped = False
        self._finishing: threading.Thread | None = None
        self._lifecycle = threading.RLock()  # one of start, bind, unbind, restart, recovery or stop at a time
        process_exit.register(self._stop_at_exit)
        self.supervisor = Supervisor(
            self._recover,
            self._is_down,
            lambda: self.log.tail(15),
            self.log.write,
            self._heal,
            enabled=restart_on_crash,
        )

    def _start(self) -> None:
        """Launch tritonserver and start watching it; stops everything again if the launch fails."""
        try:
            with self._lifecycle:
                self._launch()
        except BaseException:
            self.stop()
            raise
        self.supervisor.watch()

    # -- endpoints -------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """Base URL of the HTTP/REST endpoint, e.g. ``http://127.0.0.1:8000``."""
        return f"http://{self.settings.url_host('http')}:{self.settings.port('http')}"

    @property
    def grpc_url(self) -> str:
        """gRPC target, e.g. ``grpc://127.0.0.1:8001`` (tritonclient takes the part after ``grpc://``)."""
        return f"grpc://{self.settings.url_host('grpc')}:{self.settings.port('grpc')}"

    @property
    def metrics_url(self) -> str:
        """Prometheus metrics URL."""
        return f"http://{self.settings.url_host('metrics')}:{self.settings.port('metrics')}/metrics"

    @property
    def browser_route(self) -> BrowserRoute:
        """How a browser reaches this server (``--public-url``, ``$TRITONNB_PUBLIC_URL`` or jupyter-server-proxy);
        found once, in the background from the moment the server is created, as the ports never change."""
        return self._route_probe.result()

    @property
    def access_token(self) -> str:
        """The token that Triton's repository, statistics, trace and logging endpoints require, and, when the
        server is private (``settings.private``), inference, metadata and model config too. New on each start."""
        assert self._process is not None
        return self._process.get_access_token()

    @property
    def private(self) -> bool:
        """Whether inference, metadata and model config need the access token (``tritonnb.start(private=...)``)."""
        return self.settings.private

    def auth_headers(self, grpc: bool = False) -> dict[str, str]:
        """The header carrying the current access token, for HTTP (or, ``grpc``, as gRPC metadata)."""
        return token_headers(self.access_token, grpc)

    @property
    def pid(self) -> int | None:
        """tritonserver's process id while it runs."""
        return self._process.pid if self._process else None

    # -- state -----------------------------------------------------------------------------------------
    @property
    def state(self) -> ServerState:
        """READY, RECOVERING (restarting after a crash), DOWN (tritonserver died) or STOPPED."""
        if self._stopped:
            return ServerState.STOPPED
        if self.supervisor.recovering:
            return ServerState.RECOVERING
        alive = self._process is not None and self._process.process_alive()
        return ServerState.READY if alive else ServerState.DOWN

    @property
    def uptime_s(self) -> float:
        """Seconds since tritonserver became ready."""
        return time.monotonic() - self.started_at if self.state == ServerState.READY else 0.0

    def recovery_summary(self) -> str:
        """What crash recovery did last, in one line (empty if nothing)."""
        return self.supervisor.summary()

    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of tritonserver's log (with tritonnb's messages and model tracebacks)."""
        return self.log.tail(lines)

    def _check_ready(self) -> None:
        """NoServerError unless the server is READY."""
        if self.state != ServerState.READY:
            raise NoServerError(f"the server is {self.state}; run %triton restart (or tritonnb.restart())")

    # -- launching -------------------------------------------------------------------------------------
    def _launch(self) -> None:
        self.log.write(f"[tritonnb] starting tritonserver with {json.dumps(self.settings.config, default=str)}")
        workspace = self.home / f"triton-{secrets.token_hex(2)}"
        auto_complete = needs_auto_complete(self.settings.repositories)
        if auto_complete:
            self.log.write("[tritonnb] a repository model's config relies on Triton's auto-complete: it stays on")
        locations, environment = self._triton_repositories()
        startup_models: list[str] = []
        vertex_ai = self.settings.vertex_ai
        if vertex_ai is not None:  # its predict route's model must be loaded as tritonserver starts
            environment.update(vertex_ai.environment())
            startup_models.append(vertex_ai.default_model)
            if not vertex_ai.from_repository:
                locations.append(_vertex_ai_placeholder(self.home / "vertex-ai", vertex_ai.default_model))
        launch: dict[str, Any] = {}  # only what this launch needs
        if startup_models:
            launch["startup_models"] = startup_models
        if environment:
            launch["environment"] = environment
        if self.settings.private:
            launch["private"] = True
        self._process = ServerProcess(
            TritonConfig(**self.settings.config),
            workspace,
            self.log.write,
            self.supervisor.notice_exit,
            locations,
            auto_complete,
            **launch,
        )
        record_owner(self.home, self._process.shm_prefix)  # so a later start can clean up after a kill -9
        self._process.launch()
        _import_torch()  # every bind needs torch: import it while tritonserver starts, not after
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._all_endpoints_answer():
            if not self._process.process_alive():
                tail = self.log.tail(15)
                if "already in use" in tail:
                    raise PortBusyError(f"a port was taken while tritonserver started. Last log lines:\n{tail}")
                raise ServerStartError(f"tritonserver exited during start-up. Last log lines:\n{tail}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"tritonserver not ready after {STARTUP_TIMEOUT_S:.0f} s:\n{self.log.tail(15)}")
            time.sleep(0.02)
        self.started_at = time.monotonic()
        with contextlib.suppress(Exception):
            self.version = get_json(f"{self.http_url}/v2", self.auth_headers())["version"]  # metadata: private

    def _triton_repositories(self) -> tuple[list[str | pathlib.Path], dict[str, str]]:
        """Where tritonserver finds each served repository, and the variables it needs to read them: a folder as it
        is; an object store that Triton reads itself by its URL; any other (Azure) copied afresh, at each launch,
        into this server's folder, which goes at stop (see ``StorePath.store.triton_reads_it`` for why)."""
        locations: list[str | pathlib.Path] = []
        environment: dict[str, str] = {}
        for index, repository in enumerate(self.settings.repositories):
            if not isinstance(repository, StorePath):
                locations.append(repository)
                continue
            store = repository.store
            if store.triton_reads_it:
                locations.append(store.triton_url())
                environment.update(store.triton_environment())
                self.log.write(f"[tritonnb] tritonserver reads {store.url} itself, as {store.triton_url()}")
                continue
            copy = self.home / f"repository-{index}"
            shutil.rmtree(copy, ignore_errors=True)
            store.refresh()
            started = time.perf_counter()
            store.download(copy)
            self.log.write(f"[tritonnb] {store.url} copied to {copy} in {time.perf_counter() - started:.1f} s")
            locations.append(copy)
        return locations, environment

    def _all_endpoints_answer(self) -> bool:
        """HTTP ready, metrics served (unless turned off) and gRPC ready: Triton starts them one after another.
        Each must also be one tritonserver said it listens on: a port can answer for another kernel's server."""
        metrics_on = self.settings.config.get("allow_metrics") is not False
        assert self._process is not None
        return (
            {"http", "grpc", *(["metrics"] if metrics_on else [])} <= self._process.listening
            and answers_ok(f"{self.http_url}/v2/health/ready")
            and (not metrics_on or answers_ok(self.metrics_url))
            and self.control.server_ready()
        )

    def _end_process(self, graceful: bool = True) -> None:
        """End tritonserver and its stubs now (after the requests in flight, when ``graceful``)."""
        self._before_end_process()
        if self._process is not None:
            self._process.stop(graceful)
            self._process.remove_shared_memory()  # left behind when tritonserver was killed

    # -- stopping --------------------------------------------------------------------------------------
    def stop(self) -> float:
        """Stop tritonserver, its processes and every model; return the seconds it took.

        When it returns, no process of the server is left and its ports are free. The models' threads wait up to a
        second on PyTriton's socket polling, with nothing left to serve: they finish, and the server's folder goes,
        in the background (``wait_stopped()`` waits for that).
        """
        return self._stop(in_background=True)

    def wait_stopped(self, timeout: float | None = 30.0) -> bool:
        """Wait until a stopped server's threads have finished and its folder is gone; False on timeout (or if it
        was not stopped)."""
        if not self._stopped:
            return False
        if self._finishing is not None:
            self._finishing.join(timeout)
        return self._finishing is None or not self._finishing.is_alive()

    def _stop_at_exit(self) -> None:
        """When this process ends (see ``process_exit``): no thread may start; the models' threads are daemons and
        end with the process.

        Nothing waits for requests in flight here: the functions that would answer them die with this process, and
        Jupyter sends SIGTERM to a kernel still running 2.5 s after its shutdown request."""
        self._stop(in_background=False)

    def _stop(self, in_background: bool) -> float:
        if self._stopped:
            return 0.0
        started = time.perf_counter()
        # first the lock (a recovery may be busy; an interrupt here changes nothing), then end tritonserver, and only
        # then the supervisor: tritonserver dies with the thread that started it, which may be the supervisor's
        locked = self._lifecycle.acquire(timeout=-1 if in_background else EXIT_WAIT_S)
        try:
            if self._stopped:
                return 0.0
            self._stopped = True
            process_exit.unregister(self._stop_at_exit)
            self._before_stop()
            try:
                self._end_process(graceful=in_background)
            finally:
                self.supervisor.close()
                finish = self._after_stop()
                if in_background:
                    self._finishing = threading.Thread(target=self._clean_up, args=(finish,), name="tritonnb-stop")
                    self._finishing.start()
                else:
                    self._clean_up(None)
        finally:
            if locked:
                self._lifecycle.release()
        return time.perf_counter() - started

    def _clean_up(self, finish: Callable[[], None] | None) -> None:
        try:
            if finish is not None:
                finish()
        finally:
            self.log.close()  # after what ``finish`` writes, which belongs in it
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.sockets, ignore_errors=True)

    # -- restarting ------------------------------------------------------------------------------------
    def restart(self) -> float:
        """Stop and start tritonserver on the same ports, and serve every model again (also after a crash loop)."""
        with self._lifecycle:
            if self._stopped:
                raise NoServerError("this server was stopped; start a new one with tritonnb.start()")
            self.supervisor.reset()
            return self._relaunch()

    def _is_down(self) -> bool | None:
        """Whether tritonserver died; None while someone is busy with the server (a restart by hand, say, which
        passes through DOWN)."""
        if not self._lifecycle.acquire(blocking=False):
            return None
        try:
            return self.state == ServerState.DOWN
        finally:
            self._lifecycle.release()

    def _recover(self) -> bool:
        """The supervisor's relaunch after tritonserver exited by itself; False if it runs again already (a restart
        by hand came first)."""
        with self._lifecycle:
            if self._stopped:
                raise NoServerError("the server was stopped meanwhile")
            if self._process is not None and self._process.process_alive():
                return False
            self._relaunch()
        trim_heap()  # what the recovery's own work freed (the old server's handle, its logs, /proc reads)
        return True

    def _relaunch(self) -> float:
        started = time.perf_counter()
        try:
            self._end_process()
        finally:
            finish = self._after_stop()
            threading.Thread(target=finish, name="tritonnb-retire", daemon=True).start()
        self._launch()  # while the old models' threads retire
        problems = self._serve_again()
        if problems:
            raise BindError("Triton restarted, but " + "; and ".join(problems))
        return time.perf_counter() - started

    # -- hooks for what is served on the server ----------------------------------------------------------
    def _before_end_process(self) -> None:
        """Before tritonserver ends (a stop or a relaunch): let go of what would hold its exit up."""

    def _before_stop(self) -> None:
        """Before a stop ends tritonserver."""

    def _after_stop(self) -> Callable[[], None]:
        """Once tritonserver has ended: what is left to finish, run in the background."""
        return lambda: None

    def _serve_again(self) -> list[str]:
        """After a relaunch: serve everything again; what could not be, one sentence each."""
        return []

    def _heal(self) -> None:
        """Called by the supervisor while tritonserver runs: repair what died on it."""


def _import_torch() -> None:
    import torch  # noqa: F401


def _vertex_ai_placeholder(folder: pathlib.Path, name: str) -> pathlib.Path:
    """A repository (``folder``, made afresh) holding the stand-in for Vertex AI's predict route's model ``name``."""
    shutil.rmtree(folder, ignore_errors=True)
    (folder / name / "1").mkdir(parents=True)
    config = f'name: {json.dumps(name)}\nbackend: "python"\nmax_batch_size: 0\ninstance_group [{{ kind: KIND_CPU }}]\n'
    (folder / name / "config.pbtxt").write_text(config)
    (folder / name / "1" / "model.py").write_text(VERTEX_AI_PLACEHOLDER.replace("{name!r}", repr(name)))
    return folder


def _socket_root(home: pathlib.Path) -> pathlib.Path:
    """Where model workspaces (and so their unix sockets) live: under ``home`` if short enough."""
    if len(str(home)) <= 48:
        root = home / "sockets"
        root.mkdir()
        return root
    root = pathlib.Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-"))
    record_owner(root)
    return root
