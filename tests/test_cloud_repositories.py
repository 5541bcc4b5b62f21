"""Model repositories in object stores: export to S3, GCS and Azure, then a fresh process serves each, against real
emulators on loopback (moto's S3 server, gcp-storage-emulator, Azurite) and no mock of any client."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import psutil
import pytest
import torch
from emulators import AZURITE_KEY, ROOT
from emulators import start as start_emulators
from emulators import stop as stop_emulators
from helpers import free_ports, port_ports, wait_gone, wait_ports_free

import tritonnb
from tritonnb.errors import ExportError, SpecError
from tritonnb.triton.object_store import Store, StoreURL
from tritonnb.triton.settings import resolve_settings

SCHEMES = ("s3", "gs", "as")
# what a fresh process runs: serve the repository at argv[1] and call model argv[2] on argv[4], on the ports argv[3];
# it prints the outputs, what the log says about the repository, the server's processes and the folders its stubs
# serve from (Triton's copy of the model: for s3:// and gs://, its download), then stops
SERVE = """
import json, sys
import numpy as np
import psutil
import tritonnb

url, name, ports, x = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
server = tritonnb.start(model_repository=url, **ports)
outputs = tritonnb.client(name)(np.array(x, dtype=np.float32))
root = psutil.Process(server.pid)
children = root.children(recursive=True)
print(json.dumps({
    "outputs": {key: value.tolist() for key, value in outputs.items()},
    "pids": [root.pid, *(child.pid for child in children)],
    "copies": [child.cmdline()[1].rsplit("/", 2)[0] for child in children if "python_backend_stub" in child.name()],
    "log": [line for line in server.logs(400).splitlines() if line.startswith("[tritonnb]")],
    "models": {name: str(model.repository) for name, model in server.repository_models.items()},
}))
tritonnb.stop()
"""
# each cloud's credentials, removed for the missing-credential test; and the variables that keep its client from
# finding others on this machine (files in the home folder, a metadata server)
CREDENTIALS = {
    "s3": (["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"], "AWS_ACCESS_KEY_ID"),
    "gs": (["STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"], "GOOGLE_APPLICATION_CREDENTIALS"),
    "as": (["AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN"], "AZURE_STORAGE_KEY"),
}


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    """The three emulators, and this process's environment pointing at them; stopped afterwards, leaving no process."""
    folder = tmp_path_factory.mktemp("emulators")
    running = start_emulators(folder)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in next(iter(running.values())).env.items():
            patch.setenv(key, value)
        yield running
    assert stop_emulators(running.values()) == [], "an emulator outlived its stop"


