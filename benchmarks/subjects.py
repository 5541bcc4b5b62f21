"""The servers the request-path benchmarks measure, each on free loopback ports, each stopped by its pid.

Used by ``benchmarks.compare`` and ``benchmarks.latency_breakdown`` (not run on its own). Every subject serves the
same ``benchmarks.workload`` MLP as Triton model ``mlp`` on ``POST /v2/models/mlp/infer`` (KServe v2 JSON):

- ``tritonnb``: in this process (``tritonnb.bind(..., max_batch_size=64)``, dynamic batching, no batch delay);
- ``pytriton``: raw PyTriton in a subprocess (``benchmarks/servers/raw_pytriton.py``: ``@batch``, the same batching),
  stopped with SIGINT. PyTriton 0.7.0 puts its own Python first on tritonserver's ``PATH``, so the python-backend
  stub runs with that Python's numpy, and under numpy 2 every answer is a 500. Where this environment has numpy 2,
  the subprocess runs with the Python of a numpy 1 environment made the way tritonnb makes its stub's
  (``tritonnb.triton.engine.stub_environment``: this environment's packages behind numpy 1.26, which
  ``python -m tritonnb install`` provides); without that numpy the subject fails and says why;
- ``backend``: the same function exported with ``tritonnb.export`` (python format) and served by tritonserver's
  python backend alone, through the export's own ``serve_here.sh``, stopped with SIGTERM: no hop to a kernel;
- ``fastapi``: FastAPI + uvicorn (1 worker, ``async def`` handler, no batching), stopped with SIGINT;
- ``litserve``: LitServe (batches of up to 64, 1 ms batch timeout), where ``litserve`` is installed, stopped with
  SIGINT (on a GPU it uses the first one).

Each subprocess starts in a session of its own, so its process group holds it, tritonserver and the stubs; it gets
SIGTERM if this process dies (``PR_SET_PDEATHSIG``). After the stop signal and the process's exit, whatever is left
of its tree or its group a few seconds later is killed and reported as a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from benchmarks.workload import CallTimer, Workload, served_function
from devtools.ports import free_loopback_ports as free_ports

__all__ = [
    "LABELS",
    "MODEL",
    "PATH",
    "Running",
    "Setup",
    "check_answer",
    "export_repository",
    "not_installed",
    "request_body",
    "serve",
    "tritonserver_processes",
    "unavailable",
]

MODEL = "mlp"
PATH = f"/v2/models/{MODEL}/infer"
ROOT = Path(__file__).resolve().parent.parent  # the checkout: on the server subprocesses' PYTHONPATH
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
GONE_TIMEOUT_S = 5.0  # after the stop: time for the children to go (PDEATHSIG, stubs noticing their parent's exit)
LABELS = {
    "tritonnb": "tritonnb",
    "pytriton": "raw PyTriton",
    "backend": "python backend",
    "fastapi": "FastAPI + uvicorn",
    "litserve": "LitServe",
}
LITSERVE_BATCH, LITSERVE_TIMEOUT_S = 64, 0.001


@dataclasses.dataclass
class Setup:
    """What every subject shares: the workload, its weights on disk, a scratch folder and settings."""

    workdir: Path
    workload: Workload
    model: Any  # the MLP in this process (tritonnb serves and exports it)
    torch_threads: int
    time_function: bool = False  # add each call of the served function to a CallTimer
    repository: Path | None = None  # the export, once written
    processes: dict[int, psutil.Process] = dataclasses.field(default_factory=dict)  # all started, for a last check

    @property
    def weights(self) -> Path:
        """The saved weights the subprocess servers load (written on first use)."""
        path = self.workdir / "mlp.pt"
        if not path.exists():
            self.workload.save(self.model, path)
        return path

    def remember(self, processes: list[psutil.Process]) -> None:
        """Record processes this benchmark started."""
        for process in processes:
            self.processes.setdefault(process.pid, process)

    def survivors(self) -> list[str]:
        """Processes this benchmark started that still run."""
        return [f"{p.pid} {_name(p)}" for p in self.processes.values() if _alive(p)]


@dataclasses.dataclass
class Running:
    """A subject that serves: where, with which token for Triton's statistics, and the function's own timer."""

    name: str
    port: int
    token: str | None = None  # Triton's access token (statistics); None where no token is needed or no Triton runs
    timer: CallTimer | None = None  # calls and ns of the served function, where it runs in reach of this process
    triton: bool = True  # whether GET /v2/models/<m>/stats answers

    @property
    def label(self) -> str:
        """The subject's name in reports."""
        return LABELS[self.name]


