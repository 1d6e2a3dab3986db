"""The sweep aggregate: tiny fake run folders with known numbers → means, t intervals, W/T/L, files, errors."""

from __future__ import annotations

import json
import math
import re
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.report.aggregate import (
    FILES,
    AggregateError,
    aggregate,
    find_runs,
    latex,
    load_runs,
    main_aggregate,
    sweep_keys,
)
from harness.report.comparison import score_columns
from harness.stats.intervals import t_interval

HEADLINE = {"arith_2": "acc", "qa": "exact_match"}  # an underscore in a task name: LaTeX must escape it
MODELS = ("base", "only_a", "only_b", "data_mixing", "dem", "dem_ties")
# (arith_2, qa) per seed and model; dyadic numbers, so every mean below is exact in floating point.
SCORES = {
    0: {"base": (0.25, 0.125), "only_a": (0.5, 0.125), "only_b": (0.25, 0.5), "data_mixing": (0.5, 0.5),
        "dem": (0.625, 0.5), "dem_ties": (0.5, 0.5)},
    1: {"base": (0.25, 0.25), "only_a": (0.5, 0.25), "only_b": (0.375, 0.5), "data_mixing": (0.5, 0.375),
        "dem": (0.5, 0.375), "dem_ties": (0.5, 0.25)},
    2: {"base": (0.375, 0.25), "only_a": (0.625, 0.25), "only_b": (0.25, 0.625), "data_mixing": (0.625, 0.5),
        "dem": (0.5, 0.5), "dem_ties": (0.75, 0.5)},
}
FLOPS = {"base": 0.0, "only_a": 1e12, "only_b": 1e12, "data_mixing": 3e12, "dem": 2e12, "dem_ties": 2e12}


