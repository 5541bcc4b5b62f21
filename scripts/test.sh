#!/usr/bin/env bash
# The test suite: set up, lint, and run every test against a real tritonserver, IPython shell and kernel.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
.venv/bin/ruff check tritonnb tests benchmarks
.venv/bin/ruff format --check tritonnb tests benchmarks
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$status"
