"""Kubernetes manifests for an exported repository, as plain data written with YAML.

- a KServe ``InferenceService`` (``serving.kserve.io/v1beta1``) on KServe's Triton runtime;
- a plain ``Deployment`` (``apps/v1``) + ``Service`` (``v1``) of the same image, with probes on Triton's health
  endpoints and Prometheus scrape annotations on the metrics port.

Field names and nesting follow KServe's InferenceService CRD and the Kubernetes API; the tests check the manifests
against those published schemas, and read them back into the ``kserve`` and ``kubernetes`` SDKs' classes where
those are installed (``pip install 'tritonnb[kubernetes]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from tritonnb.deploy.compose import (
    GRPC_PORT,
    HTTP_PORT,
    METRICS_PORT,
    MODELS_PATH,
    TRITON_VERSION,
    ExportedModel,
    image_name,
    resource_name,
    triton_release,
)

__all__ = ["PORTS", "STORAGE_URI", "Manifest", "deployment", "inference_service", "manifests", "service"]

STORAGE_URI = "pvc://triton-models/{repository}"  # where KServe finds the repository: edit to your bucket or volume
PORTS = (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))

Manifest = dict[str, Any]


def inference_service(repository: str, models: Sequence[ExportedModel]) -> Manifest:
    """A KServe ``InferenceService`` serving the repository with KServe's Triton runtime."""
    name = resource_name(repository)
    python = any(m.backend == "python" for m in models)
    own_image = {"image": image_name(repository)} if python else {}  # KServe's stock Triton image has no torch
    model = {
        **own_image,
        "modelFormat": {"name": "triton"},
        "name": "kserve-container",
        "protocolVersion": "v2",
        "resources": _resources(models),
        "runtimeVersion": f"{triton_release()}-py3",
        "storageUri": STORAGE_URI.format(repository=name),
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "annotations": {"serving.kserve.io/enable-prometheus-scraping": "true"},
            "labels": {"app.kubernetes.io/managed-by": "tritonnb-export"},
            "name": name,
        },
        "spec": {"predictor": {"model": model}},
    }


def deployment(repository: str, models: Sequence[ExportedModel]) -> Manifest:
    """A ``Deployment`` of one pod running the repository's image."""
    name = resource_name(repository)
    container = {
        "args": ["tritonserver", f"--model-repository={MODELS_PATH}"],
        "image": image_name(repository),
        "livenessProbe": _probe("/v2/health/live", period_s=10),
        "name": "triton",
        "ports": [{"containerPort": port, "name": port_name} for port_name, port in PORTS],
        "readinessProbe": _probe("/v2/health/ready", period_s=5),
        "resources": _resources(models),
        "startupProbe": {"failureThreshold": 60, **_probe("/v2/health/live", period_s=5)},
        "volumeMounts": [{"mountPath": "/dev/shm", "name": "dshm"}],
    }
    pod = {
        "metadata": {
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(METRICS_PORT),
                "prometheus.io/path": "/metrics",
            },
            "labels": _labels(name),
        },
        "spec": {"containers": [container], "volumes": [{"emptyDir": {"medium": "Memory"}, "name": "dshm"}]},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"labels": _labels(name), "name": name},
        "spec": {"replicas": 1, "selector": {"matchLabels": _labels(name)}, "template": pod},
    }


def service(repository: str) -> Manifest:
    """The ``Service`` in front of the deployment's pods: Triton's HTTP, gRPC and metrics ports."""
    name = resource_name(repository)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"labels": _labels(name), "name": name},
        "spec": {
            "ports": [{"name": port_name, "port": port, "targetPort": port_name} for port_name, port in PORTS],
            "selector": _labels(name),
        },
    }


def _labels(name: str) -> dict[str, str]:
    """The label that ties the deployment, its pods and the service together; a new dict each time, so the YAML
    repeats it rather than writing an anchor and aliases."""
    return {"app": name}


def _probe(path: str, period_s: int) -> Manifest:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s}


def _resources(models: Sequence[ExportedModel]) -> Manifest:
    if any(m.gpu for m in models):
        return {"limits": {"nvidia.com/gpu": "1"}}
    return {"requests": {"cpu": "1", "memory": "2Gi"}}


def manifests(repository: str, models: Sequence[ExportedModel]) -> dict[str, str]:
    """File name -> YAML text: ``kubernetes-inferenceservice.yaml`` and ``kubernetes-deployment.yaml``."""
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
    plain = [deployment(repository, models), service(repository)]
    return {
        "kubernetes-inferenceservice.yaml": header
        + isvc_note
        + yaml.safe_dump(inference_service(repository, models), sort_keys=False),
        "kubernetes-deployment.yaml": header
        + "# Apply: kubectl apply -f kubernetes-deployment.yaml\n"
        + yaml.safe_dump_all(plain, sort_keys=False),
    }