@pytest.fixture(scope="module")
def notebook_model(triton):
    """The notebook's model: a small torch MLP with fixed weights, served as ``mlp``."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

    def mlp(x):
        return net(x)

    tritonnb.bind(mlp, "mlp", inputs=["x:float32[4]"], outputs=["y:float32[3]"])
    return "mlp"


def _url(emulators, scheme: str, path: str) -> str:
    return f"{emulators[scheme].bucket_url}/{path}"


def test_urls_name_what_triton_reads(monkeypatch):
    """Triton's URL forms: an S3 endpoint from AWS_ENDPOINT_URL goes into the URL with its port spelled out."""
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example")
    store = Store(StoreURL.parse("s3://models/repo"), SpecError)
    assert store.triton_url() == "s3://https://minio.example:443/models/repo"
    given = StoreURL.parse("s3://http://127.0.0.1:9000/models/a/b/")
    assert (given.endpoint, given.bucket, given.key, str(given)) == (
        "http://127.0.0.1:9000",
        "models",
        "a/b",
        "s3://http://127.0.0.1:9000/models/a/b",
    )
    azure = StoreURL.parse("as://account/container/repo")
    assert (azure.account, azure.bucket, azure.key) == ("account", "container", "repo")
    with pytest.raises(ValueError, match="ACCOUNT/CONTAINER"):
        StoreURL.parse("as://account")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_missing_credential_is_a_clear_error(scheme, notebook_model, monkeypatch, tmp_path):
    """Without credentials, an export and a start each fail before doing anything, naming the bucket, the path and
    the variable to set."""
    names, named = CREDENTIALS[scheme]
    for name in names:
        monkeypatch.delenv(name, raising=False)
    missing = str(tmp_path / "missing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)  # nothing from the home folder or a metadata server
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", missing)
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    url = f"{'as://account/' if scheme == 'as' else f'{scheme}://'}bucket-x/some/repo"
    with pytest.raises(ExportError) as exported:
        tritonnb.export(notebook_model, url)
    with pytest.raises(SpecError) as served:
        resolve_settings(model_repository=url)  # what tritonnb.start checks before anything starts
    for error in (exported.value, served.value):
        assert "'bucket-x'" in str(error) and "'some/repo'" in str(error) and named in str(error), str(error)
        assert "Traceback" not in str(error)


def test_a_missing_bucket_is_named(emulators, notebook_model):
    with pytest.raises(ExportError, match="bucket 'no-such-bucket' does not exist"):
        tritonnb.export(notebook_model, "s3://no-such-bucket/repo")
    with pytest.raises(SpecError, match="holds no model"):
        resolve_settings(model_repository=_url(emulators, "gs", "empty"))


def test_a_refused_key_is_named(emulators, notebook_model, monkeypatch):
    """Azurite checks the account key: a wrong one is refused, and the error says which credentials to check."""
    wrong = os.environ["AZURE_STORAGE_CONNECTION_STRING"].replace(AZURITE_KEY, "d3Jvbmcga2V5" * 8)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    url = _url(emulators, "as", "refused")
    with pytest.raises(ExportError, match=r"access refused .*AZURE_STORAGE_CONNECTION_STRING"):
        tritonnb.export(notebook_model, url)
    with pytest.raises(SpecError, match=r"access refused .*AZURE_STORAGE_CONNECTION_STRING"):
        resolve_settings(model_repository=url)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_export_served_by_a_fresh_process_answers_as_the_notebook(scheme, emulators, notebook_model):
    """Export the served model to the store; a new Python process serves that repository (model_repository=URL) and
    answers exactly as the notebook's model; its server leaves no process or port behind."""
    url = _url(emulators, scheme, "repo")
    result = tritonnb.export(notebook_model, url)
    assert str(result.directory) == url and result.version == 1
    objects = Store(StoreURL.parse(url), SpecError).objects()
    assert {"mlp/config.pbtxt", "mlp/1/model.py", "mlp/1/function.pt", "README.md"} <= objects
    assert not any(".tritonnb-write-check" in key for key in objects)

    x = [[1.0, -2.0, 0.5, 3.0], [0.0, 0.25, -1.0, 2.0]]
    expected = tritonnb.client(notebook_model)(np.array(x, dtype=np.float32))
    ports = free_ports()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(":")}
    done = subprocess.run(
        [sys.executable, "-c", SERVE, url, notebook_model, json.dumps(port_ports(ports)), json.dumps(x)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["outputs"]["y"], expected["y"], rtol=1e-6)
    assert served["models"] == {"mlp": url}
    log = "\n".join(served["log"])
    if scheme == "as":  # Triton reaches only *.blob.core.windows.net: tritonnb serves a copy
        assert f"{url} copied to" in log, log
    else:
        assert f"tritonserver reads {url} itself" in log, log
    assert wait_gone([psutil.Process(pid) for pid in served["pids"] if psutil.pid_exists(pid)]) == []
    assert wait_ports_free(ports) == []
    assert served["copies"] and not any(map(os.path.exists, served["copies"])), "the model's copies outlived the stop"


def test_a_second_export_adds_a_version_and_force_replaces_one(emulators, notebook_model):
    url = _url(emulators, "s3", "versions")
    tritonnb.export(notebook_model, url)
    assert tritonnb.export(notebook_model, url).version == 2
    with pytest.raises(ExportError, match="version 1 of 'mlp' exists"):
        tritonnb.export(notebook_model, url, version=1)
    store = Store(StoreURL.parse(url), SpecError)
    store.write({"mlp/1/stale.txt": b"from an older export"})
    assert tritonnb.export(notebook_model, url, version=1, force=True).version == 1
    store.refresh()
    assert "mlp/1/stale.txt" not in store.objects() and "mlp/2/function.pt" in store.objects()
