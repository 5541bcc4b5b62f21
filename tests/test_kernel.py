"""Kernel-level behaviour in a real Jupyter kernel: interrupt keeps serving; shutdown, restart and kill -9 clean up."""

from __future__ import annotations

import json
import os
import pathlib
import queue
import signal
import time
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import (
    command_line,
    fp32,
    free_ports,
    infer_json,
    kernel_text,
    lingering,
    process_tree,
    run_in_kernel,
    wait_gone,
    wait_ports_free,
    wait_until,
)
from jupyter_client.manager import KernelManager

KERNEL_END_TIMEOUT_S = 20  # tritonserver's exit timeout (5 s) and its stubs' finalize, with room for a busy machine


def assert_gone(processes: list, owner: str) -> None:
    """Fail, saying what keeps them, if any of the processes still runs ``KERNEL_END_TIMEOUT_S`` after ``owner``
    ended (they are then killed: a failing test leaves nothing behind)."""
    left = wait_gone(processes, timeout=KERNEL_END_TIMEOUT_S)
    assert left == [], f"processes outlived {owner}:\n{lingering(left)}"


@pytest.fixture
def kernel():
    """A fresh kernel that has loaded tritonnb and serves ``double`` on free ports."""
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    ports = free_ports()
    http, grpc, metrics = ports
    run_in_kernel(
        client, f"%load_ext tritonnb\n%triton start --http-port {http} --grpc-port {grpc} --metrics-port {metrics}"
    )
    out, reply = run_in_kernel(
        client, "%%triton_model double --input x:float32[2] --output y:float32[2]\ndef double(x):\n    return x * 2\n"
    )
    assert reply["status"] == "ok", out
    out, _ = run_in_kernel(
        client, "import os, json, tritonnb\nprint(json.dumps({'kernel': os.getpid(), 'triton': tritonnb.server().pid}))"
    )
    pids = json.loads(out.strip().splitlines()[-1])
    served = process_tree(pids["triton"])
    assert len(served) >= 2, "expected tritonserver and at least one python backend stub"
    yield SimpleNamespace(manager=manager, client=client, pids=pids, served=served, http=http, ports=ports)
    client.stop_channels()
    if manager.is_alive():
        manager.shutdown_kernel(now=True)
    assert_gone(served, "the kernel")


def _answers(http_port: int) -> bool:
    status, body = infer_json(f"http://127.0.0.1:{http_port}", "double", [fp32("x", [1, 2], [1, 2])])
    return status == 200 and body["outputs"][0]["data"] == [2, 4]


def _wait_for_output(client: Any, msg_id: str, text: str, timeout: float = 30) -> None:
    """Wait until the cell sent as ``msg_id`` printed ``text``: the kernel is running it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            message = client.get_iopub_msg(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError(f"not within {timeout:g} s: the cell printed {text!r}") from None
        if message["parent_header"].get("msg_id") == msg_id and text in (kernel_text(message) or ""):
            return


def test_interrupt_keeps_server_and_models_serving(kernel):
    cell = kernel.client.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    _wait_for_output(kernel.client, cell, "sleeping")
    kernel.manager.interrupt_kernel()
    reply = kernel.client.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
    assert all(p.is_running() for p in kernel.served)
    assert _answers(kernel.http)
    out, _ = run_in_kernel(kernel.client, "print(tritonnb.server().state)")
    assert out.strip() == "READY"


def test_interrupt_during_a_model_reload_leaves_it_serving(kernel):
    for delay_s, dims in ((0.05, "-1"), (0.2, "2"), (0.4, "-1"), (0.8, "2")):  # at several points of a reload
        kernel.client.execute(
            f"%%triton_model double --input x:float32[{dims}] --output y:float32[{dims}]\n"
            "def double(x):\n    return x * 2\n"
        )
        time.sleep(delay_s)
        kernel.manager.interrupt_kernel()
        kernel.client.get_shell_msg(timeout=60)
        assert _alive(kernel.pids["triton"])
        assert _answers(kernel.http), f"not serving after an interrupt {delay_s} s into a reload"


def _answers_now(http_port: int) -> bool:
    """Like _answers, False while nothing (or a dying server) answers."""
    try:
        return _answers(http_port)
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Whether a process runs (and is no zombie)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("how", ["shutdown", "restart", "kill -9"])
def test_kernel_end_leaves_no_process_and_frees_ports(kernel, how):
    assert _answers(kernel.http)
    started = time.monotonic()
    if how == "shutdown":
        kernel.manager.shutdown_kernel(now=False)
    elif how == "restart":
        kernel.manager.restart_kernel(now=False)
    else:
        os.kill(kernel.pids["kernel"], signal.SIGKILL)
    assert_gone(kernel.served, f"the kernel ({how})")
    gone_after = time.monotonic() - started
    assert wait_ports_free(kernel.ports) == []
    print(f"{how}: tritonserver and stubs gone {gone_after:.1f} s after the kernel ended")


def test_kernel_shutdown_with_a_client_connected_leaves_no_stub_behind(kernel):
    """An open HTTP connection (a browser tab, a script's client) makes tritonserver's graceful exit wait its whole
    exit timeout; Jupyter kills a kernel that takes over 5 s to shut down, and the stubs were then left running."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", kernel.http, timeout=10)
    try:
        connection.request("GET", "/v2/health/ready")  # HTTP/1.1: the connection stays open afterwards
        assert connection.getresponse().read() == b""
        started = time.monotonic()
        kernel.manager.shutdown_kernel(now=False)
        print(f"kernel shut down in {time.monotonic() - started:.1f} s")
        assert_gone(kernel.served, "the kernel's shutdown")
    finally:
        connection.close()
    assert wait_ports_free(kernel.ports) == []


