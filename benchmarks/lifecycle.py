"""Lifecycle figures: cold start, hot swap, reload on a signature change, stop, kernel shutdown; failures under load.

Run: ``.venv/bin/python -m benchmarks.lifecycle [--clients 4] [--swaps 20]``. Prints a markdown table.
Each figure comes from this one run on this machine: compare numbers only within a run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time

import numpy as np

BODY = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]}]})


class Load:
    """Closed-loop HTTP clients calling one model until stopped; counts answers and failures."""

    def __init__(self, port: int, model: str, clients: int) -> None:
        self.port, self.model = port, model
        self.ok = 0
        self.failed: list[str] = []
        self.last_value: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _loop(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self._stop.is_set():
            try:
                connection.request("POST", f"/v2/models/{self.model}/infer", BODY, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                with self._lock:
                    if response.status == 200:
                        self.ok += 1
                        self.last_value = json.loads(payload)["outputs"][0]["data"][0]
                    else:
                        self.failed.append(f"{response.status} {payload[:200]!r}")
            except OSError as error:
                with self._lock:
                    self.failed.append(repr(error))
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def wait_for_value(load: Load, value: float, timeout: float = 30) -> float:
    """Seconds until the load sees ``value`` come back."""
    started = time.perf_counter()
    while load.last_value != value and time.perf_counter() - started < timeout:
        time.sleep(0.0005)
    return time.perf_counter() - started


def cold_start() -> float:
    """Seconds from ``%load_ext tritonnb`` to the first answered request, in a real IPython shell."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    shell = InteractiveShell.instance()
    started = time.perf_counter()
    with capture_output():  # the card and start-up message are not part of the table
        shell.run_line_magic("load_ext", "tritonnb")
        shell.run_cell_magic(
            "triton_model", "bench --input x:float32[4] --output y:float32[4]", "def bench(x):\n    return x * 1\n"
        )
    import tritonnb

    tritonnb.client("bench")(np.ones((1, 4), np.float32))
    return time.perf_counter() - started


def kernel_shutdown() -> float:
    """Seconds from asking a real Jupyter kernel (serving a model) to shut down until its tritonserver, stubs and
    every other child process are gone."""
    import psutil
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        code = (
            "%load_ext tritonnb\n"
            "import tritonnb\n"
            "tritonnb.bind(lambda x: x, 'k', inputs=['x:float32[4]'], outputs=['y:float32[4]'])"
        )
        reply = client.execute_interactive(code, timeout=120, output_hook=lambda message: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        kernel = psutil.Process(manager.provisioner.pid)
        processes = [kernel, *kernel.children(recursive=True)]
        started = time.perf_counter()
        manager.shutdown_kernel(now=False)
        _, alive = psutil.wait_procs(processes, timeout=30)
        assert not alive, alive
        return time.perf_counter() - started
    finally:
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=20)
    parser.add_argument("--reloads", type=int, default=3)
    args = parser.parse_args()

    import tritonnb

    rows: list[tuple[str, str]] = []
    rows.append(("cold start: load_ext to first answered request", f"{cold_start():.2f} s"))
    server = tritonnb.server()
    port = int(server.http_url.rsplit(":", 1)[1])
    spec = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}

    bind_s, answer_s = [], []
    with Load(port, "bench", args.clients) as load:
        time.sleep(0.5)
        for factor in range(2, args.swaps + 2):
            started = time.perf_counter()
            tritonnb.bind(lambda x, f=factor: x * f, "bench", **spec)
            bind_s.append(time.perf_counter() - started)
            answer_s.append(wait_for_value(load, float(factor)))
            time.sleep(0.1)
    rows.append(
        (
            f"hot swap (same signature), median of {args.swaps}: bind returns",
            f"{statistics.median(bind_s) * 1000:.2f} ms",
        )
    )
    rows.append(
        (
            "hot swap: bind start to first answer from the new function (under load)",
            f"{statistics.median(answer_s) * 1000:.1f} ms median, {max(answer_s) * 1000:.1f} ms max",
        )
    )
    rows.append(
        (
            f"failed requests during {args.swaps} swaps, {args.clients} HTTP clients",
            f"{len(load.failed)} of {load.ok + len(load.failed)}",
        )
    )

    reload_s = []
    with Load(port, "bench", args.clients) as load:
        time.sleep(0.5)
        for i in range(args.reloads):
            dims = "[-1]" if i % 2 == 0 else "[4]"
            started = time.perf_counter()
            card = tritonnb.bind(
                lambda x, f=100 + i: x * f, "bench", inputs=[f"x:float32{dims}"], outputs=[f"y:float32{dims}"]
            )
            assert card.result.action == "reloaded"
            reload_s.append(time.perf_counter() - started)
            wait_for_value(load, float(100 + i))
            time.sleep(0.3)
    rows.append(
        (
            f"re-bind on a signature change, median of {args.reloads}",
            f"{statistics.median(reload_s):.2f} s (max {max(reload_s):.2f} s)",
        )
    )
    rows.append(
        (
            f"failed requests during {args.reloads} signature changes",
            f"{len(load.failed)} of {load.ok + len(load.failed)}",
        )
    )
    if load.failed:
        print("first failures:", load.failed[:3])
    stop_s = tritonnb.stop()
    started = time.perf_counter()
    server.wait_stopped()
    rows.append(("stop: returns with tritonserver and its stubs gone, ports free", f"{stop_s:.2f} s"))
    rows.append(
        (
            "stop: until the model threads have finished and the folder is gone",
            f"{stop_s + time.perf_counter() - started:.2f} s",
        )
    )
    rows.append(("kernel shutdown to every process gone", f"{kernel_shutdown():.2f} s"))

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
