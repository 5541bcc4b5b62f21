# Sourced by test.sh: put NVIDIA's perf_analyzer at .venv/bin/perf_analyzer (for `%triton_perf --engine
# perf_analyzer` and its test). The perf-analyzer wheel needs a newer glibc than Debian 12 has, so the binary comes
# from the tritonclient 2.40.0 wheel, with Debian's libb64 and the CUDA runtime library from PyPI beside it.
set -euo pipefail
if [ ! -x .venv/bin/perf_analyzer ]; then
    echo "install_perf_analyzer: fetching perf_analyzer (tritonclient 2.40.0 wheel)"
    wheel_dir=$(mktemp -d)
    .venv/bin/pip download -q --no-deps tritonclient==2.40.0 -d "$wheel_dir"
    mkdir -p .venv/libexec
    .venv/bin/python - "$wheel_dir"/tritonclient-2.40.0-*.whl <<'UNZIP'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, open(".venv/libexec/perf_analyzer", "wb") as out:
    out.write(wheel.read("tritonclient-2.40.0.data/data/bin/perf_analyzer"))
UNZIP
    rm -rf "$wheel_dir"
    .venv/bin/pip install -q nvidia-cuda-runtime-cu12
    if ! ldconfig -p | grep -q libb64.so.0d; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
        else
            echo "install_perf_analyzer: perf_analyzer needs Debian's libb64-0d: sudo apt-get install libb64-0d" >&2
            exit 1
        fi
    fi
    cudart=$(.venv/bin/python -c "import nvidia.cuda_runtime, os; print(os.path.join(nvidia.cuda_runtime.__path__[0], 'lib'))")
    cat > .venv/bin/perf_analyzer <<WRAPPER
#!/usr/bin/env bash
LD_LIBRARY_PATH="$cudart\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$PWD/.venv/libexec/perf_analyzer" "\$@"
WRAPPER
    chmod +x .venv/bin/perf_analyzer .venv/libexec/perf_analyzer
fi
