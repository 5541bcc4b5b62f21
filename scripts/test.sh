#!/usr/bin/env bash
# The test suite: set up, lint, and run every test against a real tritonserver, IPython shell and kernel.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# the browser tests drive Debian's chromium (Playwright's own browser download is not used)
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "test.sh: installing Debian's chromium for the browser tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "test.sh: the browser tests need Debian's chromium: sudo apt-get install chromium" >&2
        exit 1
    fi
fi
source scripts/install_perf_analyzer.sh
# the Azure Blob Storage emulator of the cloud repository tests: Azurite from npm, into .azurite/ (ignored by git)
AZURITE_VERSION=3.35.0
if [ ! -x .azurite/node_modules/.bin/azurite-blob ]; then
    if ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "test.sh: installing Debian's nodejs and npm for the Azurite emulator"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
        else
            echo "test.sh: the cloud repository tests need node and npm: sudo apt-get install nodejs npm" >&2
            exit 1
        fi
    fi
    echo "test.sh: installing Azurite $AZURITE_VERSION into .azurite/"
    npm install --prefix .azurite --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >/dev/null
fi
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check tritonnb tests benchmarks devtools
.venv/bin/ruff format --check tritonnb tests benchmarks devtools
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ "$status" = 5 ]; then
    echo "test.sh: pytest collected no tests; that is a failure here" >&2
    exit 1
fi
exit "$status"
