"""Soak: HTTP and gRPC clients through swaps, signature changes, load tests and kill -9 of tritonserver.

Counts failed requests (inside and outside crash windows) and watches the kernel's resources over a long run.

Run: ``.venv/bin/python -m benchmarks.soak [--minutes 30] [--json PATH]``. Prints markdown tables.

This process plays the notebook kernel: a real IPython ``InteractiveShell`` with ``%load_ext tritonnb`` and
``%triton start`` on free loopback ports, and every change is a real ``%%triton_model double ...`` cell:

- every ``--swap-every`` s the cell runs again with the same signature (``x * 2`` and ``x + x`` alternate: an
  in-place swap), every ``--reshape-every`` s with the other of two signatures (``float32[8]``, batch 32, and
  ``float32[-1]``, batch 16: a reload under the same name), both answering the clients' ``x`` of shape [1, 8];
- every ``--perf-every`` s a ``%triton_perf double --concurrency 2 --duration 2`` burst (skipped when a kill is due
  within ``PERF_GUARD_S``);
- every ``--kill-every`` s ``kill -9`` of tritonserver; this process then polls until the model answers correctly
  again (the recovery time). A crash window is [kill, first correct answer + 1 s].

The warm-up before the first mark runs one of each: a swap, a signature change, a burst and a kill.

Four clients (2 HTTP, 2 gRPC, tritonclient, one thread each) run in a separate, spawned process, so the kernel's
figures are its own; each sends a random x and checks y == 2x exactly. A failure inside a crash window is
expected; any other is not. The kernel's RSS, threads, open fds, /dev/shm entries, Triton's model copies in the temp
folder and tritonserver's processes are recorded after warm-up, every ``--mark-every`` s, at the end and after
``%triton stop``. Exits non-zero if a request failed outside a crash window, a recovery never came (or left the
killed server's processes running), a cell, a load test or a scheduled event failed, or a process of the server
outlived the stop. Times and resources are reported, never judged.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import http.client
import json
import multiprocessing
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import psutil

from devtools.ports import free_loopback_ports as free_ports

MODEL = "double"
SPECS = (
    "--input x:float32[8] --output y:float32[8] --max-batch-size 32",
    "--input x:float32[-1] --output y:float32[-1] --max-batch-size 16",
)
BODIES = ("return x * 2", "return x + x")  # both exact in float32
PERF_LINE = f"{MODEL} --concurrency 2 --duration 2"
PERF_GUARD_S = 15.0  # a perf burst is skipped when a kill is due within this many seconds
HTTP_CLIENTS, GRPC_CLIENTS = 2, 2
CLIENT_TIMEOUT_S = 10.0
FAILURE_PAUSE_S = 0.05  # a client pauses this long after a failure, so a dead server is not hammered
CLIENTS_READY_TIMEOUT_S = 120.0
RECOVERY_DEADLINE_S = 120.0
WINDOW_TAIL_S = 1.0  # a crash window ends this long after the first correct answer
OLD_PROCESSES_WAIT_S = 10.0
MAX_FAILURES_KEPT = 200_000
LOG_LINES_KEPT = 200  # of tritonserver's log, in the JSON when the run failed
MIB = 1024 * 1024


# -- the clients, in their own spawned process ---------------------------------------------------------------
class ClientStats:
    """What the client threads saw, shared between them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failures: list[tuple[float, str, str]] = []  # (time.time(), protocol, reason)
        self.dropped = 0  # failures beyond MAX_FAILURES_KEPT
        self.slowest: list[tuple[float, float, str]] = []  # (seconds, sent at, protocol), the 5 slowest answers

    def answered(self, protocol: str, sent: float, seconds: float) -> None:
        with self.lock:
            self.ok[protocol] += 1
            if len(self.slowest) < 5 or seconds > self.slowest[-1][0]:
                self.slowest = sorted([*self.slowest, (seconds, sent, protocol)], reverse=True)[:5]

    def failed(self, protocol: str, reason: str) -> None:
        with self.lock:
            if len(self.failures) < MAX_FAILURES_KEPT:
                self.failures.append((time.time(), protocol, reason))
            else:
                self.dropped += 1

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {
                "ok": dict(self.ok),
                "failures": list(self.failures),
                "dropped": self.dropped,
                "slowest": list(self.slowest),
            }


def _new_client(protocol: str, address: str) -> Any:
    if protocol == "http":
        import tritonclient.http as httpclient

        return httpclient.InferenceServerClient(
            address, connection_timeout=CLIENT_TIMEOUT_S, network_timeout=CLIENT_TIMEOUT_S
        )
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(address)


