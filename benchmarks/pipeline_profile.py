"""Where one comparison's wall time goes, stage by stage: the table to steer speed work by.

    .venv/bin/python benchmarks/pipeline_profile.py                    # the embedded default and a SmolLM2 run
    .venv/bin/python benchmarks/pipeline_profile.py --runs default     # the embedded default only
    .venv/bin/python benchmarks/pipeline_profile.py --runs micro       # the tests' micro comparison (a minute)
    .venv/bin/python benchmarks/pipeline_profile.py --runs default --keep /tmp/prof   # keep outputs and caches

Each run is the CLI itself (`python -m harness`, as `make run` starts it) on a fresh cache (cold), then again on
that cache with a new output folder (warm). Stage times come from the run's own `timings.json`
(harness/runs/stopwatch.py: each stage's self time, so they add up to the whole): data, contamination check, base model,
tokenisation, plan, each training run, selection per arm (DEM's vectors and search separately), perplexity and
lm-eval per model (task setup and the HELM-style robustness pass separately), statistics, W&B.
The command's own wall time is measured around it: what no stage covers (interpreter start, imports, writing the
report after timings.json) is its own row. Last, the first contact: the time
of `dem-bench --help` and of a config error (exit 2), median of 3, and of a config error that needs lm-eval's index
of stock tasks, in the process that builds the stored index and in those that read it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUNS = {
    "default": [],  # `make run`: the embedded default, exactly
    # the suite's micro comparison (tests/conftest.py MICRO): the profile in a minute
    "micro": ["model=micro", "data=micro", "budget=micro", "tracking=disabled", "dem.n_trials=3",
              "eval.helm.robustness=false"],
    # the suite's SmolLM2 run (tests/test_models.py): a real 135M model, a few hundred tokens per fine-tune
    "smollm2": ["model=smollm2", "budget=micro", "budget.train_tokens=512", "budget.batch_size=4", "data=micro",
                "data.n_val=4", "mixing.grid_step=1", "dem.n_trials=2", "eval.limit=3", "tracking=disabled",
                "eval.tasks=[mathqa_mc, bbh_object_counting]", "eval.helm.robustness=false"],
}


def cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t, proc


def group(stage: str) -> str:
    """Rows of the table: lm-eval's per-task stages summed per model, robustness and task setup over all."""
    m = re.match(r"lm-eval (\S+) ", stage)
    return f"lm-eval {m.group(1)}" if m and stage != "lm-eval task setup" else stage


def table(timings: dict, wall: float) -> str:
    sums: dict[str, float] = defaultdict(float)
    for s in timings["stages"]:
        sums[group(s["stage"])] += s["seconds"]
    sums["outside the pipeline (start, imports, report files)"] = max(0.0, wall - timings["total_s"])
    width = max(len(k) for k in sums)
    lines = [f"{'stage':<{width}}  {'seconds':>8}  {'share':>6}", "-" * (width + 18)]
    for name, sec in sorted(sums.items(), key=lambda kv: -kv[1]):
        lines.append(f"{name:<{width}}  {sec:8.1f}  {sec / wall:6.1%}")
    lines.append(f"{'whole command':<{width}}  {wall:8.1f}  {1:6.1%}")
    return "\n".join(lines)


def yardstick(timings: dict, wall: float) -> str:
    """The whole command in units of its own training runs. A shared 2-core VM runs the same work 10-20% slower
    from one hour to the next; the training runs are fixed work (same config, same steps), so a change elsewhere
    shows in this ratio even when the machine's speed has moved (not for changes to training itself)."""
    runs = [s["seconds"] for s in timings["stages"] if s["stage"].startswith("train ")]
    if not runs:
        return "no training runs (all cached)"
    return (f"{len(runs)} training runs {sum(runs):.1f} s ({min(runs):.1f}-{max(runs):.1f} each); "
            f"whole / training runs = {wall / sum(runs):.3f}")


def first_contact() -> str:
    helps, errors = [], []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, cwd=REPO, check=True)
        helps.append(time.perf_counter() - t)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "harness", "budget.lr=-1", "output_dir=/nonexistent/o",
                               "cache_dir=/nonexistent/c"], capture_output=True, text=True, cwd=REPO)
        errors.append(time.perf_counter() - t)
        assert proc.returncode == 2, proc.stderr[-500:]
    # a config error found only with lm-eval's index of stock tasks (a few-shot key for no listed task): the first
    # process builds the index and stores it (harness/evaluation/task_index.py), later ones read it
    store = tempfile.mkdtemp(prefix="dem-index-")
    needs_index = ["eval.tasks=[mmlu]", "eval.num_fewshot={no_such_task: 1}", "output_dir=/nonexistent/o",
                   "cache_dir=/nonexistent/c"]
    with_index = []
    for _ in range(4):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "harness", *needs_index], capture_output=True, text=True,
                              cwd=REPO, env={**os.environ, "XDG_CACHE_HOME": store})
        with_index.append(time.perf_counter() - t)
        assert proc.returncode == 2 and "no_such_task" in proc.stderr, proc.stderr[-500:]
    return (f"first contact: --help {statistics.median(helps):.2f} s, a config error (exit 2) "
            f"{statistics.median(errors):.2f} s (median of 3); a config error that needs lm-eval's task index: "
            f"{with_index[0]:.2f} s building and storing the index, {statistics.median(with_index[1:]):.2f} s "
            f"reading it (median of 3), {with_index[0] / statistics.median(with_index[1:]):.1f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=["default", "smollm2"], choices=list(RUNS),
                        help="comparisons to profile; none (`--runs` alone): only the first-contact timings")
    parser.add_argument("--keep", type=Path, help="write outputs and caches here (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="dem-profile-"))
    for name in args.runs:
        cache = root / name / "cache"
        cold, proc = cli([*RUNS[name], f"output_dir={root / name / 'cold'}", f"cache_dir={cache}"])
        if proc.returncode != 0:
            sys.exit(f"{name}: the run failed:\n{proc.stderr[-3000:]}")
        timings = json.loads((root / name / "cold" / "timings.json").read_text())
        warm, proc = cli([*RUNS[name], f"output_dir={root / name / 'warm'}", f"cache_dir={cache}"])
        if proc.returncode != 0:
            sys.exit(f"{name} (warm): the run failed:\n{proc.stderr[-3000:]}")
        print(f"\n## {name}: {' '.join(RUNS[name]) or '(the embedded default)'}; cold cache\n")
        print(table(timings, cold))
        print(f"\n{name}: cold {cold:.1f} s, warm rerun {warm:.1f} s; {yardstick(timings, cold)}")
    print(first_contact())


if __name__ == "__main__":
    main()
