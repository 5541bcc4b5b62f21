"""A Triton model repository served beside the notebook's models, and load tests of any Triton server's models."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from helpers import fp32, free_ports, infer_json, port_ports, process_tree, wait_gone, wait_ports_free, wait_until
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

import tritonnb
from tritonnb.loadtest.perf import run_perf
from tritonnb.observe.monitor import Monitor, target_for
from tritonnb.observe.remote_spec import remote_spec
from tritonnb.signature import ModelSpec, TensorSpec
from tritonnb.triton.repository import needs_auto_complete
from tritonnb.ui import render

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 4 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 4 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""
DOUBLE = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            y = pb_utils.Tensor("y", (x * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[y]))
        return responses
"""
BROKEN = 'raise RuntimeError("this model cannot load")\n'
# a model whose config.pbtxt names only its backend: Triton's auto-complete asks model.py for the rest
AUTO_CONFIG = 'backend: "python"\n'
AUTO = DOUBLE.replace(
    "class TritonPythonModel:",
    """class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "x", "data_type": "TYPE_FP32", "dims": [4]})
        config.add_output({"name": "y", "data_type": "TYPE_FP32", "dims": [4]})
        config.set_max_batch_size(8)
        return config
""",
)
RECOVERY_DEADLINE_S = 60.0


def _add_model(repository: pathlib.Path, name: str, source: str = DOUBLE) -> pathlib.Path:
    folder = repository / name
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name))
    (folder / "1" / "model.py").write_text(textwrap.dedent(source))
    return folder


def _files(repository: pathlib.Path) -> set[str]:
    """The repository's files, but the bytecode the python backend compiles next to a model.py (as it does under
    any tritonserver)."""
    return {str(p.relative_to(repository)) for p in repository.rglob("*") if "__pycache__" not in p.parts}


def _doubled(http_url: str, model: str) -> tuple[int, dict]:
    return infer_json(http_url, model, [fp32("x", [1, 4], [1, 2, 3, 4])])


def _stop_and_check(server) -> None:
    processes = process_tree(server.pid) if server.state == "READY" else []
    ports = [server.settings.port(e) for e in ("http", "grpc", "metrics")]
    tritonnb.stop()
    assert wait_gone(processes) == [], "tritonserver or stub processes outlived stop()"
    assert wait_ports_free(ports) == []


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """A repository with one python-backend model, ``double`` (y = x * 2)."""
    folder = tmp_path_factory.mktemp("repository")
    _add_model(folder, "double")
    return folder


def test_a_repository_that_is_missing_or_holds_no_model_fails_before_anything_starts(tmp_path, repository, shell):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "README.md").write_text("no model here\n")
    other = tmp_path / "other"
    _add_model(other, "Double")
    spaced = tmp_path / "with space"
    _add_model(spaced, "double")
    cases = [
        (tmp_path / "missing", "is not a folder"),
        (empty, "holds no model"),
        ([repository, other], f"'Double' of '{other}' clashes with model 'double' of '{repository}'"),
        (spaced, "uses the python backend, whose stub cannot start from a path with whitespace"),
    ]
    for value, message in cases:
        with pytest.raises(tritonnb.SpecError, match=message):
            tritonnb.start(model_repository=value, **port_ports(free_ports()))
        assert tritonnb.server() is None
    with pytest.raises(UsageError, match=r"SpecError: model repository .*missing.* is not a folder"):
        shell.run_line_magic("triton", f"start --model-repository {tmp_path / 'missing'}")
    assert tritonnb.server() is None


