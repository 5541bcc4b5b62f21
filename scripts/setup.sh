# Sourced by quickstart.sh and test.sh: make .venv with everything tritonnb needs. Safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" 2>/dev/null; then
        # a torch is installed already (a GPU workstation's CUDA build, say): use it, do not replace it
        echo "setup: using the installed torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: no torch found; installing the CPU build torch==2.13.0"
    "$VENV/bin/pip" install -q torch==2.13.0
fi
"$VENV/bin/pip" install -q -e ".[test,tutorials]"
# moto (the S3 emulator) on its own, its boto3 held to the botocore s3fs took (see the s3-emulator extra)
botocore=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('botocore'))")
"$VENV/bin/pip" install -q -e ".[s3-emulator]" "botocore==$botocore"
# the Triton engine: nvidia-pytriton without its numpy<2 pin, and a numpy 1 for its python-backend stub alone
"$VENV/bin/python" -m tritonnb install >/dev/null
# tests, benchmarks and scripts import the development-only helpers in devtools/ (not part of the wheel)
"$VENV/bin/python" -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'tritonnb_dev.pth').write_text(str(pathlib.Path.cwd()) + '\n')"