def fake_summary(seed: int, folder: Path, *, train_tokens: int = 1000, tracking: str = "disabled",
                 scores: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """A summary.json in the pipeline's schema with the numbers above (ppl 2^(seed+1) × model index)."""
    scores = scores or SCORES[seed % 3]
    methods = {}
    for i, name in enumerate(MODELS):
        s = {f"{t}/{m}": v for (t, m), v in zip(HEADLINE.items(), scores[name], strict=True)}
        s |= {f"{k}_stderr": 0.01 for k in list(s)} | {"arith_2/acc_norm": 0.0}  # not a headline metric
        methods[name] = {"train_tokens": train_tokens * (i + 1), "train_flops": FLOPS[name] * train_tokens / 1000,
                         "train_wall_s": 1.0, "train_device_s": 1.0, "search_forward_tokens": 0,
                         "val_ppl": 2.0 ** (seed + 1) * (i + 1), "val_ppl_by_dist": {"a": 2.0, "b": 3.0},
                         "scores": s, "selected": {}}
    config = {"model": {"preset": "micro"}, "budget": {"train_tokens": train_tokens, "seq_len": 64},
              "mixing": {"grid_step": 0.5}, "dem": {"merge": "dem", "compare": [{"merge": "ties"}]},
              "eval": {"tasks": list(HEADLINE)}, "tracking": {"mode": tracking, "project": "dem-bench"},
              "seed": seed, "output_dir": str(folder), "cache_dir": ".cache/dem-bench", "hub_mirror": None}
    return {"methods": methods, "cost_ratio": FLOPS["dem"] / FLOPS["data_mixing"],
            "chance": {"arith_2": 0.25}, "task_versions": {"arith_2": 1, "qa": 1}, "headline_metrics": HEADLINE,
            "seed": seed, "config": config, "provenance": {"git_commit": "abc123"}, "wall_s": 1.0,
            "output_dir": str(folder)}


def write_run(folder: Path, summary: dict[str, Any] | str) -> Path:
    """A Hydra job folder: .hydra/ and summary.json (a string is written as is, e.g. torn JSON)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- seed={summary['seed'] if isinstance(summary, dict) else 0}\n")
    (folder / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """runs/multirun/<date>/ with jobs 0, 1, 2 = seeds 0, 1, 2 of one setup."""
    root = tmp_path / "multirun" / "2026-01-01_00-00-00"
    for seed in (0, 1, 2):
        write_run(root / str(seed), fake_summary(seed, root / str(seed)))
    return root


def by_model(table: pd.DataFrame) -> dict[str, pd.Series]:
    return {r["model"]: r for _, r in table.iterrows()}


# ------------------------------------------------------------------------------------------------- numbers
def test_aggregate_is_the_mean_of_the_runs(sweep):
    summaries = load_runs(find_runs([sweep]))
    table = aggregate(summaries)
    assert list(table["model"]) == list(MODELS)
    rows = by_model(table)
    for model in MODELS:
        r = rows[model]
        assert r["n_seeds"] == 3 and r["seeds"] == "0 1 2"
        for col in score_columns(summaries[0]):
            values = [s["methods"][model]["scores"][col] for s in summaries]
            ci = t_interval(values)
            assert r[col] == statistics.mean(values)  # exact: dyadic inputs
            assert (r[f"{col}_low"], r[f"{col}_high"]) == pytest.approx((ci["low"], ci["high"]), rel=1e-12)
        per_seed = [statistics.mean(SCORES[s][model]) for s in (0, 1, 2)]  # mean over tasks, then over seeds
        assert r["mean_score"] == statistics.mean(per_seed)
        ppl = [s["methods"][model]["val_ppl"] for s in summaries]
        assert r["val_ppl"] == pytest.approx(math.exp(statistics.mean(map(math.log, ppl))), rel=1e-12)  # geometric
        assert r["train_flops"] == FLOPS[model]
        assert r["cost_vs_mixing"] == pytest.approx(FLOPS[model] / FLOPS["data_mixing"], rel=1e-12)
    assert rows["dem"]["cost_vs_mixing"] == pytest.approx(statistics.mean(s["cost_ratio"] for s in summaries))


def test_dem_vs_mixing_win_tie_loss(sweep):
    rows = by_model(aggregate(load_runs(find_runs([sweep]))))
    # mean_score per seed, dem vs mixing: 0.5625 > 0.5, 0.4375 = 0.4375, 0.5 < 0.5625
    assert tuple(rows["dem"][[f"mean_score_{k}" for k in ("wins", "ties", "losses")]]) == (1, 1, 1)
    # arith_2: 0.625 > 0.5, 0.5 = 0.5, 0.5 < 0.625; qa: ties, ties, ties
    assert tuple(rows["dem"][[f"arith_2/acc_{k}" for k in ("wins", "ties", "losses")]]) == (1, 1, 1)
    assert tuple(rows["dem"][[f"qa/exact_match_{k}" for k in ("wins", "ties", "losses")]]) == (0, 3, 0)
    # dem_ties: 0.5 = 0.5, 0.375 < 0.4375, 0.625 > 0.5625
    assert tuple(rows["dem_ties"][[f"mean_score_{k}" for k in ("wins", "ties", "losses")]]) == (1, 1, 1)
    assert all(pd.isna(rows[m]["mean_score_wins"]) for m in ("base", "only_a", "data_mixing"))


def test_a_lower_is_better_metric_is_left_out_of_the_mean_and_wins_when_lower(tmp_path):
    """lm-eval says `higher_is_better` per metric (a perplexity task is lower-is-better): the mean score leaves such a
    task out, and a DEM 'win' on it is a lower value."""
    root = tmp_path / "multirun" / "x"
    for seed in (0, 1, 2):
        summary = fake_summary(seed, root / str(seed))
        summary["higher_is_better"] = {"arith_2": False, "qa": True}
        write_run(root / str(seed), summary)
    rows = by_model(aggregate(load_runs(find_runs([root]))))
    # arith_2, dem_ties vs mixing: 0.5 = 0.5, 0.5 = 0.5, 0.75 > 0.625 — higher, so a loss when lower is better
    assert tuple(rows["dem_ties"][[f"arith_2/acc_{k}" for k in ("wins", "ties", "losses")]]) == (0, 2, 1)
    # mean_score is qa alone now: dem 0.5, 0.375, 0.5 against mixing's 0.5, 0.375, 0.5
    assert tuple(rows["dem"][[f"mean_score_{k}" for k in ("wins", "ties", "losses")]]) == (0, 3, 0)
    assert rows["dem"]["mean_score"] == pytest.approx((0.5 + 0.375 + 0.5) / 3)
    from harness.report.comparison import rows as report_rows

    one = {r["model"]: r for r in report_rows(summary)}
    assert one["dem"]["mean_score"] == summary["methods"]["dem"]["scores"]["qa/exact_match"]


def test_one_seed_has_no_interval(tmp_path):
    run = write_run(tmp_path / "run", fake_summary(0, tmp_path / "run"))
    table = aggregate(load_runs(find_runs([run])))
    assert (table["n_seeds"] == 1).all() and table["mean_score_low"].isna().all()


# ------------------------------------------------------------------------------------------------- files
def test_every_file_is_written(sweep):
    out = main_aggregate([sweep], wandb_mode="disabled")
    assert out == sweep and all((sweep / f).is_file() for f in FILES)
    assert (sweep / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = pd.read_csv(sweep / "aggregate.csv")
    assert {"arith_2/acc", "arith_2/acc_low", "arith_2/acc_high", "n_seeds", "mean_score_wins"} <= set(csv.columns)
    assert csv.loc[csv["model"] == "dem", "mean_score_wins"].item() == 1
    md = (sweep / "aggregate.md").read_text()
    dem_ci = t_interval([0.5625, 0.4375, 0.5])
    assert f"{dem_ci['mean']:.3f} ± {dem_ci['high'] - dem_ci['mean']:.3f}" in md
    assert "Student t" in md and "arith_2 0.250" in md and "runs differ only in their seed" in md
    assert not (sweep / "wandb").exists()


def test_a_sweep_over_a_key_groups_by_its_values(tmp_path):
    root = tmp_path / "sweep"
    for job, (tokens, seed) in enumerate([(4000, 0), (4000, 1), (1000, 0), (1000, 1)]):
        write_run(root / str(job), fake_summary(seed, root / str(job), train_tokens=tokens))
    summaries = load_runs(find_runs([root]))
    assert sweep_keys(summaries) == ["budget.train_tokens"]
    table = aggregate(summaries)
    assert len(table) == 2 * len(MODELS) and (table["n_seeds"] == 2).all()
    assert list(table["budget.train_tokens"]) == [1000] * len(MODELS) + [4000] * len(MODELS)  # numeric order
    big = table[(table["budget.train_tokens"] == 4000) & (table["model"] == "dem")]
    assert big["train_flops"].item() == 4 * FLOPS["dem"]
    main_aggregate([root], tmp_path / "out", wandb_mode="disabled")
    assert all((tmp_path / "out" / f).is_file() for f in FILES)
    assert "`budget.train_tokens`" in (tmp_path / "out" / "aggregate.md").read_text()


def test_a_sweep_over_two_keys_plots_categories(tmp_path):
    root = tmp_path / "sweep"
    for job, (step, merge) in enumerate([(0.5, "dem"), (0.25, "dem"), (0.5, "ties")]):
        s = fake_summary(0, root / str(job))
        s["config"]["mixing"]["grid_step"], s["config"]["dem"]["merge"] = step, merge
        write_run(root / str(job), s)
    main_aggregate([root], wandb_mode="disabled")
    table = pd.read_csv(root / "aggregate.csv")
    assert list(table.columns[:3]) == ["mixing.grid_step", "dem.merge", "model"]
    assert (table["n_seeds"] == 1).all() and len(table) == 3 * len(MODELS)
    assert " ± " not in (root / "aggregate.md").read_text().split("| model")[1]  # one seed: no interval
    assert (root / "cost_quality.png").stat().st_size > 0


def test_sweep_keys_skip_seeds_paths_and_logging():
    a = {"config": {"seed": 0, "output_dir": "x", "cache_dir": "c", "tracking": {"mode": "offline"},
                    "hydra": {"job": {"num": 0}}, "data": {"seed": 1, "tasks": ["a"]},
                    "mixing": {"grid_step": 0.5}}}
    b = {"config": {"seed": 1, "output_dir": "y", "cache_dir": "d", "tracking": {"mode": "disabled"},
                    "hydra": {"job": {"num": 1}}, "data": {"seed": 2, "tasks": ["a", "b"]},
                    "mixing": {"grid_step": 0.25}}}
    assert sweep_keys([a, b]) == ["data.tasks", "mixing.grid_step"]


def test_find_runs_orders_jobs_and_reads_two_levels(tmp_path):
    for date in ("d1", "d2"):
        for job in (0, 2, 10):
            write_run(tmp_path / date / str(job), fake_summary(job, tmp_path / date / str(job)))
    (tmp_path / "d1" / "0" / "models" / "dem").mkdir(parents=True)  # a run's own folders are not searched
    found = find_runs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["d1/0", "d1/2", "d1/10", "d2/0", "d2/2", "d2/10"]


# ------------------------------------------------------------------------------------------------- bad input
def _missing_dem(root: Path) -> None:
    s = fake_summary(1, root / "1")
    del s["methods"]["dem"]
    write_run(root / "1", s)


def _other_tasks(root: Path) -> None:
    s = fake_summary(1, root / "1")
    s["headline_metrics"] = {"arith_2": "acc"}
    write_run(root / "1", s)


def _other_models(root: Path) -> None:
    s = fake_summary(1, root / "1")
    del s["methods"]["dem_ties"]
    write_run(root / "1", s)


BAD = {
    "empty folder": (lambda root: None, "no summary.json in it"),
    "torn summary": (lambda root: write_run(root / "1", '{"methods": {"dem": '), "1/summary.json: unreadable"),
    "missing field": (_missing_dem, "1/summary.json: missing 'methods.dem'"),
    "unfinished job": (lambda root: (root / "1" / ".hydra").mkdir(parents=True), "the job failed or is still running"),
    "other tasks": (_other_tasks, "different tasks (headline metrics)"),
    "other models": (_other_models, "different models"),
    "same seed twice": (lambda root: write_run(root / "1", fake_summary(0, root / "1")), "with the same seed 0"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    make, expected = BAD[case]
    root = tmp_path / "sweep"
    root.mkdir()
    if case != "empty folder":
        write_run(root / "0", fake_summary(0, root / "0"))
    make(root)
    with pytest.raises(AggregateError) as err:
        main_aggregate([root], wandb_mode="offline")
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not any((root / f).exists() for f in FILES) and not (root / "wandb").exists()


def test_bad_wandb_mode_and_run_folder_as_output(sweep):
    with pytest.raises(AggregateError, match="unknown W&B mode 'offlin'"):
        main_aggregate([sweep], wandb_mode="offlin")
    with pytest.raises(AggregateError, match="is a run folder"):
        main_aggregate([sweep], sweep / "0", wandb_mode="disabled")
    assert not any((sweep / f).exists() for f in FILES)


# ------------------------------------------------------------------------------------------------- LaTeX
def check_tabular(tex: str) -> None:
    """Structural check: balanced environments, booktabs rules in order, one column count, escaped specials."""
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    body = [ln for ln in tex.splitlines() if ln.endswith(r"\\")]
    columns = len(re.search(r"\\begin\{tabular\}\{(\w+)\}", tex).group(1))
    assert body and all(len(re.findall(r"(?<!\\)&", ln)) == columns - 1 for ln in body)
    assert not re.search(r"(?<!\\)[_%#]", tex.split("\n", 1)[1].replace(r"\%", ""))  # after the comment line
    assert r"dem\_ties" in tex and r"arith\_2/acc" in tex and r"$\pm$" in tex and "±" not in tex


def test_latex_table_is_well_formed_and_compiles(sweep, tmp_path):
    summaries = load_runs(find_runs([sweep]))
    tex = latex(aggregate(summaries), sweep_keys(summaries), score_columns(summaries[0]))
    check_tabular(tex)
    if not shutil.which("pdflatex"):
        pytest.skip("pdflatex not installed (apt: texlive-latex-base texlive-latex-recommended); structure checked")
    (tmp_path / "table.tex").write_text(tex)
    (tmp_path / "doc.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
                                      "\\begin{document}\n\\resizebox{\\textwidth}{!}{\\input{table.tex}}\n"
                                      "\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0


# ------------------------------------------------------------------------------------------------- W&B
def test_tracking_follows_the_runs_and_logs_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = tmp_path / "sweep"
    for seed in (0, 1):
        write_run(root / str(seed), fake_summary(seed, root / str(seed), tracking="offline"))
    main_aggregate([root])  # wandb_mode None: the runs' own tracking.mode (offline)
    assert list((root / "wandb").glob("offline-run-*/files/media/table/aggregate_*.table.json"))