def test_a_model_that_fails_to_load_is_named_with_the_reason_and_the_server_stays_up(tmp_path):
    folder = tmp_path / "repository"
    _add_model(folder, "double")
    _add_model(folder, "broken", BROKEN)
    (_add_model(folder, "auto", AUTO) / "config.pbtxt").write_text(AUTO_CONFIG)
    complete = tmp_path / "complete"
    _add_model(complete, "double")
    assert needs_auto_complete([folder]) and not needs_auto_complete([complete])
    with pytest.raises(tritonnb.BindError) as caught:
        tritonnb.start(model_repository=str(folder), **port_ports(free_ports()))
    server = tritonnb.server()
    try:
        message = str(caught.value)
        assert f"model 'broken' of '{folder}'" in message and "RuntimeError: this model cannot load" in message
        assert "server runs on" in message
        assert server is not None and server.state == "READY"
        assert _doubled(server.http_url, "double")[0] == 200
        assert _doubled(server.http_url, "auto")[1]["outputs"][0]["data"] == [2, 4, 6, 8]  # auto-complete is on
        tritonnb.bind(lambda x: x, "nb", inputs=["x:float32[4]"], outputs=["y:float32[4]"])  # with it too
        assert _doubled(server.http_url, "nb")[0] == 200
        models = server.status()["repository_models"]
        assert models["double"]["state"] == "READY" and models["auto"]["state"] == "READY"
        assert models["broken"]["state"] == "UNAVAILABLE" and "this model cannot load" in models["broken"]["reason"]
    finally:
        _stop_and_check(server)


@pytest.fixture(scope="module")
def served(shell, repository):
    """``%triton start --model-repository`` in the shell, and a notebook model ``nb`` (y = x + 1) beside."""
    before = _files(repository)
    http, grpc, metrics = free_ports()
    with capture_output() as out:
        shell.run_line_magic(
            "triton",
            f"start --http-port {http} --grpc-port {grpc} --metrics-port {metrics} --model-repository {repository}",
        )
    assert f"model repository {repository}: serving double" in out.stdout
    with capture_output():
        shell.run_cell_magic(
            "triton_model", "nb --input x:float32[4] --output y:float32[4]", "def nb(x):\n return x + 1"
        )
    server = tritonnb.server()
    yield server
    assert _files(repository) == before, "something was written into the model repository"
    if tritonnb.server() is not None:
        _stop_and_check(server)


def test_both_models_answer_and_are_listed(served, shell, repository):
    assert _doubled(served.http_url, "double")[1]["outputs"][0]["data"] == [2, 4, 6, 8]
    assert _doubled(served.http_url, "nb")[1]["outputs"][0]["data"] == [2, 3, 4, 5]
    assert tritonnb.client("double")([[1, 1, 1, 1]])["y"].tolist() == [[2, 2, 2, 2]]
    with capture_output() as out:
        shell.run_line_magic("triton", "models")
        shell.run_line_magic("triton", "status")
    lines = out.stdout.splitlines()
    assert any(line.split()[:3] == ["double", "READY", "v1"] and f"repository {repository}" in line for line in lines)
    assert any(line.split()[:2] == ["nb", "READY"] for line in lines)
    assert f"repo     {repository}" in out.stdout


def test_the_panel_and_metrics_show_the_repository_model(served):
    snapshot = Monitor(target_for(server=served)).poll()
    double = snapshot.models["double"]
    assert (double.source, double.state, double.version) == ("repository", "READY", "1")
    assert (double.inputs, double.outputs) == ("x:float32[4]", "y:float32[4]")
    assert snapshot.models["nb"].source == "notebook"
    html = render.models_html(snapshot)
    assert 'data-model="double"' in html and "tnb-model-source" in html
    _doubled(served.http_url, "double")
    wait_until(  # Triton counts a request after it has answered it
        lambda: tritonnb.metrics()["models"]["double"]["success_total"] >= 1, 10, "Triton counted the request"
    )
    assert tritonnb.metrics()["models"]["double"]["source"] == "repository"


def test_the_spec_of_a_model_is_read_from_the_server(served):
    assert remote_spec(served.http_url, "double") == ModelSpec(
        "double", (TensorSpec("x", "float32", (4,)),), (TensorSpec("y", "float32", (4,)),), 8, 0, 1
    )
    assert remote_spec(served.http_url, "nb") == served.models["nb"].spec
    with pytest.raises(tritonnb.UnknownModelError, match=r"'ghost' at .*unknown model"):
        remote_spec(served.http_url, "ghost")
    (closed,) = free_ports(1)
    with pytest.raises(tritonnb.NoServerError, match="no Triton server answers"):
        remote_spec(f"http://127.0.0.1:{closed}", "double")


