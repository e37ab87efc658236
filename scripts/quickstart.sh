#!/usr/bin/env bash
# Sets up a fresh machine and runs the main job: the embedded default end to end
# (prepare data, train baseline + polychromic, evaluate both, write the report).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/polychromic quickstart "$@"
