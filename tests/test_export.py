"""Export to a model repository: a notebook's model served again by a plain tritonserver, and the fleet files."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jsonschema
import numpy as np
import pytest
import yaml
from helpers import free_ports, run_in_kernel, wait_ports_free
from jupyter_client.manager import KernelManager
from tritonclient.grpc import model_config_pb2

import tritonnb
from tritonnb.deploy import compose, kubernetes
from tritonnb.deploy.compose import ExportedModel
from tritonnb.deploy.model_config import parse_config
from tritonnb.errors import ExportError, UnknownModelError
from tritonnb.triton import engine

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TEMPLATES = pathlib.Path(compose.__file__).parent / "templates"
SCHEMAS = json.loads((pathlib.Path(__file__).parent / "fixtures" / "kubernetes_schemas.json").read_text())["schemas"]

NOTEBOOK = """
import numpy as np, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
for _ in range(50):  # train it, so the weights are not the initial ones
    x = torch.randn(32, 4)
    loss = ((net(x) - x[:, :3].cumsum(1)) ** 2).mean()
    optimizer.zero_grad(); loss.backward(); optimizer.step()
net.eval()
OFFSET = 0.25

def calibrate(t):
    return t * 2 + OFFSET
"""

CELL = """%%triton_model clf --input x:float32[4] --output scores:float32[3] --max-batch-size 8 --batch-delay-us 500
def clf(x):
    return calibrate(net(x))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A kernel serves ``clf`` (a trained module and a helper), exports it in both formats, records its outputs
    for fixed inputs, and is shut down."""
    root = tmp_path_factory.mktemp("export")
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel()
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        http, grpc, metrics = free_ports()
        steps = [
            f"%load_ext tritonnb\n%triton start --http-port {http} --grpc-port {grpc} --metrics-port {metrics}",
            NOTEBOOK,
            CELL,
            f"%triton export clf {root / 'python'}",
            f"tritonnb.export('clf', {str(root / 'torchscript')!r}, model_format='torchscript')",
            "inputs = np.arange(20, dtype=np.float32).reshape(5, 4) / 10\n"
            "served = tritonnb.client('clf')(x=inputs)['scores']\n"
            f"np.save({str(root / 'inputs.npy')!r}, inputs); np.save({str(root / 'outputs.npy')!r}, served)",
        ]
        for code in steps:
            out, reply = run_in_kernel(client, "import tritonnb\n" + code if code is NOTEBOOK else code)
            assert reply["status"] == "ok", out
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=False)
    assert wait_ports_free([http, grpc, metrics]) == []
    return root


def test_exported_files(exported):
    repo = exported / "python"
    assert sorted(p.name for p in (repo / "clf" / "1").iterdir()) == [
        "export.json",
        "function.pt",
        "model.py",
        "source.py",
    ]
    assert "return calibrate(net(x))" in (repo / "clf" / "1" / "source.py").read_text()
    config = parse_config((repo / "clf" / "config.pbtxt").read_text())
    assert (config.backend, config.max_batch_size) == ("python", 8)
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("x", model_config_pb2.TYPE_FP32, [4])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("scores", [3])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in config.instance_group] == [(g.KIND_CPU, 1) for g in config.instance_group]
    assert config.model_warmup[0].inputs["x"].zero_data
    assert list(config.version_policy.specific.versions) == [1]  # every version of the folder, side by side
    assert parse_config((exported / "torchscript" / "clf" / "config.pbtxt").read_text()).backend == "pytorch"

    compose = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]["triton"]
    assert compose["ports"] == ["8000:8000", "8001:8001", "8002:8002"]
    assert compose["shm_size"] and "deploy" not in compose  # no GPU reservation for a CPU model
    assert compose["healthcheck"]["test"][-1].endswith("/v2/health/ready")
    assert compose["volumes"] == [{"type": "bind", "source": ".", "target": "/models", "read_only": True}]
    assert "nvcr.io/nvidia/tritonserver:24.10-py3" in (repo / "Dockerfile").read_text()
    assert "cloudpickle" in (repo / "Dockerfile").read_text()
    assert f'"numpy=={np.__version__}"' in (repo / "Dockerfile").read_text()  # the notebook's, as for torch

    deployment, service = yaml.safe_load_all((repo / "kubernetes-deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8002"
    assert [p["port"] for p in service["spec"]["ports"]] == [8000, 8001, 8002]
    isvc = yaml.safe_load((repo / "kubernetes-inferenceservice.yaml").read_text())
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["modelFormat"] == {"name": "triton"}
    for manifest in (deployment, service, isvc):
        _check_schema(manifest)


# --- the Kubernetes manifests: the published schemas, and the SDKs' classes where installed ------------------


def _check_schema(manifest: dict) -> None:
    """jsonschema.ValidationError unless ``manifest`` fits its kind's schema, derived from the published one."""
    jsonschema.Draft202012Validator(SCHEMAS[manifest["kind"]]).validate(manifest)


