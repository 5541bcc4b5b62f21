"""Hostile requests on a real tritonserver: each gets an error answer, and the server and other models keep serving.

Triton 2.51's HTTP front answers JSON it cannot parse (not JSON, ``data`` not matching ``shape``, a bad ``shape``)
with 500 and a parse message; what parses but does not fit the model (datatype, inputs, batch size, binary sizes)
gets 400, an unknown model 404. Each case's expected code is in the table below.

The 10^9-element claim, measured on this machine (23 GB, 2 cores; tritonserver peak RSS by psutil, ~5 ms polls):

- JSON ``shape [1, 10^9]`` FP32 with 4 ``data`` values: 500 after 2-18 s, peak RSS +4.0 GB (Triton allocates the
  claimed tensor before it counts ``data``; ``[10^9, 4]`` FP32 took 51 s and +16 GB, so never here).
- The same in a 1-byte datatype (INT8, BOOL): 500 after 0.5-1.1 s, +1.0 GB.
- Binary form (``Inference-Header-Content-Length``, ``binary_data_size`` 4, 4 bytes sent): 400 in < 0.1 s, +0 MB,
  on a fixed-dim model ("unexpected shape") as on a ``-1`` model ("byte size mismatch"); gRPC's raw contents alike.

So the tests claim 10^9 elements in the binary form only: CI machines have ~2 cores and unknown memory.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import textwrap
import time
from typing import Any, NamedTuple

import numpy as np
import pytest
from helpers import fp32, free_ports, infer_json

import tritonnb
from tritonnb.serving.server import Server

TIMEOUT_S = 60.0  # per raw request; every answer measured here took < 2 s
BILLION = 10**9
WRAPS_TO_4 = 2**62 + 1  # [4, 2**62 + 1] has 2**64 + 4 elements: 4 once Triton's uint64 count wraps


@pytest.fixture(scope="module")
def models(triton: Server) -> Server:
    """``double`` (y = 2x), an untouched ``bystander`` (y = x + 1) and ``anylen`` (int8, any length) on the server."""
    spec = {"inputs": ["x:float32[4]"], "outputs": ["y:float32[4]"], "max_batch_size": 8}
    tritonnb.bind(lambda x: x * 2, "double", **spec)
    tritonnb.bind(lambda x: x + 1, "bystander", **spec)
    tritonnb.bind(lambda x: x - 1, "anylen", inputs=["x:int8[-1]"], outputs=["y:int8[-1]"], max_batch_size=8)
    return triton


@pytest.fixture(scope="module")
def first_pid(models: Server) -> int:
    """tritonserver's pid before any hostile request (a crash and restart would change it)."""
    assert models.pid is not None
    return models.pid


# -- raw HTTP ------------------------------------------------------------------------------------------------
def _port(server: Server) -> int:
    return int(server.http_url.rsplit(":", 1)[1])


