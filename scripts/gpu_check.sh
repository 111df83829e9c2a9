#!/usr/bin/env bash
# The GPU check of issue 7: DPO vs ADPO (K = 1, 5) LoRA steps and a 100-step PGD attack on a LLaVA-1.5-7B-shaped
# random bf16 model (no download), printing seconds/step, peak GPU memory and the ADPO/DPO ratio.
#   bash scripts/gpu_check.sh                      # on a CUDA machine, about 3 minutes on one H100
#   bash scripts/gpu_check.sh --device cpu --tiny  # the same script on a tiny model, seconds on a CPU
# Extra arguments go to benchmarks/gpu_check.py (--batch, --reps, --pgd-steps, --out FILE).
# It uses .venv/bin/python when present, else python3 with the source tree on PYTHONPATH (a GPU image that
# already has torch, transformers, peft and accelerate needs no install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
