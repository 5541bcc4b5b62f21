"""The files beside an exported repository that run it: docker compose, a Dockerfile, a local script, a README."""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import sys
from collections.abc import Sequence

__all__ = [
    "MODELS_PATH",
    "REQUIREMENTS_FILE",
    "SHM_SIZE",
    "TRITON_VERSION",
    "VERTEX_AI_PORT",
    "ExportedModel",
    "Runtime",
    "compose_file",
    "dockerfile",
    "image_name",
    "readme",
    "requirements_file",
    "resource_name",
    "serve_here",
    "template",
    "triton_image",
    "triton_release",
    "vertex_ai_default_model",
]

TRITON_VERSION = "2.51.0"  # the tritonserver that nvidia-pytriton 0.7.0 ships (checked by a contract test)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
SHM_SIZE = "1gb"  # the python backend moves tensors through /dev/shm; Docker's default 64 MB is too small
MODELS_PATH = "/models"  # where the repository sits inside the container
REQUIREMENTS_FILE = "requirements.txt"  # the installed packages the python-format models use, pinned
VERTEX_AI_PORT = 8080  # Triton's Vertex AI port when AIP_HTTP_PORT is not set (Vertex AI sets it)


def template(name: str) -> str:
    """The text of a file shipped in ``tritonnb/deploy/templates``."""
    return importlib.resources.files("tritonnb.deploy").joinpath("templates", name).read_text(encoding="utf-8")


def triton_release(version: str = TRITON_VERSION) -> str:
    """The NGC container release of a Triton server version: 2.51.0 is 24.10 (one release a month since 2.19, 22.02)."""
    minor = int(version.split(".")[1])
    months = (2022 * 12 + 1) + (minor - 19)  # 2.19 = 2022-02, months counted from year 0, January = 0
    return f"{months // 12 % 100:02d}.{months % 12 + 1:02d}"


def triton_image(version: str = TRITON_VERSION) -> str:
    """The stock Triton image of the same release as the bundled server."""
    return f"nvcr.io/nvidia/tritonserver:{triton_release(version)}-py3"


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """A model of an exported repository, as the files around the models need to know it."""

    name: str
    backend: str  # python or pytorch
    gpu: bool
    bytes_tensors: bool = False  # an input or output of dtype bytes


@dataclasses.dataclass(frozen=True)
class Runtime:
    """The Python and packages a python-format model needs in the image (those of the exporting process)."""

    python: str
    torch: str
    cloudpickle: str
    numpy: str

    @classmethod
    def here(cls) -> Runtime:
        """This process's versions."""
        import cloudpickle
        import numpy
        import torch

        return cls(
            f"{sys.version_info[0]}.{sys.version_info[1]}",
            torch.__version__.split("+")[0],
            cloudpickle.__version__,
            numpy.__version__,
        )

    def numpy_requirement(self, models: Sequence[ExportedModel]) -> str:
        """The notebook's numpy; ``numpy<2`` where it is 2 and a python model has bytes tensors, which Triton 2.51's
        python-backend stub reads and writes through numpy 1's C API only (numpy 1 loads numpy 2's pickles)."""
        if int(self.numpy.split(".")[0]) >= 2 and any(m.backend == "python" and m.bytes_tensors for m in models):
            return "numpy<2"
        return f"numpy=={self.numpy}"


def resource_name(repository: str) -> str:
    """A DNS-1035 label from the repository folder's name (Kubernetes objects, the image): a-z, 0-9 and -."""
    cleaned = "".join(c if c.isascii() and c.isalnum() else "-" for c in repository.lower())
    cleaned = "-".join(part for part in cleaned.split("-") if part)[:50].strip("-")
    return cleaned if cleaned[:1].isalpha() else f"triton-{cleaned}".strip("-")


def image_name(repository: str) -> str:
    """The image the Dockerfile builds: the stock one with the repository (and Python packages) inside."""
    return f"{resource_name(repository)}-triton:latest"


def dockerfile(models: Sequence[ExportedModel], runtime: Runtime) -> str:
    """A Dockerfile: the stock Triton image, plus, for python-format models, the notebook's Python and packages;
    its command follows Vertex AI's custom-container contract (and is plain tritonserver elsewhere)."""
    lines = [
        "# Built by tritonnb export: Triton of the same release as the notebook's server, with this repository inside.",
        f"FROM {triton_image()}",
        "",
    ]
    if any(m.backend == "python" for m in models):
        lines += _python_environment(runtime, runtime.numpy_requirement(models))
    lines += [f"COPY --chown=1000:1000 . {MODELS_PATH}", *_vertex_ai_lines(models), ""]
    return "\n".join(lines)