def raw_post(server: Server, model: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """POST exactly ``body`` to the model's infer endpoint; return (status, parsed JSON body or {"raw": text})."""
    conn = http.client.HTTPConnection("127.0.0.1", _port(server), timeout=TIMEOUT_S)
    try:
        conn.request(
            "POST",
            f"/v2/models/{model}/infer",
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        response = conn.getresponse()
        text = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, {"raw": text.decode(errors="replace")}


def body_of(*inputs: dict[str, Any]) -> bytes:
    """A JSON inference request with these inputs."""
    return json.dumps({"inputs": list(inputs)}).encode()


def tensor(shape: list[int], data: list[Any], datatype: str = "FP32", name: str = "x") -> dict[str, Any]:
    """One JSON input, shape and data as given (lies included)."""
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


class Hostile(NamedTuple):
    """One hostile request and the answer Triton gives it."""

    model: str
    body: bytes
    headers: dict[str, str] | None
    status: int
    message: str  # a fragment of the ``error`` text


def binary(model: str, shape: list[int], size: int, payload: bytes, status: int, message: str, **lies: Any) -> Hostile:
    """A binary-tensor request: a JSON header claiming ``binary_data_size`` = size, then ``payload``. ``lies`` may
    set ``datatype`` (FP32 by default) and ``header_extra``, bytes its ``Inference-Header-Content-Length`` adds."""
    x = {
        "name": "x",
        "datatype": lies.get("datatype", "FP32"),
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }
    header = body_of(x)
    length = {"Inference-Header-Content-Length": str(len(header) + lies.get("header_extra", 0))}
    return Hostile(model, header + payload, length, status, message)


GOOD = body_of(tensor([1, 4], [1, 2, 3, 4]))
TWENTY_MB = b'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[' + b"1," * (10 * 2**20) + b"1]}]}"

CASES = [
    # 500: what the JSON parser rejects
    pytest.param(Hostile("double", GOOD[:-7], None, 500, "failed to parse the request JSON"), id="truncated-json"),
    pytest.param(Hostile("double", b"hello, not json", None, 500, "failed to parse the request JSON"), id="not-json"),
    pytest.param(Hostile("double", body_of(tensor([1, 4], [1, 2, 3])), None, 500, "does not match"), id="data-short"),
    pytest.param(
        Hostile("double", body_of(tensor([1, 4], [1, 2, 3, 4, 5])), None, 500, "does not match"), id="data-long"
    ),
    pytest.param(Hostile("double", body_of(tensor([1, -4], [1, 2, 3, 4])), None, 500, "'shape'"), id="negative-dim"),
    pytest.param(Hostile("double", TWENTY_MB, None, 500, "does not match"), id="20MB-body"),  # ~1 s, +26 MB
    # 400: an empty body is read as one raw binary input of 0 bytes
    pytest.param(Hostile("double", b"", None, 400, "byte size mismatch"), id="empty-body"),
    # 400: parsed, but not what the model takes
    pytest.param(
        Hostile("double", body_of(tensor([9, 4], [1.0] * 36)), None, 400, "batch-size must be <= 8"),
        id="batch-over-max",
    ),
    pytest.param(
        Hostile("double", body_of(tensor([1, 4], [1, 2, 3, 4], "INT32")), None, 400, "data-type"), id="wrong-datatype"
    ),
    pytest.param(
        Hostile("double", body_of(tensor([1, 4], [1] * 4, name="z")), None, 400, "unexpected inference input 'z'"),
        id="unknown-input",
    ),
    pytest.param(
        Hostile("double", body_of(tensor([1, 4], [1] * 4), tensor([1, 4], [1] * 4, name="z")), None, 400, "2 inputs"),
        id="extra-input",
    ),
    pytest.param(Hostile("double", body_of(), None, 400, "missing required input(s) ['x']"), id="missing-input"),
    # 400: binary tensors whose sizes lie
    pytest.param(binary("double", [1, 4], 64, bytes(16), 400, "expecting 48 additional bytes"), id="binary-too-big"),
    pytest.param(binary("double", [1, 4], 8, bytes(16), 400, "unexpected additional input"), id="binary-too-small"),
    pytest.param(
        binary("double", [1, 4], 16, bytes(16), 400, "inference header size", header_extra=1000),
        id="header-length-beyond-body",
    ),
    # 400: 10^9 elements claimed, 4 bytes sent (the cheapest form, see the module docstring)
    pytest.param(binary("double", [1, BILLION], 4, bytes(4), 400, "unexpected shape"), id="billion-fixed-dims"),
    pytest.param(
        binary("anylen", [1, BILLION], 4, bytes(4), 400, "Expected 1000000000, got 4", datatype="INT8"),
        id="billion-any-dim",
    ),
    pytest.param(
        binary("anylen", [1, BILLION], BILLION, bytes(4), 400, "expecting 999999996", datatype="INT8"),
        id="billion-honest-size",
    ),
    # 404
    pytest.param(Hostile("nosuch", GOOD, None, 404, "unknown model"), id="unknown-model"),
]


def assert_all_serve(server: Server, pid: int) -> None:
    """Good requests get the right answers from every model, and tritonserver is the same process, READY."""
    assert infer_json(server.http_url, "double", [fp32("x", [2, 4], [1, 2, 3, 4, 5, 6, 7, 8])]) == (
        200,
        {
            "model_name": "double",
            "model_version": "1",
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [2, 4, 6, 8, 10, 12, 14, 16]}],
        },
    )
    status, body = infer_json(server.http_url, "bystander", [fp32("x", [1, 4], [1, 2, 3, 4])])
    assert status == 200 and body["outputs"][0]["data"] == [2, 3, 4, 5]
    status, body = infer_json(
        server.http_url, "anylen", [{"name": "x", "datatype": "INT8", "shape": [1, 3], "data": [5, 6, 7]}]
    )
    assert status == 200 and body["outputs"][0]["data"] == [4, 5, 6]
    assert server.state == "READY"
    assert server.pid == pid


