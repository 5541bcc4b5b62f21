"""Kubernetes manifests for an exported repository, built with the SDKs' own model classes so field names are right.

- a KServe ``InferenceService`` on KServe's Triton runtime (``kserve`` SDK);
- a plain Deployment + Service of the same image, with probes on Triton's health endpoints and Prometheus scrape
  annotations on the metrics port (``kubernetes`` client models).

The ``kserve`` package cannot be imported in a process that has imported ``tritonclient.grpc`` (every tritonnb
kernel): both register the KServe v2 protocol's protobuf messages under the same names. So the manifests are built
by running this module in a fresh Python (``python -m tritonnb.deploy.kubernetes``), which also checks that each
object round-trips through its SDK class.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import types
from collections.abc import Sequence
from typing import Any

import yaml

from tritonnb.deploy.compose import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    MODELS_PATH,
    TRITON_VERSION,
    RepositoryModel,
    image_name,
    resource_name,
    triton_release,
)
from tritonnb.errors import ExportError

STORAGE_URI = "pvc://triton-models/{repository}"  # where KServe finds the repository: edit to your bucket or volume


def inference_service(repository: str, models: Sequence[RepositoryModel]) -> Any:
    """A KServe ``V1beta1InferenceService`` serving the repository with KServe's Triton runtime."""
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
        constants,
    )
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements

    name = resource_name(repository)
    model = V1beta1ModelSpec(
        name="kserve-container",
        model_format=V1beta1ModelFormat(name="triton"),
        protocol_version="v2",
        runtime_version=f"{triton_release()}-py3",
        storage_uri=STORAGE_URI.format(repository=name),
        resources=_resources(models, V1ResourceRequirements),
    )
    if any(m.backend == "python" for m in models):  # KServe's stock Triton image has no torch
        model.image = image_name(repository)
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind="InferenceService",
        metadata=V1ObjectMeta(
            name=name,
            annotations={"serving.kserve.io/enable-prometheus-scraping": "true"},
            labels={"app.kubernetes.io/managed-by": "tritonnb-export"},
        ),
        spec=V1beta1InferenceServiceSpec(predictor=V1beta1PredictorSpec(model=model)),
    )


def deployment_and_service(repository: str, models: Sequence[RepositoryModel]) -> tuple[Any, Any]:
    """A plain ``V1Deployment`` of the repository's image and the ``V1Service`` in front of it."""
    from kubernetes import client as k8s

    name = resource_name(repository)
    labels = {"app": name}
    ports = [("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT)]
    container = k8s.V1Container(
        name="triton",
        image=image_name(repository),
        args=["tritonserver", f"--model-repository={MODELS_PATH}"],
        ports=[k8s.V1ContainerPort(name=n, container_port=p) for n, p in ports],
        readiness_probe=_probe(k8s, "/v2/health/ready", period_s=5),
        liveness_probe=_probe(k8s, "/v2/health/live", period_s=10),
        startup_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/v2/health/live", port="http"), period_seconds=5, failure_threshold=60
        ),
        resources=_resources(models, k8s.V1ResourceRequirements),
        volume_mounts=[k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")],
    )
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=labels,
            annotations={
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
            },
        ),
        spec=k8s.V1PodSpec(
            containers=[container],
            volumes=[k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory"))],
        ),
    )
    deployment = k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1DeploymentSpec(replicas=1, selector=k8s.V1LabelSelector(match_labels=labels), template=pod),
    )
    service = k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=k8s.V1ObjectMeta(name=name, labels=labels),
        spec=k8s.V1ServiceSpec(
            selector=labels, ports=[k8s.V1ServicePort(name=n, port=p, target_port=n) for n, p in ports]
        ),
    )
    return deployment, service


def _probe(k8s: types.ModuleType, path: str, period_s: int) -> Any:
    return k8s.V1Probe(http_get=k8s.V1HTTPGetAction(path=path, port="http"), period_seconds=period_s)


