"""Two real kernels on one machine, both with default ports: own ports and URLs, own panels, and stopping one
leaves the other serving."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from helpers import (
    fp32,
    infer_json,
    kernel_text,
    port_is_listening,
    process_tree,
    run_in_kernel,
    wait_gone,
    wait_ports_free,
)
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

READY_LINE = re.compile(r"Triton \S+ ready: HTTP (\S+), gRPC (\S+), metrics (\S+)")


@dataclasses.dataclass
class Kernel:
    """One kernel, the model it serves, and what its server owns (filled in while it runs)."""

    label: str
    model: str
    factor: float
    manager: KernelManager
    client: BlockingKernelClient
    pid: int = 0
    served: list[psutil.Process] = dataclasses.field(default_factory=list)
    ports: list[int] = dataclasses.field(default_factory=list)


def _collect(client: BlockingKernelClient, msg_id: str, timeout: float = 180) -> tuple[str, dict]:
    """Wait for an execute request sent earlier: its stream output (and tracebacks) and its reply's content."""
    deadline = time.monotonic() + timeout
    chunks: list[str] = []
    while True:
        message = client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if message["parent_header"].get("msg_id") != msg_id:
            continue
        text = kernel_text(message)
        if text is not None:
            chunks.append(text)
        elif message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
            break
    while True:
        reply = client.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return "".join(chunks), reply["content"]


def _last_json(out: str) -> Any:
    """The JSON printed on the last line of a cell's output."""
    return json.loads(out.strip().splitlines()[-1])


def _http_status(url: str) -> int:
    """The HTTP status of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _answers(http_url: str, kernel: Kernel) -> bool:
    """Whether the server at ``http_url`` answers the kernel's model with the right numbers."""
    status, body = infer_json(http_url, kernel.model, [fp32("x", [1, 2], [1.5, -2.0])])
    return status == 200 and body["outputs"][0]["data"] == [1.5 * kernel.factor, -2.0 * kernel.factor]


def _diagnosis(kernel: Kernel) -> str:
    """The state and log tail of a kernel's server, for a failure message."""
    code = (
        "from tritonnb import state\n"
        "s = state.server\n"
        "print('no server object' if s is None else f'state {s.state}, {s.http_url}\\n{s.logs(15)}')"
    )
    out, _ = run_in_kernel(kernel.client, code)
    return out


def _ports(status: dict) -> list[int]:
    """The HTTP, gRPC and metrics ports of a server's ``status()``."""
    return [urllib.parse.urlsplit(status[key]).port for key in ("http_url", "grpc_url", "metrics_url")]


@pytest.fixture
def kernels() -> Iterator[list[Kernel]]:
    """Two fresh kernels with tritonnb loaded; shut down afterwards, leaving no server process and no port."""
    started: list[Kernel] = []
    try:
        for label, model, factor in (("A", "double", 2.0), ("B", "triple", 3.0)):
            manager = KernelManager(kernel_name="python3")
            manager.start_kernel()
            started.append(Kernel(label, model, factor, manager, manager.client()))
        for kernel in started:
            kernel.client.start_channels()
            kernel.client.wait_for_ready(timeout=60)
            out, reply = run_in_kernel(
                kernel.client, "%load_ext tritonnb\nimport json, os, tritonnb\nprint(os.getpid())"
            )
            assert reply["status"] == "ok", out
            kernel.pid = int(out.strip().splitlines()[-1])
        yield started
    finally:
        for kernel in started:
            kernel.client.stop_channels()
            if kernel.manager.is_alive():
                kernel.manager.shutdown_kernel(now=False)
        processes = [p for kernel in started for p in kernel.served]
        assert wait_gone(processes, timeout=20) == [], "tritonserver or stub processes outlived their kernel"
        assert wait_ports_free([p for kernel in started for p in kernel.ports]) == []