def assert_refused(server: Server, hostile: Hostile) -> None:
    """Send a hostile request: it gets its expected error code and message."""
    status, body = raw_post(server, hostile.model, hostile.body, hostile.headers)
    assert status == hostile.status, body
    assert isinstance(body.get("error"), str) and hostile.message in body["error"], body


@pytest.mark.parametrize("hostile", CASES)
def test_hostile_http_request_gets_an_error_and_harms_nothing(models: Server, first_pid: int, hostile: Hostile):
    assert_all_serve(models, first_pid)
    assert_refused(models, hostile)
    assert_all_serve(models, first_pid)


def test_connection_dropped_mid_request_harms_nothing(models: Server, first_pid: int):
    head = (
        "POST /v2/models/double/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(GOOD) + 1000}\r\n\r\n"
    )
    for sent in (b"", GOOD[:20], GOOD):  # the body never completes: nothing, part of it, all but the promised rest
        with socket.create_connection(("127.0.0.1", _port(models)), timeout=TIMEOUT_S) as sock:
            sock.sendall(head.encode() + sent)
        assert_all_serve(models, first_pid)
    with socket.create_connection(("127.0.0.1", _port(models)), timeout=TIMEOUT_S) as hanging:
        hanging.sendall(head.encode() + GOOD[:20])  # held open: other connections are still served meanwhile
        assert_all_serve(models, first_pid)


def test_hostile_grpc_requests_raise_and_harm_nothing(models: Server, first_pid: int):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(models.grpc_url.removeprefix("grpc://"))

    def infer(name: str, datatype: str, array: np.ndarray) -> np.ndarray:
        x = grpcclient.InferInput(name, list(array.shape), datatype)
        x.set_data_from_numpy(array)
        return client.infer("double", [x], client_timeout=TIMEOUT_S).as_numpy("y")

    try:
        for name, datatype, array, message in [
            ("x", "FP32", np.ones((1, 5), np.float32), "unexpected shape"),
            ("x", "INT32", np.ones((1, 4), np.int32), "data-type is 'INT32'"),
            ("z", "FP32", np.ones((1, 4), np.float32), "unexpected inference input 'z'"),
            ("x", "FP32", np.ones((9, 4), np.float32), "batch-size must be <= 8"),
        ]:
            with pytest.raises(InferenceServerException, match=message):
                infer(name, datatype, array)
            np.testing.assert_array_equal(
                infer("x", "FP32", np.arange(4, dtype=np.float32).reshape(1, 4)), [[0, 2, 4, 6]]
            )
            assert_all_serve(models, first_pid)
    finally:
        client.close()


def test_grpc_raw_contents_that_lie_are_refused(models: Server, first_pid: int):
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(models.grpc_url.removeprefix("grpc://")) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for model, datatype, shape, raw, message in [
            ("double", "FP32", [1, 4], bytes(8), "byte size mismatch"),
            ("double", "FP32", [1, BILLION], bytes(4), "unexpected shape"),
            ("anylen", "INT8", [1, BILLION], bytes(4), "Expected 1000000000, got 4"),  # +0 MB, < 10 ms
        ]:
            request = service_pb2.ModelInferRequest(model_name=model)
            x = request.inputs.add(name="x", datatype=datatype)
            x.shape.extend(shape)
            request.raw_input_contents.append(raw)
            with pytest.raises(grpc.RpcError) as error:
                stub.ModelInfer(request, timeout=TIMEOUT_S)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in error.value.details()
            assert_all_serve(models, first_pid)


