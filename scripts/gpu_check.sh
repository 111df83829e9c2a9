#!/usr/bin/env bash
# The GPU check of issue 7: DPO vs ADPO (K = 1, 5) LoRA steps and a 100-step PGD attack on a LLaVA-1.5-7B-shaped
# random bf16 model (no download), printing seconds/step, peak GPU memory and the ADPO/DPO ratio; with more than
# one visible GPU, then the same DPO and ADPO K=1 steps under 2-GPU DDP (rows "ddp2 ...", issue 19).
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
timeout 480 "$PY" benchmarks/gpu_check.py "$@"
case " $* " in *" --device cpu "*) exit 0 ;; esac  # the CPU rehearsal has no second GPU to use
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -gt 1 ]; then
  timeout 480 "$PY" -m torch.distributed.run --nproc_per_node 2 benchmarks/gpu_check.py --ddp "$@"
else
  echo "ddp2: skipped ($GPUS GPU visible; the 2-GPU DDP row needs 2)"
fi