def _resources(models: Sequence[RepositoryModel], kind: type) -> Any:
    if any(m.gpu for m in models):
        return kind(limits={"nvidia.com/gpu": "1"})
    return kind(requests={"cpu": "1", "memory": "2Gi"})


def as_plain(obj: Any) -> dict:
    """An SDK object as the plain dict ``kubectl`` reads (camelCase keys, no nulls)."""
    from kserve import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def from_plain(data: Any, kind: str) -> Any:
    """Plain data back into the SDK class named ``kind`` (``V1beta1InferenceService``, ``V1Deployment``, ...).

    The SDKs' own readers resolve class names in one SDK only, and an InferenceService nests Kubernetes classes
    (``V1ObjectMeta``, ``V1ResourceRequirements``), so this reads the generated classes' own type tables.
    """
    import kserve.models
    import kubernetes.client.models

    if data is None:
        return None
    if kind.startswith("list["):
        return [from_plain(item, kind[5:-1]) for item in data]
    if kind.startswith("dict("):
        value_kind = kind[5:-1].split(", ", 1)[1]
        return {key: from_plain(value, value_kind) for key, value in data.items()}
    klass = getattr(kserve.models, kind, None) or getattr(kubernetes.client.models, kind, None)
    if klass is None:  # str, int, bool, object, ...
        return data
    fields = {
        attr: from_plain(data[klass.attribute_map[attr]], attr_kind)
        for attr, attr_kind in klass.openapi_types.items()
        if klass.attribute_map[attr] in data
    }
    return klass(**fields)


def manifests(repository: str, models: Sequence[RepositoryModel]) -> dict[str, str]:
    """File name -> YAML text, built in a fresh Python (see the module's docstring)."""
    request = json.dumps({"repository": repository, "models": [dataclasses.asdict(m) for m in models]})
    try:  # from a neutral folder: a kubernetes/ or yaml.py beside the notebook must not shadow the packages
        with tempfile.TemporaryDirectory() as neutral:
            done = subprocess.run(
                [sys.executable, "-m", __name__],
                input=request,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=neutral,
            )
    except subprocess.TimeoutExpired:
        raise ExportError("building the Kubernetes manifests took over 120 s") from None
    if done.returncode != 0:
        raise ExportError(f"building the Kubernetes manifests failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


def _checked(obj: Any, kind: str) -> dict:
    """``obj`` as a plain dict, after checking that it reads back into its SDK class unchanged."""
    plain = as_plain(obj)
    again = as_plain(from_plain(plain, kind))
    if again != plain:
        raise ValueError(f"{kind} does not round-trip through its SDK class: {plain} != {again}")
    return plain


def _build_manifests(repository: str, models: Sequence[RepositoryModel]) -> dict[str, str]:
    name = resource_name(repository)
    header = (
        f"# Built by tritonnb export (Triton {TRITON_VERSION}). Build and push the image first:\n"
        f"#   docker build -t {image_name(repository)} . && docker push {image_name(repository)}\n"
        "# (use your registry's name for the image here and in the Dockerfile's tag)\n"
    )
    isvc_note = (
        f"# KServe copies the repository from storageUri (now {STORAGE_URI.format(repository=name)}):\n"
        "# upload this folder there, or change it to your bucket.\n"
        "# Apply: kubectl apply -f kubernetes-inferenceservice.yaml\n"
    )
    deployment, service = deployment_and_service(repository, models)
    return {
        "kubernetes-inferenceservice.yaml": header
        + isvc_note
        + _yaml(_checked(inference_service(repository, models), "V1beta1InferenceService")),
        "kubernetes-deployment.yaml": header
        + "# Apply: kubectl apply -f kubernetes-deployment.yaml\n"
        + yaml.safe_dump_all([_checked(deployment, "V1Deployment"), _checked(service, "V1Service")], sort_keys=False),
    }


def _yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False)


if __name__ == "__main__":
    _request = json.load(sys.stdin)
    _models = [RepositoryModel(**m) for m in _request["models"]]
    json.dump(_build_manifests(_request["repository"], _models), sys.stdout)
