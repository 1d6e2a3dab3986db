"""Seeds as a sweep: `dem-bench -m seed=0,1` shares one cache across its jobs (one W&B group), then
`dem-bench-report` on the sweep folder writes the aggregate table, whose per-seed values are each run's own."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import MICRO

pytestmark = pytest.mark.slow


def test_a_two_seed_sweep_and_its_aggregate_report(tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in MICRO if not a.startswith("tracking")]
    proc = subprocess.run([sys.executable, "-m", "harness", "-m", "seed=0,1", *args, "tracking=offline",
                           "mixing.grid_step=1", "dem.n_trials=2", f"cache_dir={tmp_path / 'cache'}",
                           f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert [r.name for r in runs] == ["0", "1"]
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    assert [s["seed"] for s in summaries] == [0, 1] and [s["seeds"]["train"] for s in summaries] == [0, 1]
    # one W&B group per sweep (the sweep folder's name), the job type naming the swept value
    for run, seed in zip(runs, (0, 1), strict=True):
        record = next(run.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
        assert sweep.name.encode() in record and f"seed={seed}".encode() in record

    report = subprocess.run([sys.executable, "-c", "from harness.report.cli import main; main()", str(sweep)],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert report.returncode == 0, report.stderr[-3000:]
    for name in ("aggregate.md", "aggregate.csv", "aggregate.tex", "cost_quality.png"):
        assert (sweep / name).stat().st_size > 0, name
    rows = {r["model"]: r for r in csv.DictReader((sweep / "aggregate.csv").open())}
    assert set(rows) == set(summaries[0]["methods"])
    for model, row in rows.items():
        assert int(row["n_seeds"]) == 2
        for task, metric in summaries[0]["headline_metrics"].items():
            per_seed = [s["methods"][model]["scores"][f"{task}/{metric}"] for s in summaries]
            assert float(row[f"{task}/{metric}"]) == pytest.approx(sum(per_seed) / 2)
    md = (sweep / "aggregate.md").read_text()
    assert "Seeds per row (`n`): 2" in md
