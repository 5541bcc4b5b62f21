"""An export follows Vertex AI's custom-container contract: with the ``AIP_*`` variables Vertex AI sets, its
``serve_here.sh`` and its Dockerfile's command answer the health and predict routes on ``AIP_HTTP_PORT``, from the
repository in ``AIP_STORAGE_URI``, with the default model's outputs (and another model's through Triton's redirect
header). Triton 2.51's Vertex AI service binds 0.0.0.0 (it has no address flag); everything else stays on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import free_ports, running

import tritonnb

HEALTH = "/v1/endpoints/123/deployedModels/456"  # the form of Vertex AI's default routes
PREDICT = "/v1/endpoints/123/deployedModels/456:predict"
INPUTS = np.arange(8, dtype=np.float32).reshape(2, 4)
EXPECTED = {"alpha": INPUTS * 2, "beta": INPUTS + 1}


@pytest.fixture(scope="module")
def exported(triton, tmp_path_factory) -> pathlib.Path:
    """A repository of two exported models, ``alpha`` (x * 2) and ``beta`` (x + 1)."""
    repo = tmp_path_factory.mktemp("vertex") / "repo"
    tritonnb.bind(lambda x: x * 2, "alpha", inputs=["x:float32[4]"], outputs=["y:float32[4]"], max_batch_size=8)
    tritonnb.bind(lambda x: x + 1, "beta", inputs=["x:float32[4]"], outputs=["y:float32[4]"], max_batch_size=8)
    try:
        tritonnb.export("beta", repo)
        tritonnb.export("alpha", repo)
    finally:
        tritonnb.unbind("alpha")
        tritonnb.unbind("beta")
    return repo


def _storage_copy(repo: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """The repository copied to where Vertex AI would put the artifacts (AIP_STORAGE_URI); serve_here.sh alone
    goes to ``tmp_path/image``, a folder with no model, so that only the copy can serve them."""
    storage = tmp_path / "artifacts"
    shutil.copytree(repo, storage)
    scripts = tmp_path / "image"
    scripts.mkdir()
    shutil.copy(repo / "serve_here.sh", scripts)
    return storage


def _environment(port: int, storage: pathlib.Path) -> dict[str, str]:
    """What Vertex AI sets in the container (the storage URI a local folder here, gs://... there)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTRITON", "TRITONNB", "AIP_", "VERTEX_AI"))}
    env.update(
        PYTHON=sys.executable,
        AIP_MODE="PREDICTION",
        AIP_HTTP_PORT=str(port),
        AIP_HEALTH_ROUTE=HEALTH,
        AIP_PREDICT_ROUTE=PREDICT,
        AIP_STORAGE_URI=str(storage),
    )
    return env


@contextlib.contextmanager
def _vertex(command: list[str], env: dict[str, str], port: int, metrics: int, log: pathlib.Path) -> Iterator[str]:
    """Run ``command`` until the health route answers 200; yield the Vertex AI URL; stop it by its process group."""
    url = f"http://127.0.0.1:{port}"
    with running(command, env, log, lambda: _get(url + HEALTH) == 200, [port, metrics], cwd=log.parent):
        yield url


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _predict(url: str, model: str | None = None) -> tuple[str, np.ndarray]:
    """POST a KServe v2 JSON request to the predict route (redirected to ``model`` if given); (model, output)."""
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": INPUTS.ravel().tolist()}]}
    headers = {"Content-Type": "application/json"}
    if model is not None:
        headers["X-Vertex-Ai-Triton-Redirect"] = f"v2/models/{model}/infer"
    request = urllib.request.Request(url + PREDICT, json.dumps(body).encode(), headers, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    return answer["model_name"], np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(2, 4)


def test_serve_here_follows_the_vertex_ai_contract(exported, tmp_path):
    """serve_here.sh under Vertex AI's variables, with only AIP_STORAGE_URI holding the models: health 200, the
    predict route runs the first model by name, and the redirect header reaches the other."""
    storage = _storage_copy(exported, tmp_path)
    port, metrics = free_ports(2)
    command = ["bash", str(tmp_path / "image" / "serve_here.sh"), f"--metrics-port={metrics}"]
    command += ["--metrics-address=127.0.0.1", "--exit-timeout-secs=3"]
    with _vertex(command, _environment(port, storage), port, metrics, tmp_path / "serve.log") as url:
        assert _get(url + HEALTH) == 200
        name, output = _predict(url)
        assert name == "alpha"
        np.testing.assert_allclose(output, EXPECTED["alpha"])
        name, output = _predict(url, "beta")
        assert name == "beta"
        np.testing.assert_allclose(output, EXPECTED["beta"])
        assert _get(url + "/v2/health/ready") == 400  # only Vertex AI's routes answer on its port
    assert f"model_repository_path[0]         | {storage}" in (tmp_path / "serve.log").read_text()


def test_the_dockerfile_command_follows_the_vertex_ai_contract(exported, tmp_path):
    """The Dockerfile's CMD, run as the image would run it (``tritonserver`` on PATH: here nvidia-pytriton's,
    through serve_here.sh), with the model picked by VERTEX_AI_DEFAULT_MODEL as --container-env-vars would."""
    dockerfile = (exported / "Dockerfile").read_text()
    assert "ENV VERTEX_AI_DEFAULT_MODEL=alpha" in dockerfile
    assert "EXPOSE 8000 8001 8002 8080" in dockerfile
    (cmd,) = re.findall(r"^CMD (.+)$", dockerfile, re.MULTILINE)
    storage = _storage_copy(exported, tmp_path)
    port, metrics = free_ports(2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "tritonserver"
    wrapper.write_text(
        f'#!/bin/sh\nexec bash {tmp_path / "image" / "serve_here.sh"} "$@" --metrics-port={metrics} '
        "--metrics-address=127.0.0.1 --exit-timeout-secs=3\n"
    )
    wrapper.chmod(0o755)
    env = _environment(port, storage)
    env.update(PATH=f"{bin_dir}:{env['PATH']}", VERTEX_AI_DEFAULT_MODEL="beta")
    with _vertex(json.loads(cmd), env, port, metrics, tmp_path / "cmd.log") as url:
        name, output = _predict(url)
        assert name == "beta"
        np.testing.assert_allclose(output, EXPECTED["beta"])


def test_the_readme_says_how_to_deploy_on_vertex_ai(exported):
    readme = (exported / "README.md").read_text()
    for text in ("AIP_STORAGE_URI", "AIP_HTTP_PORT", "X-Vertex-Ai-Triton-Redirect", "rawPredict", "--artifact-uri"):
        assert text in readme, text
    assert "--container-predict-route=/v2/models/alpha/infer" in readme