def test_shape_whose_element_count_wraps_kills_a_stub_and_only_its_model_is_loaded_again(
    models: Server, first_pid: int
):
    """[4, 2**62 + 1] FP32 counts 4 elements in Triton's uint64 arithmetic, so 4 data values pass its checks; the
    python backend stub then aborts building the numpy array ("array is too big"), and Triton 2.51 would answer
    "Stub process 'victim_0_0' is not healthy." to every later request while still calling the model READY.
    tritonnb notices the dead stub and loads that model again; the server and the other models are unharmed."""
    tritonnb.bind(lambda x: x * 3, "victim", inputs=["x:float32[-1]"], outputs=["y:float32[-1]"], max_batch_size=8)
    good = [fp32("x", [1, 2], [1, 2])]
    assert infer_json(models.http_url, "victim", good)[1]["outputs"][0]["data"] == [3, 6]
    status, body = raw_post(models, "victim", body_of(tensor([4, WRAPS_TO_4], [1, 2, 3, 4])))
    assert status >= 400 and body.get("error"), body
    assert_all_serve(models, first_pid)
    deadline = time.monotonic() + TIMEOUT_S
    while infer_json(models.http_url, "victim", good)[0] != 200:
        assert time.monotonic() < deadline, models.logs(30)
        time.sleep(0.2)
    assert infer_json(models.http_url, "victim", good)[1]["outputs"][0]["data"] == [3, 6]
    assert models.status()["models"]["victim"]["stub_restarts"] == 1
    assert "model 'victim': a python backend stub died" in models.logs(200)


DEEP_SCRIPT = """
import http.client, json, time
import tritonnb
server = tritonnb.start(http_port={http}, grpc_port={grpc}, metrics_port={metrics})
tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"], max_batch_size=8)
pid = server.pid
body = b'{{"inputs":[{{"name":"x","datatype":"FP32","shape":[1,4],"data":' + b"[" * {depth} + b"]" * {depth} + b"}}]}}"
conn = http.client.HTTPConnection("127.0.0.1", {http}, timeout=60)
try:
    conn.request("POST", "/v2/models/double/infer", body=body, headers={{"Content-Type": "application/json"}})
    answer = conn.getresponse().status
except Exception as error:
    answer = repr(error)
good = json.dumps({{"inputs": [{{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}}]}})
deadline = time.monotonic() + 60
data = None
while data is None and time.monotonic() < deadline:
    time.sleep(0.2)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", {http}, timeout=5)
        conn.request("POST", "/v2/models/double/infer", body=good, headers={{"Content-Type": "application/json"}})
        reply = conn.getresponse()
        data = json.loads(reply.read())["outputs"][0]["data"] if reply.status == 200 else None
    except Exception:
        pass
status = server.status()
print(json.dumps({{"answer": str(answer), "data": data, "new_pid": server.pid != pid, "crashes": status["crashes"]}}))
tritonnb.stop()
"""


def test_deeply_nested_json_data_crashes_triton_and_recovery_brings_it_back(tmp_path):
    """An 80 KB body, ``"data"`` nested 60000 arrays deep, overflows the stack of Triton 2.51's recursive data reader:
    tritonserver dies of SIGSEGV (20000 deep is answered 500). tritonnb cannot keep that request from Triton, but it
    starts tritonserver again and binds the model again. Run on a server of its own, in a subprocess."""
    http, grpc, metrics = free_ports()
    script = tmp_path / "deep.py"
    script.write_text(textwrap.dedent(DEEP_SCRIPT.format(http=http, grpc=grpc, metrics=metrics, depth=60000)))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["data"] == [2, 4, 6, 8] and outcome["new_pid"], outcome
    assert [c["exit"] for c in outcome["crashes"]] == ["killed by SIGSEGV"], outcome
    assert outcome["crashes"][0]["outcome"] == "restarted"


def test_no_restart_happened(models: Server, first_pid: int):
    """Every hostile HTTP request back to back, after whatever this module sent before: tritonserver never exited
    (its supervisor recorded no exit in the server's life) and is still the process it was before the first one."""
    for case in CASES:
        assert_refused(models, *case.values)
    status = models.status()
    assert status["crashes"] == [] and status["restarts"] == 0, status["recovery"]
    assert_all_serve(models, first_pid)
