"""The server's lifecycle on a real tritonserver: ports, addresses, configuration precedence, logs, stop."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from helpers import fp32, free_ports, infer_json, port_ports, process_tree, wait_gone, wait_ports_free, wait_until
from tritonclient.utils import InferenceServerException

import tritonnb
from tritonnb.errors import PortBusyError
from tritonnb.triton.settings import resolve_settings


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", None) or process.connections  # psutil < 6
    return {
        (c.laddr.ip.removeprefix("::ffff:"), c.laddr.port)  # gRPC listens on an IPv4-mapped address
        for c in connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture
def own_server():
    """Stops whatever server the test started, and checks that nothing it ran is left."""
    yield
    server = tritonnb.server()
    processes = process_tree(server.pid) if server is not None and server.state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == []


def test_loopback_by_default_with_status_logs_and_clean_stop(own_server, capfd):
    ports = free_ports()
    server = tritonnb.start(**port_ports(ports))
    assert _listening_addresses(server.pid) == {("127.0.0.1", p) for p in ports}
    status = server.status()
    assert status["state"] == "READY" and status["version"].startswith("2.")
    assert status["http_url"] == f"http://127.0.0.1:{ports[0]}"
    assert status["grpc_url"] == f"grpc://127.0.0.1:{ports[1]}"
    assert status["metrics_url"] == f"http://127.0.0.1:{ports[2]}/metrics"
    assert len(server.access_token) > 20
    assert "Started HTTPService" in server.logs(400)
    assert tritonnb.start() is server  # no options: the running server
    with pytest.raises(RuntimeError, match="already runs"):
        tritonnb.start(http_port=ports[0] + 1)
    processes = process_tree(server.pid)
    seconds = tritonnb.stop()
    assert seconds is not None and seconds > 0
    assert tritonnb.server() is None and server.state == "STOPPED"
    assert wait_gone(processes) == []
    assert wait_ports_free(ports) == []
    assert server.wait_stopped() and not server.home.exists()
    assert server._process.stopped_gracefully  # tritonserver logged the line the fast stop waits for
    out, err = capfd.readouterr()
    assert "NVML" not in out + err and "tritonserver" not in out + err  # its log went to the file, not the cell


def test_start_removes_what_killed_servers_left_behind_and_nothing_else(own_server):
    from pytriton.constants import PYTRITON_HOME

    from tritonnb.triton.leftovers import OWNER_FILE, pid_namespace

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    folders = {
        "stale": (dead_pid, pid_namespace()),  # ours, and its process is gone
        "alive": (os.getppid(), pid_namespace()),  # its process runs
        "other": (dead_pid, "pid:[1]"),  # another pid namespace (a container sharing /dev/shm): not provably gone
    }
    paths, regions = {}, {}
    for kind, (pid, namespace) in folders.items():
        paths[kind] = PYTRITON_HOME / f"tritonnb-{pid}-{kind}"
        (paths[kind] / "sockets").mkdir(parents=True)
        prefix = f"pytrtion{pid}-{kind}-"
        regions[kind] = pathlib.Path(f"/dev/shm/{prefix}0000")
        regions[kind].write_bytes(b"")
        owner = {"pid": pid, "pid_namespace": namespace, "shm_prefixes": [prefix]}
        (paths[kind] / OWNER_FILE).write_text(json.dumps(owner))
    try:
        server = tritonnb.start(**port_ports(free_ports()))
        assert not paths["stale"].exists() and not regions["stale"].exists()
        for kind in ("alive", "other"):
            assert paths[kind].exists() and regions[kind].exists(), kind
        assert server.home.name.startswith(f"tritonnb-{os.getpid()}-")
    finally:
        for kind in folders:
            shutil.rmtree(paths[kind], ignore_errors=True)
            regions[kind].unlink(missing_ok=True)


def test_busy_default_port_moves_on_and_says_so():
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):  # already taken by another server on this machine: just as busy
            holder.bind(("127.0.0.1", 8000))
            holder.listen()
        settings = resolve_settings()
        assert settings.port("http") != 8000
        assert len({settings.port(e) for e in ("http", "grpc", "metrics")}) == 3
        assert any("http port 8000 is busy" in note for note in settings.notes)


def test_busy_explicit_port_is_an_error():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortBusyError, match=f"http port {port} on 127.0.0.1 is already in use"):
            resolve_settings(http_port=port)
        with pytest.raises(PortBusyError, match="grpc port"):
            resolve_settings(grpc_port=port)


def test_precedence_argument_over_environment_over_default(monkeypatch):
    http, grpc, metrics = free_ports()
    monkeypatch.setenv("PYTRITON_TRITON_CONFIG_HTTP_PORT", str(http))
    monkeypatch.setenv("PYTRITON_TRITON_CONFIG_EXIT_TIMEOUT_SECS", "3")
    settings = resolve_settings(grpc_port=grpc, metrics_port=metrics)
    assert settings.port("http") == http and settings.config["exit_timeout_secs"] == 3
    settings = resolve_settings(http_port=metrics, grpc_port=grpc)
    assert settings.port("http") == metrics
    with socket.socket() as holder:  # a port named by the environment is explicit too: busy means error
        holder.bind(("127.0.0.1", http))
        holder.listen()
        with pytest.raises(PortBusyError):
            resolve_settings()


def test_public_binds_all_interfaces_and_says_so(own_server):
    ports = free_ports()
    server = tritonnb.start(public=True, **port_ports(ports))
    listening = _listening_addresses(server.pid)
    assert {port for _, port in listening} == set(ports)
    assert {address for address, _ in listening} <= {"0.0.0.0", "::"}  # gRPC takes the dual-stack wildcard
    assert server.status()["public"] is True
    assert any("all interfaces" in note for note in server.settings.notes)


def test_restart_rebinds_models_and_dead_server_reports_down(own_server):
    regions_before = set(pathlib.Path("/dev/shm").glob("psm_*"))
    server = tritonnb.start(**port_ports(free_ports()))
    tritonnb.bind(lambda x: x + 10, "plus10", inputs=["x:float32[1]"], outputs=["y:float32[1]"])
    old_pid = server.pid
    assert tritonnb.restart() > 0
    assert server.pid != old_pid and server.state == "READY"
    status, body = infer_json(server.http_url, "plus10", [fp32("x", [1, 1], [1])])
    assert status == 200 and body["outputs"][0]["data"] == [11]

    processes = process_tree(server.pid)
    shm_prefix = server._process._python_backend_config["shm-region-prefix-name"]
    assert list(pathlib.Path("/dev/shm").glob(f"{shm_prefix}*"))
    os.kill(server.pid, signal.SIGKILL)
    assert wait_gone(processes[:1]) == []
    deadline = time.monotonic() + 10
    while server.state != "DOWN" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.state == "DOWN"
    with pytest.raises(RuntimeError, match="DOWN"):
        tritonnb.bind(lambda x: x, "late", inputs=["x:float32[1]"], outputs=["y:float32[1]"])
    server.restart()
    assert server.state == "READY"
    assert not list(pathlib.Path("/dev/shm").glob(f"{shm_prefix}*"))  # the killed server's regions are unlinked
    status, body = infer_json(server.http_url, "plus10", [fp32("x", [1, 1], [5])])
    assert status == 200 and body["outputs"][0]["data"] == [15]
    assert wait_gone(processes) == []  # the killed server's stubs did not linger
    tritonnb.stop()
    assert server.wait_stopped()
    assert set(pathlib.Path("/dev/shm").glob("psm_*")) - regions_before == set()  # not even the killed stubs'


def test_script_mode_honours_pytriton_home_and_stops_on_ctrl_c(tmp_path):
    http, grpc, metrics = free_ports()
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(f"""
        import tritonnb
        server = tritonnb.start(http_port={http}, grpc_port={grpc}, metrics_port={metrics})
        tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
        print("HOME", server.home, "PID", server.pid, flush=True)
        tritonnb.serve_forever(poll_s=0.1)
        print("STOPPED", flush=True)
    """)
    )
    env = dict(os.environ, PYTRITON_HOME=str(tmp_path / "home"))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("HOME"), line
        home, pid = line.split()[1], int(line.split()[3])
        assert home.startswith(str(tmp_path / "home"))
        processes = process_tree(pid)
        status, body = infer_json(f"http://127.0.0.1:{http}", "double", [fp32("x", [1, 2], [1, 2])])
        assert status == 200 and body["outputs"][0]["data"] == [2, 4]
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "STOPPED"
        assert proc.wait(timeout=30) == 0
        assert wait_gone(processes) == []
        assert wait_ports_free([http, grpc, metrics]) == []
    finally:
        proc.kill()


def test_stop_lets_a_request_in_flight_finish(own_server):
    server = tritonnb.start(**port_ports(free_ports()))

    def slow(x):
        time.sleep(1.0)
        return x + 1

    tritonnb.bind(slow, "slow", inputs=["x:float32[1]"], outputs=["y:float32[1]"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(infer_json, server.http_url, "slow", [fp32("x", [1, 1], [1])])
        deadline = time.monotonic() + 10
        while server.models["slow"].idle_for() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the request is inside the function
        tritonnb.stop()
        status, body = answer.result(timeout=30)
    assert status == 200 and body["outputs"][0]["data"] == [2]


def test_a_kernel_client_does_not_hold_stop_up_and_works_again_after_a_restart(own_server):
    server = tritonnb.start(**port_ports(free_ports()))
    tritonnb.bind(lambda x: x * 2, "kept", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    call = tritonnb.client("kept")  # keeps its HTTP connection open between calls
    x = np.ones((1, 2), np.float32)
    assert call(x)["y"].tolist() == [[2, 2]]
    server.restart()
    log = server.logs(200)
    # tritonserver checks its open connections once a second; one check may still see the socket being closed
    waited = log.count("HTTP service connections")
    assert waited <= 2, f"tritonserver waited {waited} s for the client's idle connection"
    assert call(x)["y"].tolist() == [[2, 2]]  # the client opens a new connection


def test_stop_leaves_no_shared_memory_or_model_copies_behind(own_server):
    import tempfile

    def leftovers() -> set[pathlib.Path]:  # the stubs' tensor store, and Triton's copies of loaded models
        return {*pathlib.Path("/dev/shm").glob("psm_*"), *pathlib.Path(tempfile.gettempdir()).glob("folder*")}

    before = leftovers()
    server = tritonnb.start(**port_ports(free_ports()))
    tritonnb.bind(lambda x: x + 1, "shm", inputs=["x:float32[4]"], outputs=["y:float32[4]"], instances=2)
    for _ in range(3):
        assert infer_json(server.http_url, "shm", [fp32("x", [2, 4], [1] * 8)])[0] == 200
    tritonnb.restart()  # the first tritonserver's stubs go the same way
    assert infer_json(server.http_url, "shm", [fp32("x", [1, 4], [1] * 4)])[0] == 200
    tritonnb.stop()
    assert server.wait_stopped()
    assert leftovers() - before == set()


def test_reloads_do_not_pile_up_records_of_model_copies_triton_removed(own_server):
    from tritonnb.triton.leftovers import OWNER_FILE

    server = tritonnb.start(**port_ports(free_ports()))

    def recorded() -> list[str]:
        return json.loads((server.home / OWNER_FILE).read_text())["model_copies"]

    def reload(width: int) -> None:  # each signature is a reload: a new copy; Triton removes the old one's later
        tritonnb.bind(lambda x: x + 1, "reloaded", inputs=[f"x:float32[{width}]"], outputs=[f"y:float32[{width}]"])

    for width in range(1, 7):
        reload(width)
    copies = recorded()
    deadline = time.monotonic() + 60
    while sum(pathlib.Path(copy).exists() for copy in copies) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)  # until Triton has unloaded the older generations
    reload(7)
    kept = recorded()
    assert kept and all(pathlib.Path(copy).exists() for copy in kept), kept
    assert len(kept) <= 2, f"7 loads recorded {len(kept)} copies: {kept}"  # the two newest at most
    tritonnb.stop()
    assert server.wait_stopped()
    assert not any(pathlib.Path(copy).exists() for copy in kept)


def test_metrics_off_starts_and_unsupported_options_are_clear_errors(own_server):
    server = tritonnb.start(allow_metrics=False, **port_ports(free_ports()))
    assert server.state == "READY"
    tritonnb.stop()
    for options, message in [
        ({"allow_grpc": False}, "gRPC model-control"),
        ({"grpc_use_ssl": True}, "without TLS"),
        ({"log_file": "/tmp/triton.log"}, "keeps Triton's log itself"),
    ]:
        with pytest.raises(tritonnb.SpecError, match=message):
            tritonnb.start(**options)


def test_stop_under_load_returns_and_no_request_hangs(own_server, shell):
    import tritonclient.grpc as grpcclient

    ports = free_ports()
    server = tritonnb.start(**port_ports(ports))

    def busy(x):
        time.sleep(0.02)
        return x * 2

    tritonnb.bind(busy, "busy", inputs=["x:float32[4]"], outputs=["y:float32[4]"], instances=2)
    processes = process_tree(server.pid)
    stop_sent = threading.Event()
    outcomes: list[str] = []  # "ok", "error", or "wrong" per request

    def http_client() -> None:
        while True:
            try:
                status, body = infer_json(server.http_url, "busy", [fp32("x", [1, 4], [1, 2, 3, 4])], timeout=60)
                right = status == 200 and body["outputs"][0]["data"] == [2, 4, 6, 8]
                outcomes.append("ok" if right else ("error" if status >= 400 else "wrong"))
            except OSError:
                outcomes.append("error")
            if stop_sent.is_set():
                return

    def grpc_client() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
        while True:
            try:
                right = client.infer("busy", [x], client_timeout=60).as_numpy("y").tolist() == [[0, 2, 4, 6]]
                outcomes.append("ok" if right else "wrong")
            except InferenceServerException:
                outcomes.append("error")
            if stop_sent.is_set():
                return

    threads = [threading.Thread(target=f) for f in (http_client, grpc_client) * 4]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    shell.run_line_magic("triton", "stop")  # returns while 8 clients keep sending
    stop_sent.set()
    for thread in threads:
        thread.join(timeout=20)  # clients wait up to 60 s per request: a hung request would show here
    assert not [t for t in threads if t.is_alive()], "a request hung after %triton stop"
    assert outcomes.count("ok") > 0 and "wrong" not in outcomes
    print(f"stop under load: {outcomes.count('ok')} answered, {outcomes.count('error')} errors, none hung")
    assert tritonnb.server() is None
    assert wait_gone(processes) == [] and wait_ports_free(ports) == []


def test_stop_ends_open_client_streams_with_an_error(own_server):
    server = tritonnb.start(**port_ports(free_ports()))

    closed = threading.Event()

    def forever(x):
        try:
            while True:
                time.sleep(0.05)
                yield x
        finally:
            closed.set()

    tritonnb.bind(forever, "forever")
    stream = tritonnb.client("forever").stream([1.0])
    next(stream)  # a cell that failed here would leave this stream open
    raw = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    raw_errors: list = []
    raw.start_stream(callback=lambda result, error: raw_errors.append(error))  # never stopped by its owner
    processes = process_tree(server.pid)
    took = tritonnb.stop()
    assert server.wait_stopped()
    assert wait_gone(processes) == []
    with pytest.raises(tritonnb.StreamClosed, match="its client was closed"):
        for _ in stream:  # responses already on their way may come first; then the error
            pass
    wait_until(lambda: raw_errors, 10, "the stream nobody stopped ended")
    assert raw_errors[-1] is not None  # with an error too
    raw.close()
    assert closed.is_set()  # the generator was closed, not left computing for nobody
    print(f"stop took {took:.2f} s with two open client streams")