def _manifests(repository: str, models: list[ExportedModel]) -> dict[str, dict]:
    """Kind -> manifest, as ``kubernetes.manifests`` writes them."""
    files = kubernetes.manifests(repository, models)
    return {doc["kind"]: doc for text in files.values() for doc in yaml.safe_load_all(text)}


MODEL_SETS = {
    "cpu python": ("my_repo", [ExportedModel("clf", "python", False)]),
    "gpu, python and pytorch": (
        "Fleet Repo 2",
        [ExportedModel("a", "pytorch", gpu=True), ExportedModel("b", "python", gpu=False)],
    ),
    "torchscript only": ("ts", [ExportedModel("net", "pytorch", False)]),
    "no model": ("9lives", []),
}


@pytest.mark.parametrize("models", MODEL_SETS.values(), ids=MODEL_SETS.keys())
def test_manifests_match_the_published_schemas(models):
    manifests = _manifests(*models)
    assert sorted(manifests) == ["Deployment", "InferenceService", "Service"]
    for manifest in manifests.values():
        _check_schema(manifest)
        name = manifest["metadata"]["name"]  # a DNS-1035 label, as the API server requires of a Service's name
        assert len(name) <= 63 and name[0].isalpha() and all(c.islower() or c.isdigit() or c == "-" for c in name)
    container = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert ("limits" in container["resources"]) == any(m.gpu for m in models[1])


def _set(data: dict, path: str, value: object) -> None:
    *parents, last = path.split(".")
    for key in parents:
        data = data[int(key)] if isinstance(data, list) else data[key]
    if value is None:
        del data[last]
    else:
        data[last] = value


WRONG = {  # a change that kubectl apply (strict field validation) would refuse -> the kind and the path changed
    "misspelled field": ("Deployment", "spec.template.spec.containers.0.readinesProbe", {}),
    "port as text": ("Deployment", "spec.template.spec.containers.0.ports.0.containerPort", "8000"),
    "container without a name": ("Deployment", "spec.template.spec.containers.0.name", None),
    "not a quantity": ("Deployment", "spec.template.spec.containers.0.resources.requests.memory", "2 GiB"),
    "service port without a port": ("Service", "spec.ports.0.port", None),
    "other API version": ("InferenceService", "apiVersion", "serving.kserve.io/v1alpha1"),
    "KServe field misspelled": ("InferenceService", "spec.predictor.model.storageURI", "pvc://x"),
    "model format without a name": ("InferenceService", "spec.predictor.model.modelFormat.name", None),
}


@pytest.mark.parametrize("kind, path, value", WRONG.values(), ids=WRONG.keys())
def test_the_schemas_refuse_a_wrong_manifest(kind, path, value):
    manifest = _manifests(*MODEL_SETS["cpu python"])[kind]
    _set(manifest, path, value)
    with pytest.raises(jsonschema.ValidationError):
        _check_schema(manifest)


