#!/usr/bin/env bash
# The commands behind the committed reference reports (reports/README.md). Run from the repository root after
# `make smollm2` (or `make test`). Each writes to runs/ref/<name>/ and is timed; the reports/ folders hold copies of
# their report.md, summary.json, results.csv and cost_quality.png (and, for sweeps, the aggregate files).
#   bash reports/run_references.sh [smollm2-cpu|smollm2-real|smollm2-real-benchmarks|smollm2-lora-cpu|
#                                   merge-strategies-smollm2|default-cpu|default-cpu-seeds|
#                                   baselines-cpu ...]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
cache=runs/ref/cache
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(smollm2-cpu smollm2-real default-cpu-seeds baselines-cpu)

timed() {  # name, command...
  local name=$1; shift
  local start=$(date +%s)
  "$@"
  echo "$name: $(( $(date +%s) - start )) s wall" | tee -a runs/ref/times.txt
}

mkdir -p runs/ref
for name in "${names[@]}"; do
  case $name in
    smollm2-cpu)   # issue 6: SmolLM2-135M trained and merged on a 2-core CPU
      timed $name $bin/dem-bench model=smollm2 budget=smollm2_cpu data.n_val=40 data.n_report=40 eval.limit=100 \
        dem.n_trials=12 cache_dir=$cache output_dir=runs/ref/$name ;;
    smollm2-real)  # issue 7: the real FLAN CoT / SNI / MathQA files in ../shared/data/real
      timed $name $bin/dem-bench model=smollm2 data=real budget=smollm2_cpu data.n_val=30 data.n_report=30 \
        eval.limit=100 dem.n_trials=12 cache_dir=$cache output_dir=runs/ref/$name ;;
    smollm2-real-benchmarks)  # issue 17: smollm2-real's training, scored on real MMLU, BBH and HELM-style items
      timed $name $bin/dem-bench model=smollm2 data=real budget=smollm2_cpu data.n_val=30 data.n_report=30 \
        dem.n_trials=12 eval=paper_cpu hub_mirror=../shared/data/eval-mirror cache_dir=$cache \
        output_dir=runs/ref/$name ;;
    smollm2-lora-cpu)  # issue 18: smollm2-real's comparison with full fine-tuning and with LoRA, one cache; the
      # single-distribution fine-tunes get perplexity only (eval.score_models), LoRA steps 10x larger (budget.lr)
      for method in full lora; do
        lr=1.0e-4; [ $method = lora ] && lr=1.0e-3
        mkdir -p runs/ref/$name  # GNU time writes the run's peak RSS (KiB) beside it
        timed $name-$method /usr/bin/time -f %M -o runs/ref/$name/$method.maxrss $bin/dem-bench model=smollm2 \
          data=real budget=smollm2_cpu budget.lr=$lr training.method=$method data.n_val=30 data.n_report=30 eval.limit=100 dem.n_trials=12 \
          "eval.score_models=[base,data_mixing,dem]" cache_dir=$cache output_dir=runs/ref/$name/$method
      done
      $bin/python reports/lora_vs_full.py runs/ref/$name/full runs/ref/$name/lora > runs/ref/$name/README.md ;;
    merge-strategies-smollm2)  # issue 19: every registered strategy on smollm2-real's fine-tunes against grid mixing;
      # shares smollm2-lora-cpu's full-fine-tuning runs and base/mixing scores through the cache. To fit ~1 h on 2
      # cores: 6 trials per search (a trial is ~65 s here; dem's search reads the first 6 of smollm2-real's 12-trial
      # study), and lm-eval scores for base, mixing, dem and the two data-aware rows only (every row gets
      # validation perplexity, its paired test against mixing, and its merge cost)
      timed $name /usr/bin/time -f %M -o runs/ref/$name.maxrss $bin/dem-bench model=smollm2 data=real \
        budget=smollm2_cpu data.n_val=30 data.n_report=30 eval.limit=100 dem.n_trials=6 \
        "dem.compare=[{merge: ties, params: {density: 0.5}}, {merge: dare_ties, params: {density: 0.5}}, \
          {merge: breadcrumbs, params: {density: 0.9}}, {merge: della, params: {density: 0.5}}, {merge: fisher}, \
          {merge: regmean}]" \
        "eval.score_models=[base,data_mixing,dem,dem_fisher,dem_regmean]" \
        cache_dir=$cache output_dir=runs/ref/$name ;;
    default-cpu)  # the embedded default alone (since #21 its base has 200k pre-training tokens: not seed 0 of
      # default-cpu-seeds)
      timed $name $bin/dem-bench cache_dir=$cache output_dir=runs/ref/$name ;;
    default-cpu-seeds)  # issue 9: the embedded default over 3 seeds, aggregated (made when the tiny base was
      # pre-trained on 400k tokens: the default until #21, pinned here so the command is the one they ran)
      timed $name $bin/dem-bench -m seed=0,1,2 model.pretrain_tokens=400000 cache_dir=$cache \
        hydra.sweep.dir=runs/ref/$name
      $bin/dem-bench-report runs/ref/$name --wandb disabled ;;
    baselines-cpu)  # issue 10: grid, RegMix, uniform, proportional, temperature vs DEM under both budget modes
      # (on default-cpu-seeds' seed 0, so with its 400k-token base)
      timed $name-per_run $bin/dem-bench mixing=baselines budget.mode=per_run model.pretrain_tokens=400000 \
        cache_dir=$cache output_dir=runs/ref/$name/per_run
      timed $name-matched_total $bin/dem-bench mixing=baselines budget.mode=matched_total \
        model.pretrain_tokens=400000 cache_dir=$cache output_dir=runs/ref/$name/matched_total ;;
    *) echo "unknown reference '$name'" >&2; exit 2 ;;
  esac
done
