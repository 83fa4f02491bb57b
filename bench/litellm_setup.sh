#!/usr/bin/env bash
# Create the LiteLLM proxy's own virtualenv for bench/gateway_overhead.py (kept apart from ragline's).
#
#   bench/litellm_setup.sh [VENV]        # default bench/.litellm-venv (gitignored)
#
# Installs `litellm[proxy]` from PyPI (override with LITELLM_SPEC, e.g. 'litellm[proxy]==1.108.7'),
# plus httptools so LiteLLM's uvicorn parses HTTP with the same parser as `ragline serve`
# (the comparison is then about the gateways' own code, not h11 against httptools).
# Does nothing when the venv already has a working `litellm`.
set -euo pipefail

VENV="${1:-$(cd "$(dirname "$0")" && pwd)/.litellm-venv}"
PYTHON="${PYTHON:-python3}"
SPEC="${LITELLM_SPEC:-litellm[proxy]}"

CHECK='import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("litellm", "fastapi", "httptools")))'
if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    echo "litellm venv ready: $VENV"
    exit 0
fi

echo "creating $VENV with $SPEC ..."
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$SPEC" httptools
"$VENV/bin/python" -m pip show litellm | sed -n 's/^Version: /litellm /p'
