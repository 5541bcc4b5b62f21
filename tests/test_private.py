"""Private serving on a real tritonserver: another OS process without the kernel's token is refused inference,
metadata and model config over HTTP and gRPC; with it, it is answered; the kernel's own clients keep working through
a restart and a crash recovery, each of which makes a new token."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import free_ports, port_ports, process_tree, wait_gone, wait_until

import tritonnb
from tritonnb.loadtest.loadgen import extra_headers
from tritonnb.loadtest.perf import run_perf
from tritonnb.observe.monitor import Monitor, target_for
from tritonnb.observe.remote_spec import remote_spec
from tritonnb.triton.settings import PRIVATE_NOTE, PRIVATE_OFF_NOTE, resolve_settings

SPEC = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"]}
X = [1.0, 2.0, 3.0, 4.0]
DOUBLED = [2.0, 4.0, 6.0, 8.0]
RECOVERY_S = 60.0

# Run by another OS process (a user of the same machine): for each token in $OUTSIDER_TOKENS (JSON; null: none),
# inference, metadata and config over HTTP and gRPC, and model control over HTTP; prints what each answered.
OUTSIDER = r"""
import json, os, sys, urllib.error, urllib.request
import numpy as np
import tritonclient.grpc as grpcclient

http_url, grpc_target = sys.argv[1], sys.argv[2]
body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()

