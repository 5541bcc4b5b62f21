"""What live panels cost, measured in a real Jupyter kernel: its CPU time with no panel, one and three panels.

Run: ``.venv/bin/python -m benchmarks.panel_cost [--seconds 20]``. Prints a markdown table. The model gets a
steady trickle of requests from this process in every phase, so the differences are what the panels add
(polling, rendering, and sending widget updates over the kernel's comms).
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import numpy as np
import psutil
from jupyter_client.manager import KernelManager

from devtools.ports import free_loopback_ports as free_ports


def _run(client, code: str) -> str:
    out: list[str] = []
    client.execute_interactive(
        code,
        timeout=120,
        output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
    )
    return "".join(out)


def _poller(client) -> dict:
    """The shared refresh threads' polls and CPU seconds so far, read in the kernel."""
    code = (
        "import json\nfrom tritonnb import state\n_p = list(state.pollers.values())\n"
        "print(json.dumps({'polls': sum(p.polls for p in _p), 'cpu': sum(p.cpu_seconds for p in _p)}))"
    )
    return json.loads(_run(client, code))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    http, grpc, metrics = free_ports(3)

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(timeout=60)
    stop = threading.Event()
    try:
        _run(
            client, f"%load_ext tritonnb\n%triton start --http-port {http} --grpc-port {grpc} --metrics-port {metrics}"
        )
        _run(
            client, "%%triton_model double --input x:float32[4] --output y:float32[4]\ndef double(x):\n    return x * 2"
        )
        kernel = psutil.Process(int(_run(client, "import os; print(os.getpid())").strip()))

        def trickle() -> None:
            import tritonclient.http as httpclient

            remote = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
            x = httpclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.ones((1, 4), np.float32))
            while not stop.is_set():
                remote.infer("double", [x])
                time.sleep(0.05)

        threading.Thread(target=trickle, daemon=True).start()
        rows = []
        for panels in (0, 1, 3):
            if panels:
                _run(
                    client,
                    f"import tritonnb\n_panels = [tritonnb.panel(interval_s=1.0) for _ in range({panels})]\n"
                    "for _p in _panels:\n    display(_p)",
                )
            time.sleep(2)
            poller_before = _poller(client)
            before = kernel.cpu_times()
            time.sleep(args.seconds)
            after = kernel.cpu_times()
            poller_after = _poller(client)
            cpu = (after.user - before.user) + (after.system - before.system)
            polls = poller_after["polls"] - poller_before["polls"]
            rows.append((panels, cpu, poller_after["cpu"] - poller_before["cpu"], polls))
            if panels:
                _run(client, "for _p in _panels:\n    _p.close()")
        base = rows[0][1]
        print(
            f"| panels open | kernel CPU in {args.seconds:.0f} s | added by panels | share of one core "
            "| refresh thread: polls, CPU | refresh thread's share of one core |"
        )
        print("|---|---|---|---|---|---|")
        for panels, cpu, thread_cpu, polls in rows:
            added = cpu - base
            print(
                f"| {panels} | {cpu * 1000:.0f} ms | {added * 1000:+.0f} ms | {added / args.seconds * 100:+.2f}% "
                f"| {polls}, {thread_cpu * 1000:.0f} ms | {thread_cpu / args.seconds * 100:.2f}% |"
            )
        print(
            "\nThe refresh thread's CPU (time.thread_time around each poll and the panels' updates: metrics, tables,"
            "\nchart, widget messages) is the panels' own cost; the kernel's total also moves with the requests served."
        )
    finally:
        stop.set()
        client.stop_channels()
        manager.shutdown_kernel(now=False)


if __name__ == "__main__":
    main()
