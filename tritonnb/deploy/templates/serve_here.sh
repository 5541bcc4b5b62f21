#!/usr/bin/env bash
# Serve this repository with the tritonserver that ships in nvidia-pytriton, on this machine, without Docker.
#   PYTHON=/path/to/venv/bin/python bash serve_here.sh [tritonserver flags, e.g. --http-port=8000]
# That Python needs nvidia-pytriton==0.7.0 (pip install --no-deps, or python -m tritonnb install), and for
# python-format models torch, numpy, cloudpickle and the packages in requirements.txt (numpy<2 for a model with
# bytes tensors: Triton 2.51's stub reads and writes them through numpy 1's C API), and must be the Python version
# the models were exported from (export.json in each version says which).
# Vertex AI's container contract holds here as in the image: AIP_MODE=PREDICTION serves Vertex's routes
# (AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE) on AIP_HTTP_PORT (8080 unless set) instead of HTTP and gRPC;
# AIP_STORAGE_URI (a folder, or gs://...) is the repository when set and no --model-repository is given; the
# predict route runs VERTEX_AI_DEFAULT_MODEL, else the repository's first model by name.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
python=${PYTHON:-python3}
eval "$("$python" - <<'PY'
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
PY
)"
# flags of our own unless the command line gives them (a second --model-repository would add a repository)
flags=()
given=" $* "
repository=${AIP_STORAGE_URI:-$here}
if [[ "$given" == *" --model-repository"* || "$given" == *" --model-store"* ]]; then
    repository=""
else
    flags+=("--model-repository=$repository")
fi
if [ -d "$repository" ] && grep -lqs '^backend: "pytorch"' "$repository"/*/config.pbtxt; then
    echo "serve_here.sh: nvidia-pytriton's tritonserver has only the python backend; serve the torchscript models" \
        "here with the Triton image (docker compose up)" >&2
    exit 2
fi
default=${VERTEX_AI_DEFAULT_MODEL:-}
if [ -z "$default" ] && [ "${AIP_MODE:-}" = PREDICTION ] && [ -d "$repository" ]; then
    shopt -s nullglob
    configs=("$repository"/*/config.pbtxt)
    default=$(printf '%s\n' "${configs[@]}" | LC_ALL=C sort | sed -n '1{s|/config.pbtxt$||;s|.*/||;p;}')
fi
if [ -n "$default" ] && [[ "$given" != *" --vertex-ai-default-model"* ]]; then
    flags+=("--vertex-ai-default-model=$default")
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
exec "$dist/bin/tritonserver" "${flags[@]}" --backend-directory="$backends" "$@"
