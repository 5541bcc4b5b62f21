"""The one Triton server per kernel: start, stop, restart, status, logs, and its served models."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tritonnb import state
from tritonnb.errors import (
    BindError,
    NoServerError,
    PortBusyError,
    ServerStartError,
    SpecError,
    TritonnbError,
    UnknownModelError,
)
from tritonnb.http_get import answers_ok, get_json
from tritonnb.observe.remote_spec import remote_spec
from tritonnb.serving.binding import BindResult, ModelSlot, retire_side_by_side
from tritonnb.serving.streaming import is_stream_function
from tritonnb.serving.torch_bridge import resolve_device
from tritonnb.signature import DEFAULT_MAX_BATCH_SIZE, DEFAULT_OUTPUT, ModelSpec, TensorSpec, as_specs, default_inputs
from tritonnb.triton import process_exit
from tritonnb.triton._pytriton import PYTRITON_HOME, Generation, ServerProcess, TritonConfig
from tritonnb.triton.browser_route import BrowserRoute, browser_route, given_public_url
from tritonnb.triton.engine import check_bytes_supported
from tritonnb.triton.leftovers import record_owner, remove_leftovers
from tritonnb.triton.logs import ServerLog
from tritonnb.triton.repository import RepositoryModel, find_models, index_states, needs_auto_complete, triton_reason
from tritonnb.triton.settings import ServerSettings, resolve_settings
from tritonnb.triton.supervisor import Supervisor

STARTUP_TIMEOUT_S = 120.0
START_ATTEMPTS = 3  # a port picked as free can be taken before tritonserver binds it (a second kernel starting)
HEAL_RETRY_S = 10.0  # after a model failed to load again, wait this long before the next try
EXIT_WAIT_S = 2.0  # when the process ends, how long a stop waits for a recovery in progress (Jupyter: 2.5 s)
HOME_PREFIX = "tritonnb-"  # folders are named tritonnb-<pid>-<random>, so leftovers of dead processes can be found
GRPC_ACCESS_TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"


class Server:
    """A background tritonserver owned by this process, and the models it serves for us.

    If tritonserver exits without being asked (OOM killer, a crash, a stray kill), it is started again on the same
    ports and every model is bound again, unless ``restart_on_crash`` is False (see ``tritonnb.triton.supervisor``).

    The models of ``settings.repositories`` (Triton model repositories) are served beside the notebook's:
    ``load_repositories()`` loads them after the first start, and every restart loads them again.
    """

    def __init__(
        self, settings: ServerSettings, restart_on_crash: bool = True, public_url: tuple[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.public_url = public_url  # (URL, where it came from): where a browser reaches the HTTP port, if given
        self._browser_route: BrowserRoute | None = None
        self.models: dict[str, ModelSlot] = {}
        self.repository_models: dict[str, RepositoryModel] = {}  # loaded from settings.repositories, by name
        remove_leftovers(PYTRITON_HOME, HOME_PREFIX)
        self.home = PYTRITON_HOME / f"{HOME_PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
        self.home.mkdir(parents=True)
        record_owner(self.home)
        self.sockets = _socket_root(self.home)
        self.log = ServerLog(self.home / "tritonserver.log")
        self.log.capture_python_logging()
        self.version = ""
        self.started_at = 0.0
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
            self._heal_models,
            enabled=restart_on_crash,
        )
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
        found on first use, as the ports never change."""
        if self._browser_route is None:
            self._browser_route = browser_route(
                self.settings.port("http"), self.settings.port("metrics"), self.public_url
            )
        return self._browser_route

    @property
    def access_token(self) -> str:
        """The token that Triton's repository, statistics, trace and logging endpoints require."""
        assert self._process is not None
        return self._process.get_access_token()

    @property
    def pid(self) -> int | None:
        """tritonserver's process id while it runs."""
        return self._process.pid if self._process else None

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``READY``, ``RECOVERING`` (restarting after a crash), ``DOWN`` (tritonserver died) or ``STOPPED``."""
        if self._stopped:
            return "STOPPED"
        if self.supervisor.recovering:
            return "RECOVERING"
        return "READY" if self._process is not None and self._process.process_alive() else "DOWN"

    @property
    def uptime_s(self) -> float:
        """Seconds since tritonserver became ready."""
        return time.monotonic() - self.started_at if self.state == "READY" else 0.0

    def _launch(self) -> None:
        self.log.write(f"[tritonnb] starting tritonserver with {json.dumps(self.settings.config, default=str)}")
        workspace = self.home / f"triton-{secrets.token_hex(2)}"
        repositories = self.settings.repositories
        auto_complete = needs_auto_complete(repositories)
        if auto_complete:
            self.log.write("[tritonnb] a repository model's config relies on Triton's auto-complete: it stays on")
        self._process = ServerProcess(
            TritonConfig(**self.settings.config),
            workspace,
            self.log.write,
            self.supervisor.notice_exit,
            repositories,
            auto_complete,
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
            self.version = get_json(f"{self.http_url}/v2")["version"]

    def _all_endpoints_answer(self) -> bool:
        """HTTP ready, metrics served (unless turned off) and gRPC ready: Triton starts them one after another.
        Each must also be one tritonserver said it listens on: a port can answer for another kernel's server."""
        metrics_on = self.settings.config.get("allow_metrics") is not False
        assert self._process is not None
        return (
            {"http", "grpc", *(["metrics"] if metrics_on else [])} <= self._process.listening
            and answers_ok(f"{self.http_url}/v2/health/ready")
            and (not metrics_on or answers_ok(self.metrics_url))
            and self._grpc_ready()
        )

    def _grpc_ready(self) -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            with contextlib.closing(self._grpc()) as client:
                return bool(client.is_server_ready(client_timeout=1.0))
        except InferenceServerException:
            return False

    def _end_process(self, graceful: bool = True) -> None:
        """End tritonserver and its stubs now (after the requests in flight, when ``graceful``)."""
        with state.lock:
            clients = list(state.clients)
        for client in clients:  # their idle connections would hold tritonserver's exit up
            with contextlib.suppress(Exception):  # nothing may keep tritonserver from being stopped
                client.close()
        if self._process is not None:
            self._process.stop(graceful)
            self._process.remove_shared_memory()  # left behind when tritonserver was killed

    def _take_generations(self) -> list[Generation]:
        """Every model's generations, still to be retired (the slots keep their functions and specs), once the
        process has ended: their tensor-store memory, which the dead stubs cannot unlink, is unlinked here."""
        generations = [g for slot in self.models.values() for g in slot.take_generations()]
        for generation in generations:
            generation.unlink_shared_memory()
        return generations

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
            for slot in self.models.values():  # each client of an open stream gets an error saying why
                slot.end_streams()
            try:
                self._end_process(graceful=in_background)
            finally:
                self.supervisor.close()
                generations = self._take_generations()
                if in_background:
                    self._finishing = threading.Thread(target=self._clean_up, args=(generations,), name="tritonnb-stop")
                    self._finishing.start()
                else:
                    self._clean_up([])
        finally:
            if locked:
                self._lifecycle.release()
        return time.perf_counter() - started

    def _clean_up(self, generations: list[Generation]) -> None:
        try:
            retire_side_by_side(generations)
        finally:
            self.log.close()  # after the retirement, whose messages belong in it
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.sockets, ignore_errors=True)

    def restart(self) -> float:
        """Stop and start tritonserver on the same ports, and bind every model again (also after a crash loop)."""
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
            return self.state == "DOWN"
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
            return True

    def _heal_models(self) -> None:
        """Load again every model whose python backend stub died (unless the server is busy or not ready)."""
        if not self._lifecycle.acquire(blocking=False):
            return
        try:
            if self.state != "READY" or self._process is None:
                return
            alive = self._process.live_stubs()
            now = time.monotonic()
            for name, slot in list(self.models.items()):
                if slot.fn is None or slot.loading or now < slot.heal_after:
                    continue
                if slot.is_serving() and alive[name] >= slot.spec.instances:
                    continue
                why = "a python backend stub died" if slot.is_serving() else "it was not bound again after a restart"
                self.log.write(f"[tritonnb] model {name!r}: {why}; loading the model again")
                try:
                    slot.reload()
                    slot.stub_restarts += 1
                except Exception as error:
                    slot.heal_after = now + HEAL_RETRY_S
                    self.log.write(f"[tritonnb] model {name!r} could not be loaded again: {error}")
        finally:
            self._lifecycle.release()

    def _relaunch(self) -> float:
        started = time.perf_counter()
        try:
            self._end_process()
        finally:
            old = self._take_generations()
            threading.Thread(target=retire_side_by_side, args=(old,), name="tritonnb-retire", daemon=True).start()
        self._launch()  # while the old models' threads retire
        failed = {}
        for name, slot in list(self.models.items()):
            try:
                slot.reload()
            except Exception as error:  # one model that cannot load must not keep the others down
                failed[name] = error
        unloaded = self._load_repository_models()
        problems = ["these models could not be bound again: " + _listed(failed)] if failed else []
        if unloaded:
            problems.append(_repository_failure(unloaded))
        if problems:
            raise BindError("Triton restarted, but " + "; and ".join(problems))
        return time.perf_counter() - started

    # -- model repositories ----------------------------------------------------------------------------
    def load_repositories(self) -> None:
        """Load every model of the served model repositories; BindError naming each that failed, with Triton's
        reason (the server and the other models serve on)."""
        with self._lifecycle:
            if self.state != "READY":
                raise NoServerError(f"the server is {self.state}; run %triton restart (or tritonnb.restart())")
            unloaded = self._load_repository_models()
        if unloaded:
            raise BindError(f"{_repository_failure(unloaded)}\nThe server runs on, with the other models.")

    def _load_repository_models(self) -> dict[str, str]:
        """Load the repositories' models by name, found again in their folders (a model added since is served
        too); return those that were not loaded, with why. Runs with the lifecycle lock held."""
        from tritonclient.utils import InferenceServerException

        if not self.settings.repositories:
            return {}
        found, unloaded = find_models(self.settings.repositories)
        models: dict[str, RepositoryModel] = {}
        with contextlib.closing(self._grpc()) as client:
            for name, repository in found.items():
                notebook = next((n for n in self.models if n.lower() == name.lower()), None)
                if notebook is not None:
                    unloaded[name] = (
                        f"model {name!r} of {str(repository)!r} clashes with the notebook's model {notebook!r}: "
                        "rename one of them"
                    )
                    continue
                models[name] = RepositoryModel(name, repository)
                self.log.write(f"[tritonnb] loading model {name!r} from the model repository {repository}")
                try:
                    client.load_model(name, headers=self._grpc_headers())
                except InferenceServerException as error:
                    unloaded[name] = f"model {name!r} of {str(repository)!r}: {triton_reason(error.message())}"
        self.repository_models = models
        self._refresh_repository_models()
        for name, model in models.items():
            if model.state == "READY":
                with contextlib.suppress(TritonnbError):  # a dtype tritonnb does not handle: shown without spec
                    model.spec = remote_spec(self.http_url, name)
        for why in unloaded.values():
            self.log.write(f"[tritonnb] not loaded: {why}")
        return unloaded

    def _refresh_repository_models(self) -> None:
        """The repositories' models' states, versions and reasons, from Triton's repository index."""
        if not self.repository_models:
            return
        try:
            with contextlib.closing(self._grpc()) as client:
                index = client.get_model_repository_index(headers=self._grpc_headers(), as_json=True)
            states = index_states(index.get("models", []))
        except Exception:  # tritonserver went away meanwhile: say so
            states = {}
        for name, model in self.repository_models.items():
            model.state, model.version, model.reason = states.get(name, ("UNAVAILABLE", model.version, model.reason))

    # -- models ----------------------------------------------------------------------------------------
    def bind(
        self,
        fn: Callable,
        name: str,
        *,
        inputs: Sequence[TensorSpec | str] | None = None,
        outputs: Sequence[TensorSpec | str] | None = None,
        max_batch_size: int | None = None,
        batch_delay_us: int = 0,
        instances: int = 1,
        device: str | None = None,
        warmup: int = 0,
        timeout_s: float | None = None,
        stream: bool | None = None,
    ) -> BindResult:
        """Serve ``fn`` as model ``name``; calling it again with the same name hot-swaps it.

        ``warmup`` batches, generated from the inputs, run through ``fn`` before Triton may route a request to it.
        ``timeout_s``: requests whose call of ``fn`` takes longer get an error (the call itself runs on).
        ``stream``: serve ``fn`` as a stream (None: when it is a generator function); see ``tritonnb.bind``.
        """
        with self._lifecycle:  # waits for a recovery in progress
            if self.state != "READY":
                raise NoServerError(f"the server is {self.state}; run %triton restart (or tritonnb.restart())")
            streams = is_stream_function(fn) if stream is None else stream
            if streams and timeout_s is not None:
                raise SpecError(f"model {name!r} streams: a timeout applies to functions that return once")
            if max_batch_size is None:
                max_batch_size = 0 if streams else DEFAULT_MAX_BATCH_SIZE
            spec_options = {"max_batch_size": max_batch_size, "batch_delay_us": batch_delay_us, "instances": instances}
            return self._bind(fn, name, inputs, outputs, spec_options, streams, device, warmup, timeout_s)

    def _bind(
        self,
        fn: Callable,
        name: str,
        inputs: Sequence[TensorSpec | str] | None,
        outputs: Sequence[TensorSpec | str] | None,
        spec_options: dict[str, int],
        stream: bool,
        device: str | None,
        warmup: int,
        timeout_s: float | None,
    ) -> BindResult:
        _check_name(name, self.sockets)
        served = next((m for m in self.repository_models.values() if m.name.lower() == name.lower()), None)
        if served is not None:
            raise SpecError(
                f"model name {name!r} clashes with model {served.name!r} of the model repository "
                f"{str(served.repository)!r}: Triton would serve one in place of the other; choose another name"
            )
        input_specs = as_specs(inputs, "input") or default_inputs(fn)
        output_specs = as_specs(outputs, "output") or (DEFAULT_OUTPUT,)
        spec = ModelSpec(name, input_specs, output_specs, **spec_options, stream=stream)
        check_bytes_supported([s.name for s in (*input_specs, *output_specs) if s.dtype == "bytes"])
        resolved_device = resolve_device(device)
        clash = next((n for n in self.models if n.lower() == name.lower() and n != name), None)
        if clash:
            raise SpecError(f"model names are case-insensitive in Triton: {name!r} clashes with {clash!r}")
        slot = self.models.get(name)
        if slot is None:
            slot = ModelSlot(
                spec,
                self.sockets / f"m{secrets.token_hex(3)}",
                self,
                self._report_model_error,
            )
            self.models[name] = slot
        try:
            return slot.bind(fn, spec, resolved_device, warmup, timeout_s)
        except BaseException:
            if slot.fn is None:  # never served: forget it
                self.models.pop(name, None)
            raise

    def unbind(self, name: str) -> None:
        """Stop serving model ``name``; other models keep serving."""
        with self._lifecycle:
            slot = self.models.get(name)
            if slot is None:
                raise UnknownModelError(f"no model named {name!r} is served; served: {sorted(self.models) or 'none'}")
            try:
                slot.unbind()
            finally:  # its threads are retired either way; Triton may still list it if the unload failed
                self.models.pop(name, None)

    def model_states(self) -> dict[str, str]:
        """Each served model's state as Triton reports it (``READY`` or ``UNAVAILABLE``)."""
        return {name: ("READY" if self.is_model_ready(name) else "UNAVAILABLE") for name in self.models}

    def _report_model_error(self, model_name: str, text: str) -> None:
        self.log.write(f"[tritonnb] model {model_name!r} raised:\n{text.rstrip()}")

    # -- ModelControl, over gRPC with the access token ---------------------------------------------------
    def _grpc(self) -> Any:
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.grpc_url.removeprefix("grpc://"))

    def _grpc_headers(self) -> dict[str, str]:
        return {GRPC_ACCESS_TOKEN_HEADER: self.access_token}

    def load_model(self, name: str, config: str, files: dict[str, bytes]) -> None:
        """Load (or reload) a model from a config and files; returns when it is ready."""
        with contextlib.closing(self._grpc()) as client:
            client.load_model(name, headers=self._grpc_headers(), config=config, files=files)
        self._process.remember_stubs()
        record_owner(self.home, model_copies=self._process.model_copies)  # for the next start, after a kill -9

    def unload_model(self, name: str) -> None:
        """Ask Triton to unload a model."""
        with contextlib.closing(self._grpc()) as client:
            client.unload_model(name, headers=self._grpc_headers())

    def is_model_ready(self, name: str) -> bool:
        """Whether Triton reports the model ready."""
        return answers_ok(f"{self.http_url}/v2/models/{name}/ready")

    # -- reporting -------------------------------------------------------------------------------------
    def logs(self, lines: int = 40) -> str:
        """The last ``lines`` lines of tritonserver's log (with tritonnb's messages and model tracebacks)."""
        return self.log.tail(lines)

    def status(self) -> dict[str, Any]:
        """State, URLs, version, uptime, crash recovery, models and model repositories (with their models), as
        plain data."""
        states = self.model_states() if self.state == "READY" else {n: "UNAVAILABLE" for n in self.models}
        if self.state == "READY":
            self._refresh_repository_models()
        else:
            for model in self.repository_models.values():
                model.state = "UNAVAILABLE"
        return {
            "state": self.state,
            "pid": self.pid,
            "version": self.version,
            "uptime_s": round(self.uptime_s, 1),
            "http_url": self.http_url,
            "grpc_url": self.grpc_url,
            "metrics_url": self.metrics_url,
            "public": self.settings.public,
            "browser": dataclasses.asdict(self.browser_route),
            "log_file": str(self.log.path),
            "restart_on_crash": self.supervisor.enabled,
            "restarts": self.supervisor.restarts,
            "recovery": self.supervisor.summary(),
            "crashes": [c.as_dict() for c in self.supervisor.crashes[-5:]],
            "models": {
                name: {
                    "state": states.get(name, "UNAVAILABLE"),
                    "device": slot.device,
                    "binds": slot.binds,
                    "stub_restarts": slot.stub_restarts,
                }
                for name, slot in self.models.items()
            },
            "repositories": [str(path) for path in self.settings.repositories],
            "repository_models": {name: model.as_dict() for name, model in self.repository_models.items()},
        }


