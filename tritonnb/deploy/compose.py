"""The files beside an exported repository that run it: docker compose, a Dockerfile, a local script, a README."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import yaml

TRITON_VERSION = "2.51.0"  # the tritonserver that nvidia-pytriton 0.7.0 ships (checked by a contract test)
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
SHM_SIZE = "1gb"  # the python backend moves tensors through /dev/shm; Docker's default 64 MB is too small
MODELS_PATH = "/models"  # where the repository sits inside the container


def triton_release(version: str = TRITON_VERSION) -> str:
    """The NGC container release of a Triton server version: 2.51.0 is 24.10 (one release a month since 2.19, 22.02)."""
    minor = int(version.split(".")[1])
    months = (2022 * 12 + 1) + (minor - 19)  # 2.19 = 2022-02, months counted from year 0, January = 0
    return f"{months // 12 % 100:02d}.{months % 12 + 1:02d}"


def triton_image(version: str = TRITON_VERSION) -> str:
    """The stock Triton image of the same release as the bundled server."""
    return f"nvcr.io/nvidia/tritonserver:{triton_release(version)}-py3"


@dataclasses.dataclass(frozen=True)
class RepositoryModel:
    """What the fleet files need to know of one model in the repository."""

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

    def numpy_requirement(self, models: Sequence[RepositoryModel]) -> str:
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


def dockerfile(models: Sequence[RepositoryModel], runtime: Runtime) -> str:
    """A Dockerfile: the stock Triton image, plus, for python-format models, the notebook's Python and packages."""
    lines = [
        "# Built by tritonnb export: Triton of the same release as the notebook's server, with this repository inside.",
        f"FROM {triton_image()}",
        "",
    ]
    if any(m.backend == "python" for m in models):
        lines += _python_environment(runtime, runtime.numpy_requirement(models))
    lines += [f"COPY --chown=1000:1000 . {MODELS_PATH}", 'CMD ["tritonserver", "--model-repository=/models"]', ""]
    return "\n".join(lines)


def _python_environment(runtime: Runtime, numpy: str) -> list[str]:
    """The notebook's Python version in a venv the python backend runs, with the stub built for that version.

    ``function.pt`` is bytecode of the notebook's Python, so the backend must run that version. The stock image has
    its own Python and no torch; nvidia-pytriton's wheel carries python-backend stubs for CPython 3.8 to 3.13.
    """
    py = runtime.python
    site = f"/opt/model-env/lib/python{py}/site-packages"
    return [
        f"# The python backend must run Python {py}, the notebook's: function.pt is bytecode of that version.",
        "# nvidia-pytriton without its dependencies: it only brings the stub (its metadata would pin numpy<2).",
        "RUN apt-get update && apt-get install -y --no-install-recommends software-properties-common \\",
        "    && add-apt-repository -y ppa:deadsnakes/ppa && apt-get update \\",
        f"    && apt-get install -y --no-install-recommends python{py} python{py}-venv libpython{py} \\",
        "    && rm -rf /var/lib/apt/lists/*",
        f"RUN python{py} -m venv /opt/model-env \\",
        f'    && /opt/model-env/bin/pip install --no-cache-dir "torch=={runtime.torch}" "{numpy}" '
        f'"cloudpickle=={runtime.cloudpickle}" \\',
        '    && /opt/model-env/bin/pip install --no-cache-dir --no-deps "nvidia-pytriton==0.7.0" \\',
        f"    && cp {site}/pytriton/tritonserver/python_backend_stubs/{py}/triton_python_backend_stub \\",
        "          /opt/tritonserver/backends/python/",
        "# the stub links libraries of the wheel (nvidia_pytriton.libs) and this Python's libpython; it finds the",
        "# venv's packages through the python on PATH",
        f"ENV LD_LIBRARY_PATH={site}/nvidia_pytriton.libs:$LD_LIBRARY_PATH",
        "ENV PATH=/opt/model-env/bin:$PATH",
        "RUN ! ldd /opt/tritonserver/backends/python/triton_python_backend_stub | grep 'not found'",
        "",
    ]


def compose_file(repository: str, models: Sequence[RepositoryModel]) -> str:
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
    return header + yaml.safe_dump({"services": {"triton": service}}, sort_keys=False)