# -- the request ----------------------------------------------------------------------------------------


def request_body(x: np.ndarray) -> str:
    """The KServe v2 JSON body for one sample."""
    return json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(x)], "data": x.tolist()}]})


def post(port: int, body: str, timeout: float = 60.0) -> tuple[int, bytes]:
    """One POST to the model's infer URL: status and payload."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", PATH, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_answer(port: int, x: np.ndarray, expected: np.ndarray, tolerance: dict[str, float]) -> None:
    """Raise unless the server's ``y`` for ``x`` equals the local function's result (``np.allclose``)."""
    status, payload = post(port, request_body(x))
    if status != 200:
        raise RuntimeError(f"status {status}: {payload[:300]!r}")
    output = json.loads(payload)["outputs"][0]
    y = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    if y.shape != expected.shape or not np.allclose(y, expected, **tolerance):
        difference = np.abs(y - expected).max() if y.shape == expected.shape else float("nan")
        raise RuntimeError(f"wrong answer: shape {y.shape}, max abs diff {difference:.3g}")


# -- processes -----------------------------------------------------------------------------------------


def wait_until(ready: Callable[[], bool], process: subprocess.Popen | None, log: Path | None, what: str) -> None:
    """Poll ``ready`` until it is true; raise if ``process`` exits or the time-out passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {READY_TIMEOUT_S:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def http_ok(port: int, path: str) -> bool:
    """True when ``GET path`` answers 200."""
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", path)
            return connection.getresponse().status == 200
        finally:
            connection.close()
    except OSError:
        return False


def tail(log: Path | None, lines: int = 20) -> str:
    """The last lines of a log file, for error messages."""
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when this benchmark dies (Linux), so no server outlives it."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(process: psutil.Process) -> bool:
    """True while ``process`` runs (a zombie counts as gone)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(process: psutil.Process) -> str:
    """A process's name, or '' once it is gone."""
    try:
        return process.name()
    except psutil.Error:
        return ""


def _group_members(group: int) -> list[psutil.Process]:
    """The live processes of process group ``group``."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == group and _alive(process):
                members.append(process)
    return members


def tree_of(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants, as far as they can be seen now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def check_gone(name: str, processes: list[psutil.Process], group: int | None = None) -> None:
    """Raise (after killing them) if any of a stopped server's ``processes``, or anything left in its process
    ``group``, still runs a few seconds later."""
    deadline = time.monotonic() + GONE_TIMEOUT_S

    def left() -> list[psutil.Process]:
        found = {p.pid: p for p in processes if _alive(p)}
        if group is not None:
            found.update((p.pid, p) for p in _group_members(group))
        return list(found.values())

    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = left()
    described = [f"{p.pid} {_name(p)}" for p in survivors]
    if group is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for process in survivors:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if described:
        raise RuntimeError(f"{name}: processes outlived the server and were killed: {described}")
    print(f"{name}: stopped; none of its {len(processes)} processes survives", file=sys.stderr)


@dataclasses.dataclass
class ServerProcess:
    """A server subprocess (the leader of its own process group), its log and the descendants seen while it ran."""

    process: subprocess.Popen
    log: Path
    tree: dict[int, psutil.Process] = dataclasses.field(default_factory=dict)

    def remember_tree(self) -> None:
        """Record the current descendants (tritonserver, its stubs, workers) so they can be checked after the stop."""
        for process in tree_of(self.process.pid):
            self.tree.setdefault(process.pid, process)

    def has(self, name: str) -> bool:
        """Whether a process called ``name`` was seen in the tree."""
        return any(_name(p) == name for p in self.tree.values())


@contextlib.contextmanager
def server_process(argv: list[str], name: str, setup: Setup, env: dict[str, str], stop: int) -> Iterator[ServerProcess]:
    """Run ``argv`` in a session of its own; on exit send ``stop`` to its pid, wait, and make sure its tree and its
    process group are gone."""
    log = setup.workdir / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            cwd=setup.workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group; a Ctrl+C on the terminal reaches this script only
            preexec_fn=_die_with_parent,
        )
    handle = ServerProcess(process, log)
    handle.remember_tree()
    try:
        yield handle
    finally:
        handle.remember_tree()
        setup.remember(list(handle.tree.values()))
        if process.poll() is None:
            process.send_signal(stop)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                stop_name = signal.Signals(stop).name
                print(f"{name}: no exit {STOP_TIMEOUT_S:.0f} s after {stop_name}; killing it", file=sys.stderr)
                process.kill()
                process.wait()
        check_gone(name, list(handle.tree.values()), group=process.pid)


def server_env(torch_threads: int) -> dict[str, str]:
    """The environment for server subprocesses: the checkout on ``PYTHONPATH``, this Python's libpython first on the
    library path, and the torch thread count for every thread (OpenMP keeps it per thread; PyTriton's handler is not
    the main thread)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    if torch_threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(torch_threads)
    return env


def server_config(setup: Setup, **fields: Any) -> str:
    """The JSON argument of a ``benchmarks.servers`` script."""
    config = {
        "model": MODEL,
        "weights": str(setup.weights),
        "dims": list(setup.workload.dims),
        "device": setup.workload.device,
        "threads": setup.torch_threads,
        **fields,
    }
    return json.dumps(config)


def tritonserver_processes() -> set[int]:
    """Pids of every tritonserver process on this machine (anyone's), as ``ps`` would list them."""
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "tritonserver"}


