#!/usr/bin/env bash
# Install the fairseq peer (fairseq 0.12 through the `fairseq-fixed` package) into its own virtual
# environment, apart from aiokd's, so that neither constrains the other's dependencies.
#
#   benchmarks/peers/install_fairseq.sh [VENV]      (default: benchmarks/.peers/fairseq-venv)
#
# Afterwards `benchmarks/speed.py --fairseq` finds it there (or pass --fairseq-venv VENV).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/.peers/fairseq-venv}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --upgrade pip setuptools wheel
"$venv/bin/pip" install torch==2.13.0 fairseq-fixed
"$venv/bin/python" - <<'PY'
import fairseq
import torch

print(f"fairseq {fairseq.__version__}, torch {torch.__version__}")
PY
echo "fairseq venv ready: $venv"