def http(method, path, token, data=None):
    headers = {"triton-access-token": token} if token else {}
    request = urllib.request.Request(http_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return [response.status, json.loads(response.read() or b"{}")]
    except urllib.error.HTTPError as error:
        return [error.code, json.loads(error.read() or b"{}")]

def grpc(call, token):
    headers = {"triton-grpc-protocol-triton-access-token": token} if token else None
    client = grpcclient.InferenceServerClient(grpc_target)
    try:
        if call == "infer":
            x = grpcclient.InferInput("x", [1, 4], "FP32")
            x.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
            return ["ok", client.infer("double", [x], headers=headers).as_numpy("y").ravel().tolist()]
        if call == "metadata":
            return ["ok", client.get_model_metadata("double", headers=headers, as_json=True)]
        return ["ok", client.get_model_config("double", headers=headers, as_json=True)]
    except Exception as error:
        status = error.status() if hasattr(error, "status") else type(error).__name__
        return [str(status), str(error)]
    finally:
        client.close()

results = []
for token in json.loads(os.environ["OUTSIDER_TOKENS"]):
    results.append({
        "infer": http("POST", "/v2/models/double/infer", token, body),
        "metadata": http("GET", "/v2/models/double", token),
        "config": http("GET", "/v2/models/double/config", token),
        "index": http("POST", "/v2/repository/index", token, b"{}"),
        "health": http("GET", "/v2/health/ready", token),
        "grpc_infer": grpc("infer", token),
        "grpc_metadata": grpc("metadata", token),
        "grpc_config": grpc("config", token),
    })
print(json.dumps(results))
"""
GRPC_REFUSALS = ("StatusCode.UNAVAILABLE", "StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED")


def outsider(server, *tokens: str | None) -> list[dict]:
    """What another OS process gets from ``server`` with each token (None: without one). The tokens go through the
    environment, as a command line is readable by every user of the machine."""
    env = {**os.environ, "OUTSIDER_TOKENS": json.dumps(list(tokens))}
    args = [sys.executable, "-c", OUTSIDER, server.http_url, server.grpc_url.removeprefix("grpc://")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def assert_refused(answers: dict, model_parts: tuple[str, ...] = ("infer", "metadata", "config")) -> None:
    """A clear 403 (HTTP) or UNAVAILABLE-type status (gRPC) naming the restriction, and nothing of the model."""
    for part in (*model_parts, "index"):
        status, body = answers[part]
        assert status == 403, (part, status, body)
        assert "restricted" in body["error"] and set(body) == {"error"}, (part, body)
    for part in model_parts:
        status, message = answers[f"grpc_{part}"]
        assert status in GRPC_REFUSALS and "restricted" in message, (part, status, message)
        assert "double" not in message and "FP32" not in message, message  # nothing of the model leaks
    assert answers["health"][0] == 200  # server health stays open


def assert_answered(answers: dict) -> None:
    """Inference, metadata and config answered, over HTTP and gRPC."""
    status, body = answers["infer"]
    assert status == 200 and body["outputs"][0]["data"] == DOUBLED, body
    assert answers["metadata"][0] == 200 and answers["metadata"][1]["inputs"][0]["name"] == "x"
    assert answers["config"][0] == 200 and answers["config"][1]["name"] == "double"
    assert answers["grpc_infer"] == ["ok", DOUBLED]
    assert answers["grpc_metadata"][0] == "ok" and answers["grpc_metadata"][1]["name"] == "double"
    assert answers["grpc_config"][0] == "ok" and answers["grpc_config"][1]["config"]["name"] == "double"


def own_calls_work(server) -> None:
    """The kernel's own client (HTTP and a gRPC stream), monitor and spec reader, all with the current token."""
    call = tritonnb.client("double")
    assert call(np.array([X], np.float32))["y"].ravel().tolist() == DOUBLED
    assert [r["y"].ravel().tolist() for r in call.stream(np.array([X], np.float32))] == [DOUBLED]
    assert remote_spec(server.http_url, "double").inputs[0].name == "x"
    snapshot = Monitor(target_for(server=server)).poll()
    assert snapshot.models["double"].state == "READY" and snapshot.version, snapshot


def twice(x):
    """A stream of two responses."""
    yield x
    yield x + 1


def run_snippet(text: str, folder, bash: bool = False) -> str:
    """Run a card's snippet in another OS process (bash for curl); its output."""
    if bash:
        done = subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=60)
    else:
        (folder / "snippet.py").write_text(text)
        done = subprocess.run([sys.executable, str(folder / "snippet.py")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    return done.stdout


def stop(server) -> None:
    """Stop the server this test started, leaving no process behind."""
    processes = process_tree(server.pid) if server.state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == []


# -- settings (no server) ---------------------------------------------------------------------------------------
def test_private_is_on_under_jupyterhub_and_the_start_says_which(monkeypatch):
    for name in ("JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    plain = resolve_settings(**port_ports(free_ports()))
    assert not plain.private and PRIVATE_OFF_NOTE in plain.notes
    assert resolve_settings(private=True, **port_ports(free_ports())).private
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    hub = resolve_settings(**port_ports(free_ports()))
    assert hub.private and PRIVATE_NOTE in hub.notes and PRIVATE_OFF_NOTE not in hub.notes
    off = resolve_settings(private=False, **port_ports(free_ports()))
    assert not off.private and PRIVATE_OFF_NOTE in off.notes


def test_loadgen_header_flags_keep_the_token_off_the_command_line(monkeypatch):
    monkeypatch.setenv("SECRET_FOR_TEST", "abc")
    assert extra_headers(["a: b"], ["triton-access-token=SECRET_FOR_TEST"]) == {"a": "b", "triton-access-token": "abc"}
    with pytest.raises(ValueError, match="NAME:VALUE"):
        extra_headers(["nocolon"], [])
    with pytest.raises(ValueError, match="MISSING_VAR_FOR_TEST is not set"):
        extra_headers([], ["h=MISSING_VAR_FOR_TEST"])


REPOSITORY_CONFIG = """name: "double"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
REPOSITORY_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        x = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", v * 2)]) for v in x]
"""


def test_a_private_servers_repository_models_are_read_and_called_with_the_token(tmp_path):
    assert tritonnb.server() is None
    (tmp_path / "double" / "1").mkdir(parents=True)
    (tmp_path / "double" / "config.pbtxt").write_text(REPOSITORY_CONFIG)
    (tmp_path / "double" / "1" / "model.py").write_text(REPOSITORY_MODEL)
    server = tritonnb.start(private=True, model_repository=str(tmp_path), **port_ports(free_ports()))
    try:
        assert server.repository_models["double"].spec is not None  # its metadata and config, read with the token
        own_calls_work(server)
        assert_refused(outsider(server, None)[0])
    finally:
        stop(server)


# -- public mode (first: one server per process, and the private one below is module-wide) -----------------------
def test_public_mode_answers_others_but_keeps_model_control_behind_the_token():
    assert tritonnb.server() is None
    server = tritonnb.start(private=False, **port_ports(free_ports()))
    try:
        tritonnb.bind(lambda x: x * 2, "double", **SPEC)
        without, with_token = outsider(server, None, server.access_token)
        assert_answered(without)
        assert without["index"][0] == 403  # model control needs the token in either mode
        assert_answered(with_token)
        assert with_token["index"][0] == 200
        assert not tritonnb.card("double").access_token  # snippets carry no token where none is needed
    finally:
        stop(server)


# -- private mode --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private():
    """A private server of this process serving ``double``; stopped afterwards, leaving no process behind."""
    server = tritonnb.start(private=True, **port_ports(free_ports()))
    try:
        tritonnb.bind(lambda x: x * 2, "double", **SPEC)
        tritonnb.bind(twice, "twice")  # a stream: its card's snippets are curl over SSE and a gRPC stream
        yield server
    finally:
        stop(server)


def test_another_process_is_refused_without_the_token_and_answered_with_it(private):
    assert private.private and PRIVATE_NOTE in private.settings.notes
    without, wrong, with_token = outsider(private, None, "not-the-token", private.access_token)
    assert_refused(without)
    assert_refused(wrong)
    assert_answered(with_token)
    assert with_token["index"][0] == 200


def test_the_kernels_own_clients_panels_and_load_tests_carry_the_token(private):
    own_calls_work(private)
    figures = tritonnb.metrics()
    assert figures["models"]["double"]["state"] == "READY"
    result = run_perf(private, "double", concurrency=[1], duration_s=0.3, warmup_s=0)
    assert result.rows[0]["errors"] == 0 and result.rows[0]["requests"] > 0
    assert result.rows[0]["compute_infer_ms"] is not None  # statistics read with the token too
    if shutil.which("perf_analyzer"):
        nvidia = run_perf(private, "double", concurrency=[1], duration_s=0.5, engine="perf_analyzer")
        assert nvidia.rows[0]["errors"] == 0 and nvidia.rows[0]["requests"] > 0


def test_the_cards_snippets_carry_the_token_and_its_links_say_why_they_are_gone(private, tmp_path):
    card = tritonnb.card("double")
    assert card.access_token == private.access_token
    assert set(card.browser_links()) <= {"health", "metrics"}  # metadata/config would answer a browser 403
    assert "browser link cannot send" in card._repr_html_()
    token_flag = f" -H 'triton-access-token: {private.access_token}'"
    assert json.loads(run_snippet(card.curl, tmp_path, bash=True))["outputs"][0]["data"] == [2.0] * 4
    assert json.loads(run_snippet(card.generate_curl, tmp_path, bash=True))["y"] == [2.0] * 4
    assert "[[2. 2. 2. 2.]]" in run_snippet(card.python, tmp_path)
    refused = json.loads(run_snippet(card.curl.replace(token_flag, ""), tmp_path, bash=True))
    assert "restricted" in refused["error"] and "outputs" not in refused
    stream = tritonnb.card("twice")
    assert stream.curl and token_flag in stream.curl and "triton-grpc-protocol-triton-access-token" in stream.python
    events = [line for line in run_snippet(stream.curl, tmp_path, bash=True).splitlines() if line.startswith("data:")]
    assert [json.loads(e.removeprefix("data:"))["output"] for e in events] == [1.0, 2.0]
    assert run_snippet(stream.python, tmp_path).split() == ["output", "[1.]", "output", "[2.]"]
    refused_stream = run_snippet(stream.curl.replace(token_flag, ""), tmp_path, bash=True)
    assert "restricted" in refused_stream and "data:" not in refused_stream


def test_a_restart_makes_a_new_token_and_the_kernels_clients_follow(private):
    call = tritonnb.client("double")  # made before the restart
    old = private.access_token
    private.restart()
    assert private.access_token != old
    stale, fresh = outsider(private, old, private.access_token)
    assert_refused(stale)
    assert_answered(fresh)
    assert call(np.array([X], np.float32))["y"].ravel().tolist() == DOUBLED
    own_calls_work(private)


def test_after_a_crash_the_recovered_server_has_a_new_token_and_stays_private(private):
    call = tritonnb.client("double")
    old_token, old_pid = private.access_token, private.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_until(
        lambda: private.pid not in (None, old_pid) and private.state == "READY" and private.is_model_ready("double"),
        RECOVERY_S,
        lambda: f"not recovered; state {private.state}:\n{private.logs(30)}",
        interval=0.1,
    )
    assert private.access_token != old_token
    stale, fresh = outsider(private, old_token, private.access_token)
    assert_refused(stale)
    assert_answered(fresh)
    assert call(np.array([X], np.float32))["y"].ravel().tolist() == DOUBLED
    own_calls_work(private)