SERVE_HERE = """\
#!/usr/bin/env bash
# Serve this repository with the tritonserver that ships in nvidia-pytriton, on this machine, without Docker.
#   PYTHON=/path/to/venv/bin/python bash serve_here.sh [tritonserver flags, e.g. --http-port=8000]
# That Python needs nvidia-pytriton==0.7.0 (pip install --no-deps, or python -m tritonnb install), and for
# python-format models torch, numpy and cloudpickle (numpy<2 for a model with bytes tensors: Triton 2.51's stub
# reads and writes them through numpy 1's C API), and must be the Python version the models were exported from
# (export.json in each version says which).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
eval "$("$python" - <<'EOF'
import pathlib, shlex, sys, sysconfig
import pytriton
dist = pathlib.Path(pytriton.__file__).parent / "tritonserver"
for key, value in {
    "dist": dist,
    "libs": dist.parent.parent / "nvidia_pytriton.libs",  # tritonserver's own libraries
    "libpython": sysconfig.get_config_var("LIBDIR"),  # the stub links libpython: this Python's, not the system's
    "version": f"{sys.version_info[0]}.{sys.version_info[1]}",
    "bindir": pathlib.Path(sys.executable).parent,  # the stub's Python finds its packages through PATH
}.items():
    print(f"{key}={shlex.quote(str(value))}")
EOF
)"
if grep -lqs '^backend: "pytorch"' "$here"/*/config.pbtxt; then
    echo "serve_here.sh: nvidia-pytriton's tritonserver has only the python backend; serve the torchscript models" \
         "here with the Triton image (docker compose up)" >&2
    exit 2
fi
# the python backend with the stub built for this Python version (the wheel ships one per version)
backends="${TMPDIR:-/tmp}/tritonnb-backends-$(id -u)-$version"
if [ ! -x "$backends/python/triton_python_backend_stub" ]; then
    staging=$(mktemp -d "${TMPDIR:-/tmp}/tritonnb-backends.XXXXXX")
    cp -r "$dist/backends/." "$staging/"
    cp "$dist/python_backend_stubs/$version/triton_python_backend_stub" "$staging/python/"
    mv -T "$staging" "$backends" 2>/dev/null || rm -rf "$staging"
fi
export LD_LIBRARY_PATH="$libpython:$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$bindir:$PATH"
exec "$dist/bin/tritonserver" --model-repository="$here" --backend-directory="$backends" "$@"
"""


def readme(repository: str, models: Sequence[RepositoryModel]) -> str:
    """How to start the repository, check it with curl and load-test it with perf_analyzer."""
    rows = "\n".join(f"| `{m.name}` | {m.backend} | {'GPU' if m.gpu else 'CPU'} |" for m in models)
    first = models[0].name if models else "MODEL"
    return f"""# Triton model repository `{repository}`

Written by `tritonnb export`; each export adds a version under `<model>/` and rewrites the files around them
(a file you changed is kept, and the new one is written beside it as `<file>.new`).

| model | backend | device |
|---|---|---|
{rows}

## Start it

- **Docker, one machine:** `docker compose up -d --build` (image `{triton_image()}`, ports 8000 HTTP,
  8001 gRPC, 8002 metrics; the repository is mounted read-only at `/models`).
- **Any Triton:** `tritonserver --model-repository=$PWD` (python-format models need the packages the `Dockerfile`
  installs).
- **Here, without Docker:** `PYTHON=/path/to/venv/bin/python bash serve_here.sh`, with the tritonserver that
  ships in nvidia-pytriton.
- **Kubernetes:** `kubernetes-inferenceservice.yaml` (KServe) or `kubernetes-deployment.yaml` (a plain Deployment
  + Service); build and push the image first (`docker build -t {image_name(repository)} .`), and see the comments
  in those files. (They are files, not a folder: tritonserver takes every folder here for a model.)

## Check it

```bash
curl -fsS localhost:8000/v2/health/ready && echo ready
curl -s localhost:8000/v2/models/{first}
curl -s localhost:8000/v2/models/{first}/config
```

## Load-test it

```bash
perf_analyzer -m {first} -u localhost:8000 --concurrency-range 1:8:2 --percentile=95
```

(`perf_analyzer` ships in the `nvcr.io/nvidia/tritonserver:{triton_release()}-py3-sdk` image.)

Each model serves its newest version (`version_policy: latest 1`); change the policy in `config.pbtxt` to serve
older versions too.
"""
