#!/usr/bin/env bash
# Ray from PyPI in its own virtual environment, the baseline of
# `lumen bench runtime` (benches/ray/ray_micro.py). Not needed by the tests.
#   scripts/install-ray-baseline.sh [VENV]     (default /opt/lumen/ray-venv)
set -euo pipefail
venv="${1:-${LUMEN_RAY_VENV:-/opt/lumen/ray-venv}}"
if "$venv/bin/python" -c "import ray, numpy" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q "ray==2.60.0" numpy
"$venv/bin/python" -c "import ray; print('ray', ray.__version__, 'in', '$venv')"
