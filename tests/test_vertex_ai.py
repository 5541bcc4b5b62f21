"""Vertex AI's routes on the live server: tritonserver's own Vertex AI mode beside HTTP and gRPC, serving the
notebook's models (bound after the start) and a served repository's."""

from __future__ import annotations

import json
import pathlib
import textwrap
import urllib.error
import urllib.request

import numpy as np
import pytest
from helpers import free_ports, port_ports, process_tree, wait_gone, wait_ports_free

import tritonnb
from tritonnb.errors import SpecError
from tritonnb.triton.settings import resolve_settings
from tritonnb.ui.report import format_status

REDIRECT = "X-Vertex-Ai-Triton-Redirect"  # Triton's header that sends a Vertex AI request to any endpoint
X = [[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]]
REQUEST = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": X}]}
TRIPLE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", (x * 3).astype(np.float32))]))
        return responses
"""
CONFIG = """
name: "triple"
backend: "python"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def _call(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """GET (no body) or POST JSON; the status and the parsed answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _y(answer: dict) -> np.ndarray:
    (output,) = answer["outputs"]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


@pytest.fixture
def stopped_after():
    """Stops this process's server after the test; no process of it and no port (the Vertex AI one too) is left."""
    ports: list[int] = []
    yield ports
    server = tritonnb.server()
    processes = process_tree(server.pid) if server is not None and server.state == "READY" else []
    tritonnb.stop()
    assert wait_gone(processes) == [], "tritonserver or stub processes outlived stop()"
    assert wait_ports_free(ports) == []


def test_the_predict_route_serves_the_notebook_model_named_before_it_is_bound(stopped_after):
    """The predict route's model is named at start and bound later: until then a stand-in says it is not served;
    once bound, Vertex AI's routes answer with its outputs, and the redirect header reaches any other model."""
    *ports, vertex = free_ports(4)
    stopped_after += [*ports, vertex]
    server = tritonnb.start(**port_ports(ports), vertex_ai_port=vertex, vertex_ai_default_model="double")
    routes = server.settings.vertex_ai
    assert routes is not None and (routes.predict_route, routes.health_route) == ("/predict", "/health")
    assert any("Vertex AI routes on port" in note for note in server.settings.notes)
    assert server.status()["vertex_ai"] == {
        "predict_url": f"http://127.0.0.1:{vertex}/predict",
        "health_url": f"http://127.0.0.1:{vertex}/health",
        "default_model": "double",
    }
    assert f"Vertex AI predict http://127.0.0.1:{vertex}/predict (model double)" in format_status(server.status())
    assert _call(routes.url("/health"))[0] == 200
    status, answer = _call(routes.url("/predict"), {"inputs": []})
    assert status >= 400 and "'double' is not served yet: run its cell" in answer["error"], answer

    tritonnb.bind(lambda x: x * 2, "double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    tritonnb.bind(lambda x: x + 1, "plus_one", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    status, answer = _call(routes.url("/predict"), REQUEST)
    assert status == 200, answer
    notebook = tritonnb.client("double")(np.asarray(X, dtype=np.float32))["y"]
    np.testing.assert_allclose(_y(answer), notebook)
    status, answer = _call(routes.url("/predict"), REQUEST, {REDIRECT: "v2/models/plus_one/infer"})
    assert status == 200, answer
    np.testing.assert_allclose(_y(answer), np.asarray(X) + 1)
    assert _call(routes.url("/health"))[0] == 200


def test_the_predict_route_runs_the_only_model_of_a_served_repository(tmp_path: pathlib.Path, stopped_after):
    """With one repository model and no default named, the predict route runs it (as Triton would); it is loaded as
    tritonserver starts, and routes from AIP_PREDICT_ROUTE / AIP_HEALTH_ROUTE are honoured."""
    (tmp_path / "triple" / "1").mkdir(parents=True)
    (tmp_path / "triple" / "config.pbtxt").write_text(CONFIG)
    (tmp_path / "triple" / "1" / "model.py").write_text(textwrap.dedent(TRIPLE))
    *ports, vertex = free_ports(4)
    stopped_after += [*ports, vertex]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIP_PREDICT_ROUTE", "/v1/models/triple:predict")
        patch.setenv("AIP_HEALTH_ROUTE", "/v1/models/triple")
        server = tritonnb.start(**port_ports(ports), model_repository=tmp_path, vertex_ai_port=vertex)
    routes = server.settings.vertex_ai
    assert routes is not None and routes.default_model == "triple" and routes.from_repository
    assert _call(routes.url("/v1/models/triple"))[0] == 200
    status, answer = _call(routes.url("/v1/models/triple:predict"), REQUEST)
    assert status == 200, answer
    np.testing.assert_allclose(_y(answer), np.asarray(X) * 3)
    assert server.repository_models["triple"].state == "READY"


def test_without_a_default_model_the_error_names_the_option():
    with pytest.raises(SpecError, match="vertex_ai_default_model=NAME"):
        resolve_settings(vertex_ai_port=free_ports(1)[0])
    with pytest.raises(SpecError, match="needs vertex_ai_port"):
        resolve_settings(vertex_ai_default_model="double")