SOCKET_PATH_MAX = 107  # AF_UNIX paths are limited to 108 bytes with the terminating NUL
SOCKET_SUFFIX_MAX = len("/g999/_0_99-server.sock")  # PyTriton names sockets <workspace>/<model>_0_<i>-server.sock
RESERVED_NAMES = {"stats"}  # GET /v2/models/stats is Triton's statistics endpoint, not a model's metadata


def _import_torch() -> None:
    import torch  # noqa: F401


def _socket_root(home: pathlib.Path) -> pathlib.Path:
    """Where model workspaces (and so PyTriton's unix sockets) live: under ``home`` if short enough."""
    if len(str(home)) <= 48:
        root = home / "sockets"
        root.mkdir()
        return root
    root = pathlib.Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{os.getpid()}-"))
    record_owner(root)
    return root


def _listed(failed: dict[str, Any]) -> str:
    return "; ".join(f"{name}: {error}" for name, error in failed.items())


def _repository_failure(unloaded: dict[str, str]) -> str:
    lines = [f"- {why}" for why in unloaded.values()]
    return "\n".join(["these models of the model repositories were not loaded:", *lines])


def _check_name(name: str, sockets: pathlib.Path) -> None:
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise SpecError(f"bad model name {name!r}: use letters, digits, '.', '_' and '-'")
    if name.lower() in RESERVED_NAMES:
        raise SpecError(f"model name {name!r} is reserved by Triton's HTTP API; choose another")
    room = SOCKET_PATH_MAX - len(str(sockets)) - len("/m000000") - SOCKET_SUFFIX_MAX
    if len(name) > room:
        raise SpecError(f"model name {name!r} is too long: at most {room} characters fit in a unix socket path here")


