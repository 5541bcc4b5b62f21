#!/usr/bin/env bash
# The main job: set up, run notebooks/01_quickstart.ipynb in a real kernel and show what it printed.
# With a display (or QUICKSTART_OPEN=1) it then opens the executed notebook in JupyterLab.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
.venv/bin/python -m devtools.run_notebook notebooks/01_quickstart.ipynb --output build/01_quickstart.ipynb
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] || [ "${QUICKSTART_OPEN:-0}" = 1 ]; then
    exec .venv/bin/jupyter lab build/01_quickstart.ipynb
fi