def vertex_ai_default_model(models: Sequence[ExportedModel]) -> str | None:
    """The model Vertex AI's predict route runs: the first by name (Triton needs one named when there are several)."""
    return min((m.name for m in models), default=None)


def _vertex_ai_lines(models: Sequence[ExportedModel]) -> list[str]:
    """The image's command: plain tritonserver, which turns to Vertex AI's contract where Vertex AI sets ``AIP_*``."""
    default = vertex_ai_default_model(models)
    command = f'exec tritonserver --model-repository="${{AIP_STORAGE_URI:-{MODELS_PATH}}}"'
    command += " ${VERTEX_AI_DEFAULT_MODEL:+--vertex-ai-default-model=$VERTEX_AI_DEFAULT_MODEL}"
    return [
        "# Vertex AI (custom container): Vertex AI sets AIP_MODE=PREDICTION, and tritonserver then answers",
        "# AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE on AIP_HTTP_PORT (8080 unless set) instead of HTTP and gRPC.",
        "# AIP_STORAGE_URI (the model's artifact URI, gs://...) is the repository when set, else the copy above.",
        "# The predict route runs VERTEX_AI_DEFAULT_MODEL (set another with --container-env-vars). Elsewhere the",
        "# same command serves HTTP 8000, gRPC 8001 and metrics 8002.",
        *([f"ENV VERTEX_AI_DEFAULT_MODEL={default}"] if default else []),
        f"EXPOSE {HTTP_PORT} {GRPC_PORT} {METRICS_PORT} {VERTEX_AI_PORT}",
        f"CMD {json.dumps(['sh', '-c', command])}",
    ]


def requirements_file(requirements: Sequence[str]) -> str:
    """requirements.txt: the installed packages the python-format models use, pinned to the notebook's versions."""
    header = (
        "# Built by tritonnb export: the installed packages the python-format models use, at the notebook's versions.\n"
        "# torch, numpy and cloudpickle are installed by the Dockerfile itself; it installs these with them, and\n"
        "# serve_here.sh's Python needs them too (pip install -r requirements.txt).\n"
    )
    return header + "".join(f"{line}\n" for line in requirements)


def _python_environment(runtime: Runtime, numpy: str) -> list[str]:
    """The notebook's Python version in a venv the python backend runs, with the stub built for that version.

    ``function.pt`` is bytecode of the notebook's Python, so the backend must run that version. The stock image has
    its own Python and no torch; nvidia-pytriton's wheel carries python-backend stubs for CPython 3.8 to 3.13.
    """
    py = runtime.python
    text = template("python-environment.Dockerfile").format(
        py=py,
        site=f"/opt/model-env/lib/python{py}/site-packages",
        torch=runtime.torch,
        numpy=numpy,
        cloudpickle=runtime.cloudpickle,
    )
    return [*text.splitlines(), ""]


def compose_file(repository: str, models: Sequence[ExportedModel]) -> str:
    """docker-compose.yml for one machine: the image, ports, shm, GPUs, a readiness healthcheck, the repository."""
    service: dict = {
        "build": ".",
        "image": image_name(repository),
        "command": ["tritonserver", f"--model-repository={MODELS_PATH}"],
        "ports": [f"{p}:{p}" for p in (HTTP_PORT, GRPC_PORT, METRICS_PORT)],
        "shm_size": SHM_SIZE,
        "volumes": [{"type": "bind", "source": ".", "target": MODELS_PATH, "read_only": True}],
        "healthcheck": {
            "test": ["CMD", "curl", "-fsS", f"http://localhost:{HTTP_PORT}/v2/health/ready"],
            "interval": "10s",
            "timeout": "5s",
            "retries": 3,
            "start_period": "60s",
        },
    }
    if any(m.gpu for m in models):
        service["deploy"] = {
            "resources": {"reservations": {"devices": [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]}}
        }
    header = (
        "# Built by tritonnb export. Start: docker compose up -d --build; check: curl localhost:8000/v2/health/ready\n"
    )
    import yaml

    return header + yaml.safe_dump({"services": {"triton": service}}, sort_keys=False)


def serve_here() -> str:
    """serve_here.sh: the repository served by nvidia-pytriton's tritonserver on this machine, without Docker."""
    return template("serve_here.sh")


def readme(repository: str, models: Sequence[ExportedModel]) -> str:
    """How to start the repository, check it with curl and load-test it with perf_analyzer."""
    rows = "\n".join(f"| `{m.name}` | {m.backend} | {'GPU' if m.gpu else 'CPU'} |" for m in models)
    return template("README.md").format(
        repository=repository,
        rows=rows,
        image=triton_image(),
        image_name=image_name(repository),
        release=triton_release(),
        first=models[0].name if models else "MODEL",
        default_model=vertex_ai_default_model(models) or "MODEL",
        vertex_port=VERTEX_AI_PORT,
    )