def test_perf_magic_load_tests_the_repository_model(served, shell):
    with capture_output():
        result = shell.run_line_magic("triton_perf", "double --concurrency 1 --duration 1")
    (row,) = result.rows
    assert row["throughput"] > 0 and row["errors"] == 0
    assert row["compute_infer_ms"] is not None  # the kernel's server: its statistics come with the token
    assert "-m double" in result.perf_analyzer
    with pytest.raises(UsageError, match="comes from a model repository"):
        shell.run_line_magic("triton_tune", "double --duration 0.1")


def test_names_cannot_clash_with_the_repository(served, shell):
    with pytest.raises(tritonnb.SpecError, match="'Double' clashes with model 'double' of the model repository"):
        tritonnb.bind(lambda x: x, "Double", inputs=["x:float32[4]"], outputs=["y:float32[4]"])
    with pytest.raises(UsageError, match="clashes with model 'double'"):
        shell.run_cell_magic("triton_model", "double", "def f(x):\n return x")
    assert _doubled(served.http_url, "double")[1]["outputs"][0]["data"] == [2, 4, 6, 8]


def test_perf_with_url_from_a_process_that_runs_no_server(served):
    code = textwrap.dedent(
        f"""
        import json, tritonnb
        from IPython.core.interactiveshell import InteractiveShell
        ip = InteractiveShell.instance()
        ip.run_line_magic("load_ext", "tritonnb")
        rows = {{}}
        for line in ["--url {served.http_url} double", "--url {served.http_url} --token={served.access_token} nb"]:
            rows[line.split()[-1]] = ip.run_line_magic("triton_perf", line + " --concurrency 1 --duration 0.5").rows
        print(json.dumps({{"server": tritonnb.server() is not None, "rows": rows}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["server"] is False  # nothing was started there
    for name, (row,) in seen["rows"].items():
        assert row["throughput"] > 0 and row["errors"] == 0, name
    assert seen["rows"]["double"][0]["compute_infer_ms"] is None  # no token: the statistics API is restricted
    assert seen["rows"]["nb"][0]["compute_infer_ms"] is not None  # with the token


def test_perf_with_url_api_and_its_errors(served):
    result = run_perf(None, "double", [1], 0.3, warmup_s=0, url=served.http_url.removeprefix("http://") + "/")
    assert result.rows[0]["requests"] > 0 and "-H" not in result.perf_analyzer
    with pytest.raises(tritonnb.UnknownModelError, match="'ghost'"):
        run_perf(None, "ghost", [1], 0.3, url=served.http_url)
    with pytest.raises(tritonnb.SpecError, match="plain HTTP"):
        run_perf(None, "double", [1], 0.3, url="https://example.invalid")
    with pytest.raises(tritonnb.SpecError, match="token goes with the URL"):
        run_perf(served, "double", [1], 0.3, token="t")


def test_restart_and_crash_recovery_load_the_repository_again(served, shell, repository):
    with capture_output() as out:
        shell.run_line_magic("triton", "restart")
    assert "models bound again: nb" in out.stdout and "loaded again: double" in out.stdout
    assert _doubled(served.http_url, "double")[0] == 200 and _doubled(served.http_url, "nb")[0] == 200
    killed = served.pid
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + RECOVERY_DEADLINE_S
    while not (served.pid != killed and served.state == "READY" and _answers(served, "double", "nb")):
        assert time.monotonic() < deadline, f"not back; state {served.state}:\n{served.logs(30)}"
        time.sleep(0.1)
    assert served.status()["repository_models"]["double"]["state"] == "READY"


def test_a_repository_model_named_like_a_notebook_model_is_not_loaded_at_restart(served, repository):
    added = _add_model(repository, "nb")
    try:
        with pytest.raises(tritonnb.BindError, match=f"model 'nb' of '{repository}' clashes with the notebook's"):
            served.restart()
    finally:
        shutil.rmtree(added)
    assert _doubled(served.http_url, "nb")[1]["outputs"][0]["data"] == [2, 3, 4, 5]  # still the notebook's
    assert _doubled(served.http_url, "double")[0] == 200
    assert "nb" not in served.repository_models


def _answers(server, *models: str) -> bool:
    try:
        return all(_doubled(server.http_url, m)[0] == 200 for m in models)
    except OSError:
        return False