def _server_home(kernel) -> pathlib.Path:
    out, _ = run_in_kernel(kernel.client, "print(tritonnb.server().home)")
    home = pathlib.Path(out.strip().splitlines()[-1])
    assert home.is_dir()
    return home


def test_a_kernel_shutdown_stops_the_server_before_the_kernel_tears_down(kernel, tmp_path):
    """Jupyter sends SIGTERM to a kernel still running 2.5 s after its shutdown request, and a kernel with torch
    loaded takes 1-3 s to tear down: the shutdown request itself stops the server, before any atexit handler runs."""
    home = _server_home(kernel)
    seen = tmp_path / "state-at-exit.txt"
    code = (
        "import atexit\nserver = tritonnb.server()\n"
        f"atexit.register(lambda: open({str(seen)!r}, 'w').write(server.state))"
    )
    run_in_kernel(kernel.client, code)  # registered after the server's own: atexit would run it first
    kernel.manager.shutdown_kernel(now=False)
    assert seen.read_text() == "STOPPED"
    assert_gone(kernel.served, "the kernel's shutdown")
    assert not home.exists()


def test_sigterm_to_the_kernel_stops_the_server_and_leaves_nothing(kernel):
    """SIGTERM (Jupyter's second step, docker stop, systemd) skips atexit: tritonnb's handler stops the server, then
    the kernel ends as SIGTERM ends a process."""
    home = _server_home(kernel)
    os.kill(kernel.pids["kernel"], signal.SIGTERM)
    wait_until(lambda: not kernel.manager.is_alive(), 20, "the kernel ended after SIGTERM", interval=0.1)
    assert kernel.manager.provisioner.process.returncode == -signal.SIGTERM
    assert_gone(kernel.served, "the kernel")
    assert not home.exists(), f"{home} outlived the kernel"
    assert wait_ports_free(kernel.ports) == []


def test_tritonserver_restarted_after_a_crash_still_ends_with_the_kernel(kernel):
    from helpers import process_tree as tree

    os.kill(kernel.pids["triton"], signal.SIGKILL)
    wait_until(lambda: _answers_now(kernel.http), 60, "the model answered again after the crash", interval=0.1)
    out, _ = run_in_kernel(kernel.client, "print(tritonnb.server().pid, tritonnb.server().status()['restarts'])")
    pid, restarts = map(int, out.split())
    assert pid != kernel.pids["triton"] and restarts == 1
    restarted = tree(pid)  # started by the supervisor thread, not the kernel's main thread
    os.kill(kernel.pids["kernel"], signal.SIGKILL)
    assert_gone(restarted, "the kernel (the restarted tritonserver)")
    assert wait_ports_free(kernel.ports) == []


def test_the_next_start_removes_what_a_killed_kernel_left(kernel):
    import pathlib

    from helpers import free_ports, port_ports

    import tritonnb

    command_lines = [command_line(p) for p in kernel.served]
    stubs = [argv for argv in command_lines if argv and argv[0].endswith("triton_python_backend_stub")]
    copies = {pathlib.Path(argv[1]).parent.parent for argv in stubs}
    assert copies and all(c.name.startswith("folder") for c in copies), copies
    os.kill(kernel.pids["kernel"], signal.SIGKILL)
    assert_gone(kernel.served, "the killed kernel")
    tritonnb.start(**port_ports(free_ports()))  # a new server, in another process, cleans up after the dead one
    try:
        assert not any(c.exists() for c in copies), "the killed kernel's model copies are still there"
        leftover = list(
            pathlib.Path(os.environ.get("PYTRITON_HOME", pathlib.Path.home() / ".cache/pytriton")).glob(
                f"tritonnb-{kernel.pids['kernel']}-*"
            )
        )
        assert leftover == [], leftover
    finally:
        tritonnb.stop()


def test_a_kernel_serves_without_importing_the_jupyter_server_or_matplotlib(kernel):
    """What made a kernel's first answer seconds slower than a plain process's: finding the kernel's Jupyter server
    imported all of jupyter_server, and a model's live strip imported matplotlib with the dashboard."""
    code = (
        "import sys\n"
        "print(sorted(m for m in ('jupyter_server.serverapp', 'matplotlib') if m in sys.modules), "
        "type(tritonnb.state.strips.get('double')).__name__)"
    )
    out, _ = run_in_kernel(kernel.client, code)
    assert out.strip().splitlines()[-1] == "[] ModelStrip"
