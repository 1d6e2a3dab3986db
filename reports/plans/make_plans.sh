#!/usr/bin/env bash
# The plans in reports/plans/ (README.md there): the paper's main table — OpenLLaMA 3B, 7B and 13B, grid and DEM,
# budget=gpu eval=paper data=paper, 3 seeds — costed on one H100 and on one H200. Needs neither network, GPU nor
# data (plan_only=true creates nothing); ≈ 1 minute per file on 2 CPU cores. Run from the repository root:
#   bash reports/plans/make_plans.sh [openllama_3b_v2 openllama_7b_v2 openllama_13b]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-.venv/bin}
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(openllama_3b_v2 openllama_7b_v2 openllama_13b)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # a plan asks no hub: fail fast instead of retrying
for model in "${models[@]}"; do
  for accelerator in h100 h200; do
    command="dem-bench -m seed=0,1,2 model=$model budget=gpu eval=paper data=paper plan_only=true plan.accelerator=$accelerator"
    { echo "\$ HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $command"
      $bin/${command} cache_dir=runs/plans/cache 2>&1; } > reports/plans/${model}_${accelerator}.txt
    echo "reports/plans/${model}_${accelerator}.txt"
  done
done