def _sdk_object(data: object, kind: str, modules: list) -> object:
    """Plain data as the SDK class named ``kind``, field by field through the generated classes' type tables (the
    SDKs' own readers resolve class names in one SDK only, and an InferenceService nests Kubernetes classes)."""
    import re

    if data is None:
        return None
    inner = re.fullmatch(r"(?:list|List)\[(.+)\]", kind)
    if inner:
        return [_sdk_object(item, inner[1], modules) for item in data]
    inner = re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", kind)
    if inner:
        return {key: _sdk_object(value, inner[1] or inner[2], modules) for key, value in data.items()}
    klass = next((getattr(module, kind) for module in modules if hasattr(module, kind)), None)
    if klass is None:  # str, int, object, ...
        return data
    fields = {
        attr: _sdk_object(data[klass.attribute_map[attr]], attr_kind, modules)
        for attr, attr_kind in klass.openapi_types.items()
        if klass.attribute_map[attr] in data
    }
    return klass(**fields)


def _print_read_back(kind: str) -> None:
    """The manifest on stdin read into SDK class ``kind`` and written out again: ``[class name, manifest]``."""
    import json
    import sys

    import kubernetes.client

    modules, client = [kubernetes.client.models], kubernetes.client.ApiClient()
    if kind.startswith("V1beta1"):
        import kserve

        modules, client = [kserve.models, *modules], kserve.ApiClient()
    obj = _sdk_object(json.load(sys.stdin), kind, modules)
    print(json.dumps([type(obj).__name__, client.sanitize_for_serialization(obj)]))


