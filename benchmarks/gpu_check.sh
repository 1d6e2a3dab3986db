#!/usr/bin/env bash
# GPU check: on a machine with a CUDA GPU, run model=smollm2 on cuda in bf16 end to end (train, merge, search,
# lm-eval), then print one search trial's time against one forward pass, and Trainer's training tokens/s against a
# bare PyTorch loop on the same model and batch (benchmarks/gpu_check.py). About 10 minutes on one H100/H200.
#   bash benchmarks/gpu_check.sh
# On such a machine `pip install torch==2.13.0` (the Makefile's pin) installs a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
make smollm2 >/dev/null
.venv/bin/python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device visible')"
out=${GPU_CHECK_OUT:-runs/gpu-check}
start=$(date +%s)
.venv/bin/dem-bench model=smollm2 model.device=cuda model.dtype=bfloat16 \
    budget=smollm2_cpu budget.train_tokens=262144 budget.seq_len=512 budget.batch_size=16 \
    data.n_val=100 eval.limit=100 dem.n_trials=20 tracking=disabled \
    output_dir="$out/run" cache_dir="$out/cache"
echo "end to end: $(( $(date +%s) - start )) s; report: $out/run/report.md"
.venv/bin/python - "$out/run/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print("runtime:", s["runtime"], "| cost_ratio:", round(s["cost_ratio"], 3))
for name, m in s["methods"].items():
    print(f"{name:14s} val_ppl {m['val_ppl']:10.3f}  train tokens {m['train_tokens']:9d}  device-s {m['train_device_s']:8.1f}")
PY
.venv/bin/python benchmarks/gpu_check.py