# -- the subjects ---------------------------------------------------------------------------------------


def _missing(*modules: str) -> str | None:
    """Which of ``modules`` cannot be imported here, as a reason, or None."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed here: {', '.join(absent)}" if absent else None


NEEDS = {
    "tritonnb": ("pytriton",),
    "pytriton": ("pytriton",),
    "backend": ("pytriton", "cloudpickle", "yaml"),
    "fastapi": ("fastapi", "uvicorn"),
    "litserve": ("litserve",),
}


def not_installed(name: str) -> str | None:
    """Which modules subject ``name`` needs are not installed here, as a reason, or None."""
    return _missing(*NEEDS[name])


def unavailable(name: str) -> str | None:
    """Why subject ``name`` cannot run here (not installed, or cannot answer correctly), or None when it can."""
    if name not in LABELS:
        return f"unknown server {name!r}; choose from {', '.join(LABELS)}"
    reason = not_installed(name)
    if reason is None and name == "pytriton":
        try:
            pytriton_python(None)
        except RuntimeError as error:
            return str(error)
    return reason


def pytriton_python(workdir: Path | None) -> str:
    """The Python raw PyTriton runs under: this one under numpy 1; under numpy 2 that of a numpy 1 environment in
    ``workdir`` (its stub then imports numpy 1); RuntimeError where none can be made. ``workdir`` None: check only."""
    from tritonnb.triton import engine

    if not engine.numpy_2():
        return sys.executable
    if not engine.stub_numpy_ready():
        raise RuntimeError(
            f"raw PyTriton 0.7.0 answers every request with a 500 under numpy {np.__version__} (its python-backend "
            "stub is built against numpy 1), and no numpy 1 is at hand to run it with: "
            f"run `{engine.INSTALL_COMMAND}` once (it puts numpy 1.26 in {engine.stub_numpy_folder()})"
        )
    if workdir is None:
        return sys.executable
    folder = engine.stub_environment(workdir / "pytriton-numpy1")
    if folder is None:
        raise RuntimeError("could not make the numpy 1 environment for raw PyTriton")
    return str(folder / "python3")


@contextlib.contextmanager
def serve_tritonnb(setup: Setup, timed: bool | None = None) -> Iterator[Running]:
    """tritonnb in this process; ``timed`` (default ``setup.time_function``) wraps the function in a CallTimer."""
    import tritonnb

    http_port, grpc_port, metrics_port = free_ports(3)
    workload = setup.workload
    timer = CallTimer() if (setup.time_function if timed is None else timed) else None
    tree: list[psutil.Process] = []
    group = None
    try:
        server = tritonnb.start(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port)
        tree = tree_of(server.pid) if server.pid else []
        function = served_function(setup.model, timer, sync=workload.cuda)
        features = workload.features
        tritonnb.bind(
            function,
            MODEL,
            inputs=[f"x:float32[{features}]"],
            outputs=[f"y:float32[{features}]"],
            max_batch_size=64,
            device=workload.device,
        )
        if server.pid:
            tree = list({p.pid: p for p in [*tree, *tree_of(server.pid)]}.values())
            with contextlib.suppress(OSError):
                group = os.getpgid(server.pid) if os.getpgid(server.pid) != os.getpgrp() else None
        yield Running("tritonnb", http_port, token=server.access_token, timer=timer)
    finally:
        if tritonnb.server() is not None:
            tree = list({p.pid: p for p in [*tree, *tree_of(tritonnb.server().pid or -1)]}.values())
        tritonnb.stop()
        setup.remember(tree)
        check_gone("tritonnb", tree, group=group)


@contextlib.contextmanager
def serve_pytriton(setup: Setup) -> Iterator[Running]:
    """Raw PyTriton in a subprocess."""
    python = pytriton_python(setup.workdir)
    http_port, grpc_port, metrics_port = free_ports(3)
    token_file = setup.workdir / "pytriton.token"
    token_file.unlink(missing_ok=True)
    timer = CallTimer(setup.workdir / "pytriton.timer", create=True) if setup.time_function else None
    config = server_config(
        setup,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        log_file=str(setup.workdir / "pytriton-triton.log"),
        token_file=str(token_file),
        timer_file=str(timer.path) if timer is not None else "",
    )
    argv = [python, "-m", "benchmarks.servers.raw_pytriton", config]
    with server_process(argv, "pytriton", setup, server_env(setup.torch_threads), signal.SIGINT) as server:
        wait_until(
            lambda: http_ok(http_port, f"/v2/models/{MODEL}/ready") and token_file.exists(),
            server.process,
            server.log,
            "PyTriton",
        )
        server.remember_tree()
        if not server.has("tritonserver"):
            raise RuntimeError("no tritonserver process found under the PyTriton server")
        yield Running("pytriton", http_port, token=token_file.read_text().strip(), timer=timer)


def export_repository(setup: Setup) -> Path:
    """The model exported with ``tritonnb.export`` (python format) into ``workdir/repository``, once: tritonnb is
    started on free ports for it and stopped again."""
    if setup.repository is None:
        import tritonnb

        if tritonnb.server() is not None:
            raise RuntimeError("export the model before tritonnb serves anything else in this process")
        print("backend: exporting the model with tritonnb.export", file=sys.stderr)
        with serve_tritonnb(setup, timed=False):
            result = tritonnb.export(MODEL, setup.workdir / "repository", model_format="python")
        setup.repository = result.directory
    return setup.repository


@contextlib.contextmanager
def serve_backend(setup: Setup) -> Iterator[Running]:
    """The export, served by tritonserver's python backend alone through its ``serve_here.sh``."""
    repository = export_repository(setup)
    http_port, grpc_port, metrics_port = free_ports(3)
    argv = [
        "bash",
        str(repository / "serve_here.sh"),
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
        "--exit-timeout-secs=2",
    ]
    env = server_env(setup.torch_threads)
    env["PYTHON"] = sys.executable  # serve_here.sh: the Python whose stub, packages and libpython the models get
    with server_process(argv, "backend", setup, env, signal.SIGTERM) as server:
        wait_until(lambda: http_ok(http_port, f"/v2/models/{MODEL}/ready"), server.process, server.log, "backend")
        server.remember_tree()
        if not server.has("tritonserver"):
            raise RuntimeError("serve_here.sh runs no tritonserver")
        yield Running("backend", http_port)


