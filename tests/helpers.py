"""Shared test helpers: free ports, raw HTTP inference, the processes a server owns, running code in a kernel,
waiting for a condition against a deadline, and serving an export with its own serve_here.sh."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psutil

from devtools.ports import free_loopback_ports

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's, installed by scripts/test.sh
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = pathlib.Path(__file__).parent.parent / "artifacts"  # screenshots for people to look at

T = TypeVar("T")


def free_ports(count: int = 3) -> list[int]:
    """Distinct free loopback ports (outside the ephemeral range)."""
    return free_loopback_ports(count)


def port_ports(ports: list[int]) -> dict[str, int]:
    """Keyword arguments for tritonnb.start from three ports."""
    return dict(zip(("http_port", "grpc_port", "metrics_port"), ports))


def infer_json(http_url: str, model: str, inputs: list[dict[str, Any]], timeout: float = 10) -> tuple[int, dict]:
    """POST a KServe v2 JSON request; return (HTTP status, parsed body)."""
    request = urllib.request.Request(
        f"{http_url}/v2/models/{model}/infer",
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def fp32(name: str, shape: list[int], data: list[float]) -> dict[str, Any]:
    """One FP32 input for infer_json."""
    return {"name": name, "datatype": "FP32", "shape": shape, "data": data}


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def command_line(process: psutil.Process) -> list[str]:
    """A process's command line; empty once it has exited (a zombie not yet reaped, or gone)."""
    try:
        return process.cmdline()
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return []


def wait_gone(processes: list[psutil.Process], timeout: float = 15.0) -> list[psutil.Process]:
    """Wait until every process has exited; return the ones still alive after ``timeout``."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def lingering(processes: list[psutil.Process]) -> str:
    """What keeps each process alive, for a failure message: its state, its signals (pending, blocked, caught,
    ignored: did the parent-death SIGTERM arrive?) and where each of its threads waits in the kernel. The processes
    are then killed, so that a failing test leaves nothing behind."""
    lines = []
    for process in processes:
        proc = pathlib.Path(f"/proc/{process.pid}")
        with contextlib.suppress(OSError):
            status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line)
            fields = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "SigIgn")
            signals = " ".join(f"{field}={status[field].strip()}" for field in fields)
            waits = collections.Counter(
                (task / "wchan").read_text() or "-" for task in (proc / "task").iterdir() if (task / "wchan").exists()
            )
            lines.append(f"{process.pid} {command_line(process)[:1]}: {signals}; threads waiting in {dict(waits)}")
        with contextlib.suppress(psutil.Error):
            process.kill()
    return "\n".join(lines)


def wait_until(condition: Callable[[], T], timeout: float, what: str | Callable[[], str], interval: float = 0.05) -> T:
    """Wait until ``condition()`` is truthy and return that value; fail naming ``what`` (a text, or a callable for
    details read at the failure, such as a log) if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what if isinstance(what, str) else what()}")
        time.sleep(interval)
    return value


def port_is_listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_ports_free(ports: list[int], timeout: float = 15.0) -> list[int]:
    """Wait until nothing listens on the ports; return those still listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [p for p in ports if port_is_listening(p)]
        if not busy:
            return []
        time.sleep(0.1)
    return [p for p in ports if port_is_listening(p)]


def kernel_text(message: dict) -> str | None:
    """What a kernel's iopub message shows as text: stream output, or an error's traceback; else None."""
    if message["msg_type"] == "stream":
        return message["content"]["text"]
    if message["msg_type"] == "error":
        return "\n".join(message["content"]["traceback"])
    return None


def run_in_kernel(client: Any, code: str, timeout: float = 120) -> tuple[str, dict]:
    """Run code in a kernel (a jupyter_client blocking client); return its text output and the reply's content."""
    chunks: list[str] = []

    def hook(message: dict) -> None:
        text = kernel_text(message)
        if text is not None:
            chunks.append(text)

    reply = client.execute_interactive(code, output_hook=hook, timeout=timeout)
    return "".join(chunks), reply["content"]


@contextlib.contextmanager
def running(
    command: list[str],
    env: dict[str, str],
    log: pathlib.Path,
    ready: Callable[[], bool],
    ports: list[int],
    **popen: Any,
) -> Iterator[subprocess.Popen]:
    """``command`` in a session of its own, its output in ``log``, until ``ready()``; stopped afterwards by its
    process group, leaving none of ``ports`` taken. Fails with the log's tail if it exits or is not ready in 120 s."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
        )
    try:
        wait_until(lambda: process.poll() is not None or ready(), 120, lambda: log.read_text()[-3000:])
        assert process.poll() is None, log.read_text()[-3000:]
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        assert wait_ports_free(ports) == []


@contextlib.contextmanager
def serve_export(repository: pathlib.Path, cwd: pathlib.Path, log: pathlib.Path) -> Iterator[str]:
    """The export's serve_here.sh on free loopback ports, started from ``cwd`` with tritonnb unimportable; yields
    its HTTP URL once ready, and stops it (by its process group) leaving no port behind."""
    http, grpc, metrics = ports = free_ports()
    blocker = cwd / "no_tritonnb" / "tritonnb"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the exported model must not need tritonnb')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTRITON", "TRITONNB", "AIP_", "PYTHON"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(blocker.parent))
    flags = [f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}", "--exit-timeout-secs=3"]
    flags += ["--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    url = f"http://127.0.0.1:{http}"
    command = ["bash", str(repository / "serve_here.sh"), *flags]
    with running(command, env, log, lambda: port_is_listening(http) and answers_ready(url), ports, cwd=cwd):
        yield url


def answers_ready(url: str) -> bool:
    """Whether the server at ``url`` says it is ready."""
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False