def _infer(client: Any, protocol: str, x: np.ndarray) -> np.ndarray:
    """One request for ``y``; raises on any failure."""
    if protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    tensor = module.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    outputs = [module.InferRequestedOutput("y")]
    if protocol == "http":
        result = client.infer(MODEL, [tensor], outputs=outputs)
    else:
        result = client.infer(MODEL, [tensor], outputs=outputs, client_timeout=CLIENT_TIMEOUT_S)
    return result.as_numpy("y")


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:160]}"


def _client_loop(protocol: str, address: str, seed: int, stop: Any, stats: ClientStats, first: threading.Event) -> None:
    """Send random x back to back until ``stop``; check y == 2x exactly; a new client after every failure."""
    rng = np.random.default_rng(seed)
    client = None
    while not stop.is_set():
        x = rng.standard_normal((1, 8), dtype=np.float32)
        sent = time.time()
        try:
            if client is None:
                client = _new_client(protocol, address)
            y = _infer(client, protocol, x)
        except Exception as error:
            stats.failed(protocol, _short(error))
            with contextlib.suppress(Exception):
                client.close()
            client = None
            time.sleep(FAILURE_PAUSE_S)
            continue
        if y is not None and y.shape == x.shape and np.array_equal(y, 2 * x):
            stats.answered(protocol, sent, time.time() - sent)
            first.set()
        else:
            stats.failed(protocol, f"wrong answer: {None if y is None else np.ravel(y)[:3].tolist()}")
    with contextlib.suppress(Exception):
        client.close()