def test_two_kernels_with_default_ports_serve_side_by_side(kernels: list[Kernel]) -> None:
    """Both kernels start on default ports at once; each serves and watches its own; stopping A leaves B serving."""
    a, b = kernels
    cells = {
        k.label: f"%%triton_model {k.model} --input x:float32[2] --output y:float32[2]\n"
        f"def {k.model}(x):\n    return x * {k.factor:g}\n"
        for k in kernels
    }
    began = time.monotonic()
    sent = [(k, k.client.execute(cells[k.label])) for k in kernels]  # both before either reply: a start race
    outputs: dict[str, str] = {}
    replies: dict[str, dict] = {}
    for kernel, msg_id in sent:
        outputs[kernel.label], replies[kernel.label] = _collect(kernel.client, msg_id)
    for kernel in kernels:  # all each kernel started, for the final check, before anything can fail
        kernel.served = process_tree(kernel.pid)[1:]
    for kernel in kernels:
        assert replies[kernel.label]["status"] == "ok", (
            f"kernel {kernel.label}'s %%triton_model cell failed:\n{outputs[kernel.label]}\n"
            f"its server: {_diagnosis(kernel)}"
        )
    print(f"\nboth served {time.monotonic() - began:.1f} s after the cells were sent")
    for kernel in kernels:
        print(f"kernel {kernel.label}: {outputs[kernel.label].strip()}")

    # each server: its own ports, its own URLs printed in its own cell, its own model only
    statuses: dict[str, dict] = {}
    for kernel in kernels:
        out, reply = run_in_kernel(kernel.client, "print(json.dumps(tritonnb.server().status()))")
        assert reply["status"] == "ok", out
        status = statuses[kernel.label] = _last_json(out)
        assert status["state"] == "READY" and list(status["models"]) == [kernel.model]
        kernel.ports = _ports(status)
        tree = process_tree(status["pid"])
        assert len(tree) >= 2, "expected tritonserver and at least one python backend stub"
        assert set(tree) <= set(kernel.served), f"kernel {kernel.label}'s server started after its cell"
        kernel.served = tree
        printed = READY_LINE.findall(outputs[kernel.label])
        own = (status["http_url"], status["grpc_url"].removeprefix("grpc://"), status["metrics_url"])
        assert printed == [own], f"kernel {kernel.label} printed {printed}, its server is at {own}"
    for endpoint, port_a, port_b in zip(("http", "grpc", "metrics"), a.ports, b.ports):
        assert port_a != port_b, f"both kernels' {endpoint} servers on port {port_a}"
    assert len(set(a.ports + b.ports)) == 6, f"ports overlap: A {a.ports}, B {b.ports}"
    for kernel, other in ((a, b), (b, a)):
        http_url = statuses[kernel.label]["http_url"]
        assert _answers(http_url, kernel), f"kernel {kernel.label}'s server does not answer {kernel.model}"
        assert _http_status(f"{http_url}/v2/models/{other.model}/ready") != 200, (
            f"kernel {kernel.label}'s server lists kernel {other.label}'s model {other.model}"
        )

    # each panel watches its own server only
    panel_code = (
        "from tritonnb.observe.monitor import Monitor\n"
        "p = tritonnb.panel()\n"
        "snapshot = Monitor(p.target).poll()\n"
        "print(json.dumps({'panel': p.target.http_url, 'panel_metrics': p.target.metrics_url,"
        " 'server': tritonnb.server().http_url, 'metrics': tritonnb.server().metrics_url,"
        " 'state': snapshot.state, 'models': sorted(snapshot.models)}))\n"
        "p.close()"
    )
    for kernel in kernels:
        out, reply = run_in_kernel(kernel.client, panel_code)
        assert reply["status"] == "ok", out
        seen = _last_json(out)
        assert seen["panel"] == seen["server"] == statuses[kernel.label]["http_url"], seen
        assert seen["panel_metrics"] == seen["metrics"] == statuses[kernel.label]["metrics_url"], seen
        assert seen["state"] == "READY" and seen["models"] == [kernel.model], f"kernel {kernel.label}: {seen}"
        out, reply = run_in_kernel(kernel.client, "%triton panel")
        assert reply["status"] == "ok", f"kernel {kernel.label}'s %triton panel failed:\n{out}"

    # stopping A leaves B serving
    out, reply = run_in_kernel(a.client, "%triton stop")
    assert reply["status"] == "ok" and "Triton stopped" in out, out
    assert wait_gone(a.served, timeout=20) == [], "kernel A's tritonserver or stubs outlived %triton stop"
    assert wait_ports_free(a.ports) == [], "kernel A's ports still listen after %triton stop"
    out, reply = run_in_kernel(a.client, "print(tritonnb.server())")
    assert reply["status"] == "ok" and out.strip() == "None", out
    assert all(p.is_running() for p in b.served), "kernel B's processes died when kernel A stopped"
    assert all(port_is_listening(port) for port in b.ports), f"kernel B's ports {b.ports} stopped listening"
    b_url = statuses["B"]["http_url"]
    answered = sum(_answers(b_url, b) for _ in range(20))
    assert answered == 20, f"kernel B answered {answered} of 20 requests after kernel A stopped"
    out, reply = run_in_kernel(
        b.client,
        "print(json.dumps({'state': tritonnb.server().state,"
        " 'models': sorted(Monitor(tritonnb.panel().target).poll().models)}))",
    )
    assert reply["status"] == "ok", out
    assert _last_json(out) == {"state": "READY", "models": [b.model]}
    print(f"test body took {time.monotonic() - began:.1f} s")