@contextlib.contextmanager
def serve_fastapi(setup: Setup) -> Iterator[Running]:
    """FastAPI + uvicorn (1 worker) in a subprocess."""
    (port,) = free_ports(1)
    argv = [sys.executable, "-m", "benchmarks.servers.fastapi_app", server_config(setup, port=port)]
    with server_process(argv, "fastapi", setup, server_env(setup.torch_threads), signal.SIGINT) as server:
        wait_until(lambda: http_ok(port, "/v2/health/ready"), server.process, server.log, "FastAPI")
        yield Running("fastapi", port, triton=False)


@contextlib.contextmanager
def serve_litserve(setup: Setup) -> Iterator[Running]:
    """LitServe in a subprocess: batches of up to 64, 1 ms batch timeout."""
    (port,) = free_ports(1)
    config = server_config(setup, port=port, batch=LITSERVE_BATCH, batch_timeout_s=LITSERVE_TIMEOUT_S)
    argv = [sys.executable, "-m", "benchmarks.servers.litserve_app", config]
    with server_process(argv, "litserve", setup, server_env(setup.torch_threads), signal.SIGINT) as server:
        wait_until(lambda: http_ok(port, "/health"), server.process, server.log, "LitServe")
        server.remember_tree()
        yield Running("litserve", port, triton=False)


SERVE: dict[str, Callable[[Setup], contextlib.AbstractContextManager[Running]]] = {
    "tritonnb": serve_tritonnb,
    "pytriton": serve_pytriton,
    "backend": serve_backend,
    "fastapi": serve_fastapi,
    "litserve": serve_litserve,
}


def serve(name: str, setup: Setup) -> contextlib.AbstractContextManager[Running]:
    """Start subject ``name``; the context yields it serving and stops it (and checks nothing is left) on exit."""
    return SERVE[name](setup)