def _sdk_case(kind: str, file: str, index: int, packages: tuple[str, ...]) -> object:
    """A case of the read-back test: SDK class ``kind`` for document ``index`` of ``file``; skipped without the SDKs."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    reason = (
        f"{' and '.join(missing)} not installed (pip install 'tritonnb[kubernetes]'); "
        "the manifests are still checked against the published schemas"
    )
    return pytest.param(kind, file, index, id=kind, marks=pytest.mark.skipif(bool(missing), reason=reason))


SDK_CASES = [
    _sdk_case("V1beta1InferenceService", "kubernetes-inferenceservice.yaml", 0, ("kubernetes", "kserve")),
    _sdk_case("V1Deployment", "kubernetes-deployment.yaml", 0, ("kubernetes",)),
    _sdk_case("V1Service", "kubernetes-deployment.yaml", 1, ("kubernetes",)),
]


@pytest.mark.parametrize("kind, file, index", SDK_CASES)
def test_manifests_read_back_through_the_sdks(exported, kind, file, index, tmp_path):
    """Each exported manifest read into its SDK class and written out again is unchanged: no field is unknown to
    the class, none is missing that it requires. In a fresh Python: kserve and tritonclient.grpc cannot share one."""
    manifest = list(yaml.safe_load_all((exported / "python" / file).read_text()))[index]
    functions = "\n".join(inspect.getsource(f) for f in (_sdk_object, _print_read_back))
    code = f"{functions}\n_print_read_back({kind!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [kind, manifest]


# --- the templates shipped in the package ----------------------------------------------------------------------


def test_serve_here_template_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(TEMPLATES / "serve_here.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_model_template_compiles():
    compile((TEMPLATES / "model.py").read_text(), "model.py", "exec")


def test_fleet_files_fill_their_templates():
    """Every placeholder of the formatted templates (README, Dockerfile) is filled; serve_here.sh is copied as is."""
    from tritonnb.deploy.export import _fleet_files

    runtime = compose.Runtime("3.11", "2.13.0", "3.1.1", "2.1.0")
    models = [ExportedModel("a", "python", True, True), ExportedModel("b", "pytorch", False)]
    files = _fleet_files("repo", models, runtime)
    assert files["serve_here.sh"] == (TEMPLATES / "serve_here.sh").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in files["Dockerfile"]
    assert '"torch==2.13.0" "numpy<2" "cloudpickle==3.1.1"' in files["Dockerfile"]
    assert "| `a` | python | GPU |\n| `b` | pytorch | CPU |" in files["README.md"]
    for rel in ("README.md", "Dockerfile"):
        assert not re.search(r"\{[a-z_]+\}", files[rel]), rel


def _blocker(root: pathlib.Path) -> pathlib.Path:
    """A folder that makes ``import tritonnb`` fail, first on PYTHONPATH: proof the served model does not need it."""
    package = root / "no_tritonnb" / "tritonnb"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("raise ImportError('the exported model must not need tritonnb')\n")
    return package.parent


def test_a_plain_tritonserver_serves_the_export(exported):
    """The repository's own serve_here.sh runs the tritonserver binary of nvidia-pytriton, as a user would; the
    answers over HTTP and gRPC equal the notebook's, and the log shows the warm-up."""
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    repo = exported / "python"
    http, grpc, metrics = ports = free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTRITON", "TRITONNB"))}
    env.update(PYTHON=sys.executable, PYTHONPATH=str(_blocker(exported)))
    log = (exported / "tritonserver.log").open("w")
    process = subprocess.Popen(
        ["bash", str(repo / "serve_here.sh"), f"--http-port={http}", f"--grpc-port={grpc}",
         f"--metrics-port={metrics}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
         "--metrics-address=127.0.0.1", "--log-verbose=1", "--exit-timeout-secs=5"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if client.is_model_ready("clf"):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        text = (exported / "tritonserver.log").read_text()
        assert client.is_model_ready("clf"), text[-3000:]
        inputs, expected = np.load(exported / "inputs.npy"), np.load(exported / "outputs.npy")

        request = httpclient.InferInput("x", list(inputs.shape), "FP32")
        request.set_data_from_numpy(inputs)
        np.testing.assert_allclose(client.infer("clf", [request]).as_numpy("scores"), expected, rtol=1e-6)
        grpc_client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc}")
        request = grpcclient.InferInput("x", list(inputs.shape), "FP32")
        request.set_data_from_numpy(inputs)
        np.testing.assert_allclose(grpc_client.infer("clf", [request]).as_numpy("scores"), expected, rtol=1e-6)
        grpc_client.close()

        assert "is running warmup sample 'clf_warmup'" in text
        assert "the exported model must not need tritonnb" not in text
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
    assert wait_ports_free(ports) == []


def test_torchscript_export_loads_back_with_torch(exported):
    import torch

    model = torch.jit.load(str(exported / "torchscript" / "clf" / "1" / "model.pt"))
    inputs, expected = np.load(exported / "inputs.npy"), np.load(exported / "outputs.npy")
    with torch.no_grad():
        (scores,) = model(torch.from_numpy(inputs))
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
    assert [a.name for a in model.forward.schema.arguments][1:] == ["x"]  # the PyTorch backend matches by name


# --- bad cases, in this process: clear errors and nothing half-written ---------------------------------------


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_unknown_model(triton, tmp_path):
    with pytest.raises(UnknownModelError, match="no model named 'nope'"):
        tritonnb.export("nope", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("kind", ["file", "socket", "lock"])
def test_a_closure_that_cannot_be_captured_names_the_variable(triton, tmp_path, kind):
    held = {
        "file": lambda: (tmp_path / "log.txt").open("w"),
        "socket": lambda: socket.socket(),
        "lock": threading.Lock,
    }[kind]()
    handle = held

    def uses(x):
        _ = handle
        return x * 2

    tritonnb.bind(uses, "leaky", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    try:
        with pytest.raises(ExportError, match=r"cannot capture 'handle'"):
            tritonnb.export("leaky", tmp_path / "repo")
        assert not (tmp_path / "repo").exists() or _tree(tmp_path / "repo") == {}
    finally:
        tritonnb.unbind("leaky")
        if hasattr(held, "close"):
            held.close()


def test_versions_are_added_and_never_overwritten_silently(triton, tmp_path):
    repo = tmp_path / "repo"
    tritonnb.bind(lambda x: x + 1, "inc", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    try:
        assert tritonnb.export("inc", repo).version == 1
        assert tritonnb.export("inc", repo).version == 2
        before = _tree(repo)
        with pytest.raises(ExportError, match="version 1 of 'inc' exists"):
            tritonnb.export("inc", repo, version=1)
        assert _tree(repo) == before
        result = tritonnb.export("inc", repo, version=1, force=True)
        assert result.version == 1
        assert not list(tmp_path.rglob("*tritonnb-export*"))  # no staging folder left
        with pytest.raises(ExportError, match="holds a python model"):
            tritonnb.export("inc", repo, model_format="torchscript")
        # a file around the models that the user edited is kept; the new one goes beside it
        compose = repo / "docker-compose.yml"
        compose.write_text(compose.read_text() + "# my change\n")
        result = tritonnb.export("inc", repo)
        assert compose.read_text().endswith("# my change\n") and (repo / "docker-compose.yml.new").exists()
        assert any("docker-compose.yml was changed by hand" in note for note in result.notes)
    finally:
        tritonnb.unbind("inc")


def test_a_folder_that_cannot_be_written(triton, tmp_path):
    tritonnb.bind(lambda x: x + 1, "inc2", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    try:
        with pytest.raises(ExportError, match="cannot export"):
            tritonnb.export("inc2", "/proc/tritonnb-repo")
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        with pytest.raises(ExportError, match="is not a directory"):
            tritonnb.export("inc2", blocker / "repo")
    finally:
        tritonnb.unbind("inc2")


def test_torchscript_refuses_bytes(triton, tmp_path):
    tritonnb.bind(lambda s: s, "echo", inputs=["s:bytes[1]"], outputs=["t:bytes[1]"])
    try:
        with pytest.raises(ExportError, match="TorchScript cannot take"):
            tritonnb.export("echo", tmp_path / "repo", model_format="torchscript")
        result = tritonnb.export("echo", tmp_path / "repo")  # the python format takes bytes, without a warm-up
        assert any("no model_warmup" in note for note in result.notes)
        numpy_2 = engine.numpy_2()  # Triton 2.51's stub reads bytes through numpy 1's C API
        assert ('"numpy<2"' in (tmp_path / "repo" / "Dockerfile").read_text()) == numpy_2
        assert any("bytes tensors: the image's Python gets numpy<2" in note for note in result.notes) == numpy_2
    finally:
        tritonnb.unbind("echo")


def test_bundled_server_is_the_release_the_files_name(triton):
    from tritonnb.deploy.compose import TRITON_VERSION, triton_image

    assert triton.version == TRITON_VERSION
    assert triton_image() == "nvcr.io/nvidia/tritonserver:24.10-py3"


def test_a_function_that_fails_on_zeros_gets_no_warmup(triton, tmp_path):
    def needs_signal(x):
        if not bool((x != 0).any()):
            raise ValueError("all zeros")
        return x

    tritonnb.bind(needs_signal, "picky", inputs=["x:float32[2]"], outputs=["y:float32[2]"])
    try:
        result = tritonnb.export("picky", tmp_path / "repo")
        assert any("fails on Triton's zero sample (ValueError: all zeros)" in note for note in result.notes)
        assert not parse_config((tmp_path / "repo" / "picky" / "config.pbtxt").read_text()).model_warmup
    finally:
        tritonnb.unbind("picky")


def test_serve_here_says_it_cannot_serve_torchscript(exported):
    done = subprocess.run(
        ["bash", str(exported / "torchscript" / "serve_here.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "has only the python backend" in done.stderr