# -- the process-wide server (held in tritonnb.state) ------------------------------------------------------
def start(restart_on_crash: bool = True, **options: Any) -> Server:
    """Start the background server (see ``resolve_settings`` for options), or return the running one.

    Ports left out are picked free; if one is taken before tritonserver binds it (another kernel starting at the
    same moment), new ones are picked and it starts again.
    """
    current = state.server
    if current is not None and current.state != "STOPPED":
        if options or not restart_on_crash:
            raise ServerStartError(f"a server already runs at {current.http_url}; stop() it first to change options")
        return current
    public_url = given_public_url(options.pop("public_url", None))  # a bad one fails before anything starts
    attempt = 1
    while True:
        settings = resolve_settings(**options)
        try:
            started = state.server = Server(settings, restart_on_crash=restart_on_crash, public_url=public_url)
            break
        except PortBusyError:
            if not settings.picked_ports or attempt == START_ATTEMPTS:
                raise
            attempt += 1
    if settings.repositories:
        started.load_repositories()  # a model that fails to load raises; the server runs on
    return started


def stop() -> float | None:
    """Stop the background server; return the seconds it took, or None if none ran."""
    current = state.server
    if current is None:
        return None
    seconds = current.stop()
    state.server = None
    return seconds


def server() -> Server | None:
    """The server started by this process (its ``state`` says if it is READY or DOWN), or None."""
    current = state.server
    return current if current is not None and current.state != "STOPPED" else None
