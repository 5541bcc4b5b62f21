#!/usr/bin/env bash
# The GPU lane: on a machine where torch sees CUDA, the tests marked gpu (CUDA functions, --device cuda:K, out of
# memory, GPU memory after re-binds, a CUDA stream, GPU figures) and every tutorial notebook run end to end on CUDA.
# It uses the Python it is given as it is (a GPU workstation's CUDA torch): PYTHON=/path/to/python, default python3,
# with tritonnb and its test tools installed (scripts/setup.sh does that, keeping an installed torch).
# An offline GPU box: ../shared/gpu/README.md, with
#   TNB_GPU_EXTRA="pytest pytest-timeout psutil nbclient nbformat jupyter_client ipykernel ..." for the test tools.
# Writes the pytest log and the JUnit report to ${GPU_LOG_DIR:-build/gpu}; prints pytest's summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
logs=${GPU_LOG_DIR:-build/gpu}
mkdir -p "$logs"
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "test_gpu.sh: torch sees no CUDA device with $python; the GPU lane needs one" >&2
    exit 2
fi
"$python" - <<'PY' | tee "$logs/environment.txt"
import sys, numpy, torch, tritonnb, tritonnb.triton.engine as engine
print("python", sys.version.split()[0], "| numpy", numpy.__version__, "| torch", torch.__version__,
      "| GPUs", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
print("tritonnb", tritonnb.__file__, "| stub numpy 1 for bytes:", engine.stub_numpy_ready() or not engine.numpy_2())
PY
status=0
"$python" -m pytest -m gpu -rA -v --junitxml="$logs/junit.xml" tests/test_gpu.py "$@" 2>&1 | tee "$logs/pytest.log" \
    || status=${PIPESTATUS[0]}
if [ "$status" = 5 ]; then
    echo "test_gpu.sh: pytest collected no gpu test; that is a failure here" >&2
    exit 1
fi
exit "$status"