def run_clients(http_address: str, grpc_address: str, stop: Any, queue: Any) -> None:
    """The client process: HTTP_CLIENTS + GRPC_CLIENTS threads; puts ``"ready"`` once each got a correct answer,
    then, after ``stop``, the counts and every failure."""
    stats = ClientStats()
    protocols = ["http"] * HTTP_CLIENTS + ["grpc"] * GRPC_CLIENTS
    firsts = [threading.Event() for _ in protocols]
    threads = [
        threading.Thread(
            target=_client_loop,
            args=(p, http_address if p == "http" else grpc_address, i, stop, stats, firsts[i]),
            name=f"soak-{p}-{i}",
        )
        for i, p in enumerate(protocols)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + CLIENTS_READY_TIMEOUT_S
    for first in firsts:
        first.wait(max(0.0, deadline - time.monotonic()))
    queue.put("ready" if all(f.is_set() for f in firsts) else "not ready")
    parent = os.getppid()
    while any(thread.is_alive() for thread in threads):
        if os.getppid() != parent:  # the soak died without stopping us: do not outlive it
            stop.set()
        time.sleep(0.5)
    queue.put(stats.as_dict())


# -- the kernel: cells, load tests, kills and marks ----------------------------------------------------------
@dataclasses.dataclass
class Mark:
    """The kernel's resources and the server's processes at one moment."""

    label: str
    at_s: float
    rss_mib: float
    anon_mib: float  # of the RSS: the heaps, thread stacks and other private memory, where a leak would show
    file_mib: float  # of the RSS: shared libraries' pages, read in as code paths are first used
    py_blocks: int  # memory blocks Python has allocated (its objects, growing only if they do)
    # of the private memory, glibc malloc's (None elsewhere): in use, free inside its heaps (fragmentation), and
    # the large blocks it maps one by one
    malloc_used_mib: float | None
    malloc_free_mib: float | None
    malloc_mapped_mib: float | None
    threads: int
    fds: int
    shm_ours: int  # /dev/shm entries of this run
    shm_all: int  # every entry in /dev/shm (other kernels' too)
    copies_ours: int  # Triton's copies of this run's model files in the temp folder
    copies_all: int
    server_processes: int


@dataclasses.dataclass
class Recovery:
    """One kill -9 of tritonserver and how the server came back."""

    at: float  # time.time() of the kill
    at_s: float  # seconds into the soak
    killed_pid: int
    answered_after_s: float | None = None  # kill to the first correct answer; None if it never came
    restarted_after_s: float | None = None  # the supervisor's own figure (kill noticed to relaunch done)
    outcome: str = ""
    new_pid: int | None = None
    old_left: int = 0  # processes of the killed server still running after the recovery


@dataclasses.dataclass(slots=True)  # slots: the soak keeps one per cell, and should weigh little in what it measures
class CellRun:
    """One ``%%triton_model`` (or ``%triton``) cell."""

    kind: str  # start, load, swap, reshape
    at_s: float
    seconds: float
    ok: bool
    action: str = ""  # what the card said: loaded, swapped, reloaded
    error: str = ""


@dataclasses.dataclass
class Burst:
    """One ``%triton_perf`` burst."""

    at_s: float
    ok: bool
    requests: int = 0
    errors: int = 0
    throughput: float = 0.0
    error: str = ""
    warmup: bool = False


def cell_text(spec: int, body: int) -> str:
    """The ``%%triton_model`` cell with signature ``spec`` and function body ``body``."""
    return f"%%triton_model {MODEL} {SPECS[spec]}\ndef {MODEL}(x):\n    {BODIES[body]}\n"


def model_copies() -> list[pathlib.Path]:
    """Triton's copies of model files (``<tmp>/folderXXXXXX``), made on each load and removed on unload."""
    return list(pathlib.Path(tempfile.gettempdir()).glob("folder*"))


def _read_proc(pid: int, name: str) -> bytes:
    from tritonnb.triton._pytriton import read_proc  # not at the top: the spawned clients never import tritonnb

    return read_proc(pid, name)


def mapped_segments(pid: int) -> set[str]:
    """The names of the /dev/shm entries process ``pid`` has mapped."""
    try:
        maps = _read_proc(pid, "maps").decode(errors="replace")
    except OSError:
        return set()
    fields = (line.split(maxsplit=5) for line in maps.splitlines())
    return {
        f[5].removesuffix(" (deleted)")[len("/dev/shm/") :]
        for f in fields
        if len(f) == 6 and f[5].startswith("/dev/shm/")
    }


def stub_model_copy(pid: int) -> pathlib.Path | None:
    """The model copy a python backend stub runs (its argv[1] is ``<copy>/<version>/model.py``), else None."""
    try:
        argv = _read_proc(pid, "cmdline").split(b"\0")
    except OSError:
        return None
    if len(argv) < 2 or not argv[0].endswith(b"triton_python_backend_stub"):
        return None
    folder = pathlib.Path(argv[1].decode(errors="replace")).parent.parent
    return folder if folder.parent == pathlib.Path(tempfile.gettempdir()) else None


class Footprint:
    """This run's /dev/shm entries and model copies, told apart from other kernels' on the same machine: the python
    backend's regions carry the kernel's pid; tensor-store segments and model copies count once seen in use by the
    kernel or the server's processes (a leaked one stays counted)."""

    def __init__(self) -> None:
        self.prefix = f"pytrtion{os.getpid()}-"
        self.segments: set[str] = set()
        self.folders: set[pathlib.Path] = set()

    def observe(self, server_pids: list[int]) -> None:
        """Note what the kernel and these processes of the server use now."""
        for pid in [os.getpid(), *server_pids]:
            self.segments |= mapped_segments(pid)
            folder = stub_model_copy(pid)
            if folder is not None:
                self.folders.add(folder)

    def shm(self) -> tuple[int, int]:
        """(this run's entries, all entries) in /dev/shm."""
        names = os.listdir("/dev/shm")
        return sum(n.startswith(self.prefix) or n in self.segments for n in names), len(names)

    def copies(self) -> tuple[int, int]:
        """(this run's model copies, all model copies) in the temp folder."""
        folders = model_copies()
        return sum(f in self.folders for f in folders), len(folders)


def resident_kib() -> dict[str, int]:
    """This process's resident memory by kind (``RssAnon``, ``RssFile``, ``RssShmem``), in KiB."""
    fields = (line.split() for line in pathlib.Path("/proc/self/status").read_text().splitlines())
    return {f[0].rstrip(":"): int(f[1]) for f in fields if f and f[0].startswith("Rss")}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def malloc_mib() -> dict[str, float | None]:
    """glibc malloc's figures over all its arenas (``mallinfo2``): in use, free in its heaps, mapped one by one."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return dict.fromkeys(("malloc_used_mib", "malloc_free_mib", "malloc_mapped_mib"))
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        "malloc_used_mib": round(info.uordblks / MIB, 1),
        "malloc_free_mib": round(info.fordblks / MIB, 1),
        "malloc_mapped_mib": round(info.hblkhd / MIB, 1),
    }


def server_group() -> list[int]:
    """tritonserver and its python backend stubs: the server's process group."""
    import tritonnb
    from tritonnb.triton._pytriton import process_group

    server = tritonnb.server()
    pid = server.pid if server is not None else None
    return process_group(pid) if pid else []


def identities(pids: list[int]) -> list[tuple[int, float]]:
    """(pid, create time) of each still-running process, so that a reused pid is not mistaken for it later."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.append((pid, psutil.Process(pid).create_time()))
    return found


def still_running(known: list[tuple[int, float]]) -> list[int]:
    """The processes among ``known`` that still run (zombies do not)."""
    alive = []
    for pid, created in known:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if process.create_time() == created and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def wait_gone(known: list[tuple[int, float]], timeout: float) -> list[int]:
    """Wait until none of ``known`` runs; return those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (alive := still_running(known)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def answers_correctly(port: int) -> bool:
    """One JSON request from this process: does the model answer 2x?"""
    x = [0.5, -1.0, 2.0, 3.25, 0.0, 7.0, -0.125, 1.5]
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": x}]})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        payload = response.read()
    except OSError:
        return False
    finally:
        connection.close()
    if response.status != 200:
        return False
    return json.loads(payload)["outputs"][0]["data"] == [2 * v for v in x]


class Soak:
    """The kernel side of the soak: the shell, the schedule and everything recorded."""

    def __init__(self, args: argparse.Namespace) -> None:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        config = Config()
        config.HistoryManager.hist_file = ":memory:"  # a kernel's history, without touching the user's
        self.shell = InteractiveShell.instance(config=config)
        self.args = args
        self.ports = free_ports(3)
        self.t0 = time.time()
        self.me = psutil.Process()
        self.spec = 0
        self.body = 0
        self.marks: list[Mark] = []
        self.cells: list[CellRun] = []
        self.bursts: list[Burst] = []
        self.skipped_bursts = 0
        self.event_errors: list[str] = []  # an event that raised (the soak goes on)
        self.recoveries: list[Recovery] = []
        self.seen: dict[int, float] = {}  # every process of the server seen: pid -> create time
        self.footprint = Footprint()
        self.logs_tail = ""

    def elapsed(self) -> float:
        return time.time() - self.t0

    def begin(self) -> None:
        """Start the soak's clock now: what happened before (warm-up) gets negative times."""
        shift = time.time() - self.t0
        self.t0 += shift
        for record in (*self.cells, *self.bursts, *self.recoveries):
            record.at_s = round(record.at_s - shift, 2)

    def guarded(self, name: str, action: Callable[[], Any]) -> None:
        """Run one event; an exception is recorded as a problem, and the soak goes on."""
        try:
            action()
        except Exception as error:
            self.event_errors.append(f"{name} at {self.elapsed():.1f} s raised {_short(error)}")
            print(f"  {self.event_errors[-1]}", file=sys.stderr)

    # -- cells and magics ----------------------------------------------------------------------------------
    def run_cell(self, kind: str, text: str, expected: str = "") -> CellRun:
        """Run one cell as a kernel would (with history); record its time, success and the card's action."""
        from IPython.utils.capture import capture_output

        started = time.perf_counter()
        with capture_output() as captured:
            result = self.shell.run_cell(text, store_history=True)
        run = CellRun(kind, round(self.elapsed(), 2), time.perf_counter() - started, bool(result.success))
        cards = [o.data.get("text/plain", "") for o in captured.outputs]
        run.action = sys.intern(cards[0].split(" ", 1)[0]) if cards else ""  # one string for every "swapped"
        if not result.success:
            error = result.error_in_exec or result.error_before_exec
            run.error = f"{_short(error) if error else 'failed'} | {captured.stdout[-300:]}"
        elif expected and run.action != expected:
            run.ok = False
            run.error = f"expected {expected!r}, the card says {cards[0].splitlines()[0] if cards else 'nothing'!r}"
        self.cells.append(run)
        if not run.ok:
            print(f"  cell {kind} at {run.at_s:.1f} s failed: {run.error}", file=sys.stderr)
        return run

    def start(self) -> bool:
        """``%load_ext tritonnb``, ``%triton start`` on free ports, and the first model cell; False if one failed."""
        self.shell.run_line_magic("load_ext", "tritonnb")
        http_port, grpc_port, metrics_port = self.ports
        line = f"%triton start --http-port {http_port} --grpc-port {grpc_port} --metrics-port {metrics_port}"
        if not self.run_cell("start", line).ok:
            return False
        self.observe()
        return self.run_cell("load", cell_text(self.spec, self.body), "loaded").ok

    def swap(self) -> None:
        """Run the cell again with the same signature and the other body: an in-place swap."""
        self.body = 1 - self.body
        self.run_cell("swap", cell_text(self.spec, self.body), "swapped")

    def reshape(self) -> None:
        """Run the cell with the other signature: Triton reloads the model under the same name."""
        self.spec = 1 - self.spec
        self.body = 1 - self.body
        self.run_cell("reshape", cell_text(self.spec, self.body), "reloaded")
        self.observe()

    def perf(self, warmup: bool = False) -> None:
        """One ``%triton_perf`` burst."""
        from IPython.utils.capture import capture_output

        burst = Burst(round(self.elapsed(), 2), ok=False, warmup=warmup)
        try:
            with capture_output():
                result = self.shell.run_line_magic("triton_perf", PERF_LINE)
        except Exception as error:
            burst.error = _short(error)
        else:
            burst.requests = sum(int(r["requests"]) for r in result.rows)
            burst.errors = sum(int(r["errors"]) for r in result.rows)
            burst.throughput = sum(float(r["throughput"]) for r in result.rows)
            burst.ok = burst.errors == 0
            if result.error_samples:
                burst.error = "; ".join(result.error_samples)[:300]
        self.bursts.append(burst)
        if not burst.ok:
            print(f"  perf burst at {burst.at_s:.1f} s failed: {burst.error}", file=sys.stderr)

    # -- kills and marks -----------------------------------------------------------------------------------
    def observe(self) -> list[int]:
        """Note the server's processes and this run's shared memory and model copies; return the processes."""
        group = server_group()
        self.seen.update(identities(group))
        self.footprint.observe(group)
        return group

    def kill(self) -> Recovery:
        """kill -9 tritonserver, then poll until the model answers correctly from a new one."""
        import tritonnb

        server = tritonnb.server()
        if server is None or server.pid is None:
            raise RuntimeError(f"no tritonserver to kill: the server is {server.state if server else 'gone'}")
        old = identities(self.observe())
        recovery = Recovery(time.time(), round(self.elapsed(), 2), server.pid)
        os.kill(recovery.killed_pid, signal.SIGKILL)
        self.recoveries.append(recovery)  # its crash window holds even if what follows raises
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while time.monotonic() < deadline:
            if server.pid not in (None, recovery.killed_pid) and answers_correctly(self.ports[0]):
                recovery.answered_after_s = time.time() - recovery.at
                break
            time.sleep(0.05)
        recovery.new_pid = server.pid
        self._note_supervisor(server, recovery)
        recovery.old_left = len(wait_gone(old, OLD_PROCESSES_WAIT_S))
        self.observe()
        answered = "never" if recovery.answered_after_s is None else f"after {recovery.answered_after_s:.2f} s"
        print(f"  kill at {recovery.at_s:.1f} s: answered {answered} ({recovery.outcome})", file=sys.stderr)
        return recovery

    @staticmethod
    def _note_supervisor(server: Any, recovery: Recovery) -> None:
        """The supervisor's record of this crash, once it has one with an outcome."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            crashes = [c for c in server.status()["crashes"] if c["at"] >= recovery.at - 1]
            if crashes and crashes[-1]["outcome"] != "restarting":
                recovery.outcome = crashes[-1]["outcome"]
                recovery.restarted_after_s = crashes[-1]["recovered_in_s"]
                return
            time.sleep(0.1)
        recovery.outcome = "no outcome recorded"

    def mark(self, label: str) -> Mark:
        """Record the kernel's resources and the server's processes now."""
        group = self.observe()
        shm_ours, shm_all = self.footprint.shm()
        copies_ours, copies_all = self.footprint.copies()
        memory = resident_kib()
        mark = Mark(
            label=label,
            at_s=round(self.elapsed(), 1),
            rss_mib=round(self.me.memory_info().rss / MIB, 1),
            anon_mib=round(memory["RssAnon"] / 1024, 1),
            file_mib=round(memory["RssFile"] / 1024, 1),
            py_blocks=sys.getallocatedblocks(),
            **malloc_mib(),
            threads=self.me.num_threads(),
            fds=len(os.listdir("/proc/self/fd")),
            shm_ours=shm_ours,
            shm_all=shm_all,
            copies_ours=copies_ours,
            copies_all=copies_all,
            server_processes=len(group),
        )
        self.marks.append(mark)
        print(f"  mark {mark}", file=sys.stderr)
        return mark

    def stop(self) -> list[int]:
        """``%triton stop``; wait for the server's threads; return the server processes still running."""
        import tritonnb

        server = tritonnb.server()
        self.observe()
        self.logs_tail = server.logs(LOG_LINES_KEPT) if server is not None else ""
        self.run_cell("stop", "%triton stop")
        if server is not None:
            server.wait_stopped()
        return wait_gone(list(self.seen.items()), OLD_PROCESSES_WAIT_S)


# -- the schedule ------------------------------------------------------------------------------------------
class Schedule:
    """Periodic events on one clock; each runs at its next multiple of its period, at most once when late."""

    PRIORITY = ("mark", "kill", "reshape", "swap", "perf")  # when due together: a mark sees the state before a kill

    def __init__(self, periods: dict[str, float], duration_s: float) -> None:
        self.periods = periods
        self.due = dict(periods)
        self.duration_s = duration_s

    def next(self) -> tuple[str, float] | None:
        """The next event and when it is due, or None when the soak is over."""
        name = min(self.PRIORITY, key=lambda n: (self.due[n], self.PRIORITY.index(n)))
        return None if self.due[name] >= self.duration_s else (name, self.due[name])

    def done(self, name: str, now: float) -> None:
        """``name`` ran; schedule it at its next multiple after ``now`` (a late event is not repeated)."""
        period = self.periods[name]
        self.due[name] = (int(now // period) + 1) * period
        if name == "reshape" and self.due["swap"] <= now:  # the reshape re-ran the cell: the swap due with it is done
            self.done("swap", now)

    def kill_due_within(self, now: float, seconds: float) -> bool:
        return self.due["kill"] < self.duration_s and self.due["kill"] - now < seconds


def warm_up(soak: Soak, seconds: float) -> None:
    """One of each change, a load test and a crash recovery, then a pause: the first of each imports and allocates
    for good (the first recovery reads its code in and grows the heaps of the threads that run it by about 1 MiB)."""
    soak.swap()
    soak.reshape()
    soak.reshape()
    soak.perf(warmup=True)
    soak.kill()
    time.sleep(seconds)


def run_schedule(soak: Soak, args: argparse.Namespace) -> None:
    """Swaps, reshapes, perf bursts, kills and marks until ``--minutes`` are over (counted from ``soak.t0``)."""
    periods = {
        "mark": args.mark_every,
        "kill": args.kill_every,
        "reshape": args.reshape_every,
        "swap": args.swap_every,
        "perf": args.perf_every,
    }
    schedule = Schedule(periods, args.minutes * 60)
    actions: dict[str, Callable[[], Any]] = {
        "mark": lambda: soak.mark(f"{soak.elapsed() / 60:.1f} min"),
        "kill": soak.kill,
        "reshape": soak.reshape,
        "swap": soak.swap,
        "perf": soak.perf,
    }
    while (event := schedule.next()) is not None:
        name, due = event
        time.sleep(max(0.0, due - soak.elapsed()))
        if name == "perf" and schedule.kill_due_within(soak.elapsed(), PERF_GUARD_S):
            soak.skipped_bursts += 1
        else:
            soak.guarded(name, actions[name])
        schedule.done(name, soak.elapsed())
    time.sleep(max(0.0, schedule.duration_s - soak.elapsed()))


# -- the report --------------------------------------------------------------------------------------------
def crash_windows(recoveries: list[Recovery], end: float) -> list[tuple[float, float]]:
    """[kill, first correct answer + WINDOW_TAIL_S] per kill; to the end of the run if it never answered."""
    return [
        (r.at, end if r.answered_after_s is None else r.at + r.answered_after_s + WINDOW_TAIL_S) for r in recoveries
    ]


def split_failures(
    failures: list[tuple[float, str, str]], windows: list[tuple[float, float]]
) -> tuple[list[tuple[float, str, str]], list[tuple[float, str, str]]]:
    """(inside a crash window, outside every one)."""
    inside, outside = [], []
    for failure in failures:
        (inside if any(start <= failure[0] <= end for start, end in windows) else outside).append(failure)
    return inside, outside


def summarize(soak: Soak, clients: dict[str, Any], left: list[int], end: float) -> dict[str, Any]:
    """Everything recorded, as plain data, with the list of problems that make the run fail."""
    windows = crash_windows(soak.recoveries, end)
    inside, outside = split_failures(clients.get("failures", []), windows)
    ok = sum(clients.get("ok", {}).values())
    failed = len(clients.get("failures", [])) + clients.get("dropped", 0)
    timed = [c for c in soak.cells if c.kind in ("swap", "reshape")]
    problems = _problems(soak, clients, ok, outside, left)
    return {
        "args": vars(soak.args),
        "ports": soak.ports,
        "started_at": soak.t0,
        "duration_s": round(end - soak.t0, 1),
        "requests": {
            "total": ok + failed,
            "ok": ok,
            "ok_by_protocol": clients.get("ok", {}),
            "failed": failed,
            "failed_inside_windows": len(inside),
            "failed_outside_windows": len(outside) + clients.get("dropped", 0),  # dropped: time unknown
            "reasons_inside": Counter(reason for _, _, reason in inside).most_common(10),
            "reasons_outside": Counter(reason for _, _, reason in outside).most_common(10),
            "outside": [{"at": t, "at_s": round(t - soak.t0, 2), "protocol": p, "reason": r} for t, p, r in outside][
                :100
            ],
            "slowest": [
                {"seconds": round(s, 3), "sent_at_s": round(t - soak.t0, 2), "protocol": p}
                for s, t, p in clients.get("slowest", [])
            ],
        },
        "windows": [[round(a - soak.t0, 2), round(b - soak.t0, 2)] for a, b in windows],
        "recoveries": [dataclasses.asdict(r) for r in soak.recoveries],
        "cells": {
            "runs": len(soak.cells),
            "failed": sum(not c.ok for c in soak.cells),
            "actions": dict(Counter(c.action for c in soak.cells if c.action)),
            "failed_list": [dataclasses.asdict(c) for c in soak.cells if not c.ok],
            "seconds": {
                kind: [round(c.seconds, 3) for c in timed if c.kind == kind and c.ok] for kind in ("swap", "reshape")
            },
        },
        "perf": {
            "bursts": sum(not b.warmup for b in soak.bursts),
            "skipped": soak.skipped_bursts,
            "failed": sum(not b.ok for b in soak.bursts),
            "list": [dataclasses.asdict(b) for b in soak.bursts],
        },
        "marks": [dataclasses.asdict(m) for m in soak.marks],
        "server_processes_seen": [[pid, created] for pid, created in soak.seen.items()],
        "server_processes_left": left,
        "logs_tail": soak.logs_tail if outside or problems else "",
        "problems": problems,
        "ok": not problems,
    }


def _problems(
    soak: Soak, clients: dict[str, Any], ok: int, outside: list[tuple[float, str, str]], left: list[int]
) -> list[str]:
    problems = []
    if "error" in clients:
        problems.append(f"client process: {clients['error']}")
    if ok == 0:
        problems.append("no request was answered")
    if outside or clients.get("dropped"):
        problems.append(f"{len(outside) + clients.get('dropped', 0)} requests failed outside crash windows")
    problems += [
        f"kill at {r.at_s:.1f} s: no correct answer within {RECOVERY_DEADLINE_S:.0f} s"
        for r in soak.recoveries
        if r.answered_after_s is None
    ]
    problems += [
        f"kill at {r.at_s:.1f} s: {r.old_left} processes of the killed server left"
        for r in soak.recoveries
        if r.old_left
    ]
    problems += [f"cell {c.kind} at {c.at_s:.1f} s: {c.error}" for c in soak.cells if not c.ok]
    problems += soak.event_errors
    problems += [f"perf burst at {b.at_s:.1f} s: {b.error or 'errors'}" for b in soak.bursts if not b.ok]
    if left:
        problems.append(f"server processes left after %triton stop: {left}")
    return problems


def _median_max(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * scale:.2f}{unit} median, {max(values) * scale:.2f}{unit} max"


def print_report(result: dict[str, Any]) -> None:
    """The markdown tables."""
    args, requests = result["args"], result["requests"]
    print(
        f"\nsoak: {args['minutes']:g} min, {HTTP_CLIENTS} HTTP + {GRPC_CLIENTS} gRPC clients; swap every "
        f"{args['swap_every']:g} s, signature change every {args['reshape_every']:g} s, perf burst every "
        f"{args['perf_every']:g} s, kill -9 every {args['kill_every']:g} s\n"
    )
    print(
        "| mark | at (s) | kernel RSS (MiB) | of it: private, files (MiB) | malloc: used, free, mapped (MiB) "
        "| Python blocks | kernel threads | open fds | /dev/shm entries: this run (all) "
        "| model copies in tmp: this run (all) | tritonserver processes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for m in result["marks"]:
        print(
            f"| {m['label']} | {m['at_s']:.0f} | {m['rss_mib']:.1f} | {m['anon_mib']:.1f}, {m['file_mib']:.1f} "
            f"| {m['malloc_used_mib']}, {m['malloc_free_mib']}, {m['malloc_mapped_mib']} "
            f"| {m['py_blocks']} | {m['threads']} | {m['fds']} | "
            f"{m['shm_ours']} ({m['shm_all']}) | {m['copies_ours']} ({m['copies_all']}) | {m['server_processes']} |"
        )
    by_protocol = ", ".join(f"{k} {v}" for k, v in requests["ok_by_protocol"].items())
    print("\n| requests | answered correctly | failed inside crash windows | failed outside (goal: 0) |")
    print("|---|---|---|---|")
    print(
        f"| {requests['total']} | {requests['ok']} ({by_protocol}) "
        f"| {requests['failed_inside_windows']} | {requests['failed_outside_windows']} |"
    )
    for reason, count in requests["reasons_outside"]:
        print(f"\noutside a window, {count}×: {reason}")
    print(
        "\n| kill | at (s; < 0: warm-up) | first correct answer after (s) | supervisor: relaunched after (s) "
        "| old processes left |"
    )
    print("|---|---|---|---|---|")
    for i, r in enumerate(result["recoveries"], 1):
        answered = "never" if r["answered_after_s"] is None else f"{r['answered_after_s']:.2f}"
        restarted = "-" if r["restarted_after_s"] is None else f"{r['restarted_after_s']:.2f}"
        print(f"| {i} | {r['at_s']:.0f} | {answered} | {restarted} ({r['outcome']}) | {r['old_left']} |")
    cells, perf = result["cells"], result["perf"]
    seconds = cells["seconds"]
    print(
        f"\ncells: {cells['runs']} run, {cells['failed']} failed; actions {cells['actions']}; "
        f"swap {_median_max(seconds['swap'], 1000, ' ms')}; signature change {_median_max(seconds['reshape'], 1, ' s')}"
    )
    throughputs = [b["throughput"] for b in perf["list"] if b["ok"] and not b["warmup"]]
    print(
        f"perf bursts: {perf['bursts']} ran, {perf['skipped']} skipped (a kill was due), {perf['failed']} failed; "
        f"throughput {_median_max(throughputs, 1, ' req/s')}"
    )
    slowest = ", ".join(
        f"{s['seconds']:.2f} s ({s['protocol']} at {s['sent_at_s']:.0f} s)" for s in requests["slowest"]
    )
    print(f"slowest correct answers (sent at s into the soak; < 0: warm-up): {slowest or '-'}")
    print(f"server processes left after %triton stop: {result['server_processes_left'] or 'none'}")
    print("\nresult: OK" if result["ok"] else "\nresult: FAILED\n- " + "\n- ".join(result["problems"]))


# -- main --------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the soak after warm-up")
    parser.add_argument("--swap-every", type=float, default=10.0, help="seconds between same-signature swaps")
    parser.add_argument("--reshape-every", type=float, default=120.0, help="seconds between signature changes")
    parser.add_argument("--perf-every", type=float, default=60.0, help="seconds between %%triton_perf bursts")
    parser.add_argument("--kill-every", type=float, default=600.0, help="seconds between kill -9 of tritonserver")
    parser.add_argument("--mark-every", type=float, default=600.0, help="seconds between resource marks")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of plain load after the warm-up changes")
    parser.add_argument("--json", metavar="PATH", help="also write every result as JSON")
    return parser.parse_args(argv)


class ClientProcess:
    """The spawned process running the clients (``run_clients``)."""

    def __init__(self, http_port: int, grpc_port: int) -> None:
        from benchmarks.soak import run_clients  # by its module's name: IPython's shell has replaced ``__main__``

        context = multiprocessing.get_context("spawn")
        self.stop_event, self.queue = context.Event(), context.Queue()
        addresses = (f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
        self.process = context.Process(target=run_clients, args=(*addresses, self.stop_event, self.queue), daemon=True)

    def start(self) -> None:
        """Start the clients; return once each got a correct answer (or warn after a timeout)."""
        self.process.start()
        ready = self.queue.get(timeout=CLIENTS_READY_TIMEOUT_S + 60)
        if ready != "ready":
            print("  warning: not every client got a correct answer before the soak started", file=sys.stderr)

    def stop(self) -> dict[str, Any]:
        """Stop the clients and collect what they saw."""
        self.stop_event.set()
        try:
            clients = self.queue.get(timeout=CLIENT_TIMEOUT_S * 3 + 30)
        except Exception as error:
            clients = {"error": f"no results from the client process: {_short(error)}"}
        self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
        return clients


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the report; 1 if anything failed that should not have."""
    args = parse_args(argv)
    soak = Soak(args)
    print(f"soak: {args.minutes:g} min on ports {soak.ports} (progress on stderr)", file=sys.stderr)
    if not soak.start():
        soak.stop()
        print("result: FAILED: the server or the first model did not start")
        print("\n".join(f"- {c.kind}: {c.error}" for c in soak.cells if not c.ok))
        return 1
    clients = ClientProcess(*soak.ports[:2])
    try:
        clients.start()
        warm_up(soak, args.warmup)
        soak.begin()
        soak.mark("start")
        run_schedule(soak, args)
        soak.mark("end")
    finally:
        seen = clients.stop()
        end = time.time()
        left = soak.stop()
        soak.mark("after stop")
    result = summarize(soak, seen, left, end)
    print_report(result)
    if result["logs_tail"]:
        print(f"\nlast lines of tritonserver's log before the stop:\n{result['logs_tail']}", file=sys.stderr)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
