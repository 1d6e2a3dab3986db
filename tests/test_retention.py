"""Retention columns (harness/stats/retention.py) on hand-written per-sample records, checked against values computed by
hand here; the chance levels read from the records; and the report/aggregate that show them."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.evaluation.results import write_samples
from harness.report.aggregate import aggregate
from harness.report.aggregate import render as render_aggregate
from harness.report.comparison import render, rows
from harness.report.contract import SummaryError, check_summary
from harness.stats.intervals import t_interval
from harness.stats.retention import own_task, retention
from harness.stats.significance import chance_from_records, statistics
from tests.test_aggregate import fake_summary

NAMES = ["mathqa", "sni"]  # mathqa has its own task (mathqa_mc); sni has none, so its basis is validation perplexity
HEADLINE = {"mathqa_mc": "acc", "mmlu": "acc", "drop_mc": "acc", "gen": "exact_match", "wiki": "word_perplexity"}
HIGHER = {"mathqa_mc": True, "mmlu": True, "drop_mc": True, "gen": True, "wiki": False}
GROUPS = {"mmlu": ["mmlu_a", "mmlu_b"]}
# Per model: 0/1 per item. mathqa_mc 5-way, mmlu 4-way (a group: 4 + 2 items pooled), drop_mc 2-way (20 items),
# gen a generation task (no chance level), wiki lower-is-better (in no retention).
ITEMS = {
    "base": {"mathqa_mc": [0, 0, 1, 0, 0], "mmlu_a": [1, 0, 0, 0], "mmlu_b": [1, 0], "drop_mc": [1] * 10 + [0] * 10,
             "gen": [1, 0]},
    "only_mathqa": {"mathqa_mc": [1, 1, 1, 1, 0], "mmlu_a": [1, 0, 0, 0], "mmlu_b": [0, 0], "drop_mc": [1] * 20,
                    "gen": [0, 0]},
    "only_sni": {"mathqa_mc": [1, 0, 0, 0, 0], "mmlu_a": [1, 1, 0, 0], "mmlu_b": [0, 0], "drop_mc": [0] * 20,
                 "gen": [1, 1]},
    "data_mixing": {"mathqa_mc": [1, 0, 0, 0, 0], "mmlu_a": [1, 1, 0, 0], "mmlu_b": [1, 0], "drop_mc": [0] * 20,
                    "gen": [1, 1]},
    "dem": {"mathqa_mc": [1, 1, 0, 1, 0], "mmlu_a": [1, 1, 0, 0], "mmlu_b": [1, 0], "drop_mc": [1] * 20,
            "gen": [1, 1]},
}
CHOICES = {"mathqa_mc": 5, "mmlu_a": 4, "mmlu_b": 4, "drop_mc": 2}
# Report-slice per-example nll and tokens: (nll per model, shared tokens); the 0-token example adds nothing.
TOKENS = {"mathqa": [2, 2, 0], "sni": [2, 2]}
NLL = {"base": {"mathqa": [6, 6, 0], "sni": [5, 5]}, "only_mathqa": {"mathqa": [1, 2, 0], "sni": [6, 6]},
       "only_sni": {"mathqa": [5, 5, 0], "sni": [2, 4]}, "data_mixing": {"mathqa": [2, 2, 0], "sni": [3, 3]},
       "dem": {"mathqa": [2, 3, 0], "sni": [4, 4]}, "dem_ties": {"mathqa": [2, 1, 0], "sni": [3, 4]}}


def _record(doc_id: int, value: float, choices: int | None, metric: str = "acc") -> dict[str, Any]:
    """One lm-eval per-sample record: one [loglikelihood, is_greedy] pair per choice, or a generation."""
    resps = [[-1.0 - c, False] for c in range(choices)] if choices else ["an answer"]
    return {"doc_id": doc_id, "filter": "none", "filtered_resps": resps, metric: float(value)}


def make_run(tmp_path: Path, not_scored: tuple[str, ...] = ("dem_ties",)) -> dict[str, Any]:
    """statistics()/retention() inputs as the pipeline hands them over; the models in `not_scored` (and
    `dem_ties`, which has no records at all) were left out of scoring: no samples, `scored: False`."""
    methods, samples, units = {}, {}, {}
    for label, nll in NLL.items():
        units[label] = {d: {"nll": nll[d], "tokens": TOKENS[d]} for d in NAMES}
        scored = label in ITEMS and label not in not_scored
        methods[label] = {"scored": scored, "scores": {}}
        if not scored:
            continue
        per_task = {t: [_record(i, v, CHOICES.get(t), "exact_match" if t == "gen" else "acc")
                        for i, v in enumerate(values)] for t, values in ITEMS[label].items()}
        per_task["wiki"] = [_record(0, 12.5, None, "word_perplexity")]
        write_samples(tmp_path / label, per_task)
        samples[label] = tmp_path / label
        methods[label]["scores"] = {f"{t}/{m}": 0.0 for t, m in HEADLINE.items()}
    return {"methods": methods, "samples": samples, "ppl_units": units, "headline": HEADLINE, "groups": GROUPS,
            "higher": HIGHER}


def _retention(run: dict[str, Any]) -> dict[str, Any]:
    return retention(run["methods"], run["samples"], run["ppl_units"], run["headline"], run["groups"], names=NAMES,
                     seed=0, higher=run["higher"])


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def ppl_ratio(reference: str, model: str, dist: str) -> float:
    """ppl(reference) ÷ ppl(model), each exp(Σ nll / Σ tokens)."""
    return math.exp(sum(NLL[reference][dist]) / sum(TOKENS[dist])) / math.exp(sum(NLL[model][dist]) / sum(TOKENS[dist]))


def general_mean(model: str) -> float:
    """Mean over the general tasks (mmlu pooled over its subtasks, drop_mc, gen) of the model's mean score."""
    items = ITEMS[model]
    return mean([mean(items["mmlu_a"] + items["mmlu_b"]), mean(items["drop_mc"]), mean(items["gen"])])


def assert_ci_holds(entry: dict[str, Any]) -> None:
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]


# ------------------------------------------------------------------------------------------------- the values
def test_own_task_rule():
    assert own_task("mathqa", ["mmlu", "mathqa_mc"]) == "mathqa_mc"  # the built-in task
    assert own_task("mathqa", ["mmlu", "mathqa"]) == "mathqa"  # a stock task named like the distribution
    assert own_task("mathqa", ["mathqa", "mathqa_mc"]) == "mathqa_mc"  # the built-in one first
    assert own_task("sni", ["mmlu", "drop_mc"]) is None


def test_retention_equals_the_hand_computed_values(tmp_path):
    out = _retention(make_run(tmp_path))
    assert out["basis"] == {"mathqa": "task:mathqa_mc", "sni": "val_ppl"}
    assert out["general_tasks"] == ["mmlu", "drop_mc", "gen"]  # not mathqa_mc (own task), not wiki (lower is better)
    dem = out["models"]["dem"]

    # mathqa: dem 0.6 vs only_mathqa 0.8 on mathqa_mc
    assert dem["in_distribution"]["mathqa"]["value"] == pytest.approx(0.6 / 0.8) == pytest.approx(0.75)
    assert dem["in_distribution"]["mathqa"]["basis"] == "task:mathqa_mc" and dem["in_distribution"]["mathqa"]["n"] == 5
    # sni: ppl(only_sni) / ppl(dem) = exp(6/4) / exp(8/4)
    sni = ppl_ratio("only_sni", "dem", "sni")
    assert sni == pytest.approx(math.exp(-0.5))
    assert dem["in_distribution"]["sni"]["value"] == pytest.approx(sni)
    assert dem["in_distribution"]["sni"]["basis"] == "val_ppl"
    assert dem["in_distribution_mean"]["value"] == pytest.approx((0.75 + sni) / 2)
    assert dem["in_distribution_mean"]["n_dists"] == 2
    # general: mean over (mmlu, drop_mc, gen) of dem ÷ of base = ((3/6 + 1 + 1)/3) / ((2/6 + 1/2 + 1/2)/3) = 1.875
    assert general_mean("dem") / general_mean("base") == pytest.approx(1.875)
    assert dem["general"]["value"] == pytest.approx(1.875) and dem["general"]["tasks"] == out["general_tasks"]
    # the perplexity-based values exist for every distribution (mathqa's too, 0-token example dropped)
    assert dem["in_distribution_ppl"]["mathqa"]["value"] == pytest.approx(ppl_ratio("only_mathqa", "dem", "mathqa"))
    assert dem["in_distribution_ppl"]["mathqa"]["n"] == 2
    assert dem["in_distribution_ppl_mean"]["value"] == pytest.approx(
        (ppl_ratio("only_mathqa", "dem", "mathqa") + sni) / 2)
    for entry in [*dem["in_distribution"].values(), dem["in_distribution_mean"], dem["general"],
                  *dem["in_distribution_ppl"].values(), dem["in_distribution_ppl_mean"]]:
        assert_ci_holds(entry)
    assert dem["general"]["ci_low"] < dem["general"]["value"] < dem["general"]["ci_high"]  # not degenerate

    # the references: only_<d> retains all of itself; the base retains all of its general ability
    only = out["models"]["only_mathqa"]["in_distribution"]["mathqa"]
    assert (only["value"], only["ci_low"], only["ci_high"]) == (1.0, 1.0, 1.0)
    assert out["models"]["base"]["general"]["value"] == pytest.approx(1.0)
    assert out["models"]["data_mixing"]["in_distribution"]["mathqa"]["value"] == pytest.approx(0.2 / 0.8)
    json.dumps(out, allow_nan=False)  # strict JSON for summary.json


def test_a_model_left_out_of_scoring_keeps_its_perplexity_retention(tmp_path):
    ties = _retention(make_run(tmp_path))["models"]["dem_ties"]
    assert ties["scored"] is False
    mathqa = ties["in_distribution"]["mathqa"]
    assert mathqa["value"] is None and mathqa["note"].startswith("not run") and mathqa["basis"] == "task:mathqa_mc"
    assert ties["in_distribution"]["sni"]["value"] == pytest.approx(ppl_ratio("only_sni", "dem_ties", "sni"))
    assert ties["in_distribution_mean"]["value"] is None  # not over part of the distributions
    assert ties["in_distribution_ppl"]["mathqa"]["value"] == pytest.approx(ppl_ratio("only_mathqa", "dem_ties",
                                                                                     "mathqa"))
    assert ties["general"]["value"] is None and ties["general"]["note"].startswith("not run")


def test_unscored_references_fall_back_to_perplexity_and_no_general_retention(tmp_path):
    """score_models=[data_mixing, dem]: only_mathqa not scored, so mathqa's basis is validation perplexity for every
    model; the base not scored, so there is no general retention."""
    out = _retention(make_run(tmp_path, not_scored=("base", "only_mathqa", "only_sni", "dem_ties")))
    assert out["basis"] == {"mathqa": "val_ppl", "sni": "val_ppl"}
    dem = out["models"]["dem"]
    assert dem["in_distribution"]["mathqa"]["value"] == pytest.approx(ppl_ratio("only_mathqa", "dem", "mathqa"))
    assert dem["in_distribution_mean"]["value"] == pytest.approx(dem["in_distribution_ppl_mean"]["value"])
    assert dem["general"]["value"] is None and dem["general"]["note"] == "not run (base not scored)"


def test_chance_levels_come_from_the_records(tmp_path):
    run = make_run(tmp_path)
    chance = statistics(run["methods"], run["samples"], run["ppl_units"], HEADLINE, GROUPS, seed=0,
                        higher=HIGHER)["chance"]
    # mathqa_mc 5-way, mmlu 4-way (pooled), drop_mc 2-way; none for a generation task or a perplexity task
    assert chance == pytest.approx({"mathqa_mc": 0.2, "mmlu": 0.25, "drop_mc": 0.5})
    mixed = [_record(0, 1, 2), _record(1, 0, 4)]
    write_samples(tmp_path / "mixed", {"t": mixed, "mc2": [_record(0, 0.37, 4)]})
    assert chance_from_records(tmp_path / "mixed", "t", "acc", {}) == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert chance_from_records(tmp_path / "mixed", "mc2", "acc", {}) is None  # a probability mass per item


# ------------------------------------------------------------------------------------------------- the report
def full_summary(tmp_path: Path) -> dict[str, Any]:
    """A summary.json as the pipeline writes it, with statistics and retention from the records above."""
    run = make_run(tmp_path)
    methods = {}
    for i, (label, m) in enumerate(run["methods"].items()):
        scores = {}
        if m["scored"]:
            items = ITEMS[label]
            scores = {"mathqa_mc/acc": mean(items["mathqa_mc"]), "mmlu/acc": mean(items["mmlu_a"] + items["mmlu_b"]),
                      "drop_mc/acc": mean(items["drop_mc"]), "gen/exact_match": mean(items["gen"]),
                      "wiki/word_perplexity": 12.5}
        selected = {"merge": "dem", "n_trials": 3, "sampler": "tpe", "weights": {"mathqa": 0.5, "sni": 0.5}}
        methods[label] = {"train_tokens": 100 * i, "train_flops": 1e9 * (i + 1), "train_wall_s": 1.0,
                          "search_forward_tokens": 0, "val_ppl": 2.0 + i, "val_ppl_by_dist": {"mathqa": 2.0,
                                                                                              "sni": 3.0},
                          "scores": scores, "selected": selected if label.startswith("dem") else {}, "scored":
                          m["scored"]}
    methods["data_mixing"]["selected"] = {"method": "grid", "weights": {"mathqa": 0.5, "sni": 0.5}}
    return {"methods": methods, "cost_ratio": 0.5, "chance": {"mathqa_mc": 0.2}, "seed": 0,
            "provenance": {"git_commit": "abc"}, "wall_s": 1.0, "task_versions": {t: 1 for t in HEADLINE},
            "headline_metrics": HEADLINE, "higher_is_better": HIGHER,
            "statistics": statistics(methods, run["samples"], run["ppl_units"], HEADLINE, GROUPS, seed=0,
                                     higher=HIGHER),
            "retention": _retention(run)}


def test_report_has_the_retention_table_and_a_headline_that_names_what_separates(tmp_path):
    summary = full_summary(tmp_path)
    files = render(summary)
    report = files["report.md"].decode()
    head = report.split("\n- ")[0]  # the headline paragraphs, before the selections list
    assert ("separate the arms at this sample size (paired DEM − data mixing, 95% CI excludes 0): drop_mc (DEM "
            "better: +1.000 [+1.000, +1.000], n = 20). Within noise: mathqa_mc, mmlu, gen, wiki.") in head
    # drop_mc: data_mixing 0/20 and only_sni 0/20 below, base 10/20 at chance 0.5; mathqa_mc: base and two
    # others at 1/5 = chance
    assert ("⚠ At or below chance (score ≤ chance level): mathqa_mc (chance 0.200): base 0.200, only_sni 0.200, "
            "data_mixing 0.200; mmlu (chance 0.250): only_mathqa 0.167; drop_mc (chance 0.500): base 0.500, "
            "only_sni 0.000, data_mixing 0.000.") in head
    assert "the 95% CI reaches chance: mathqa_mc: dem; mmlu: base, only_sni, data_mixing, dem." in head
    assert "## Retention, 95% CI over items" in report
    table = report.split("## Retention, 95% CI over items")[1].split("\n## ")[0]
    assert ("| model | mathqa (task:mathqa_mc) | sni (val_ppl) | mean (normalised performance) | val-ppl mean | "
            "general |") in table
    dem = summary["retention"]["models"]["dem"]
    cell = f"{dem['general']['value']:.3f} [{dem['general']['ci_low']:.3f}, {dem['general']['ci_high']:.3f}]"
    assert "| dem | 0.750 [" in table and table.split("| dem |")[1].split("\n")[0].endswith(f"| {cell} |")
    assert "| dem_ties | not run |" in table
    assert "General benchmarks: mmlu, drop_mc, gen." in table
    assert "| chance | 0.200 | 0.250 | 0.500 |  |  |" in report  # the scores table's chance row: stock ones too
    csv = pd.read_csv(io.BytesIO(files["results.csv"]))
    by_model = csv.set_index("model")
    names = ["retention_id", "retention_id/mathqa", "retention_id/sni", "retention_id_ppl", "retention_general"]
    assert list(csv.columns[-15:]) == [c for n in names for c in (n, f"{n}.ci_low", f"{n}.ci_high")]
    assert by_model.loc["dem", "retention_id/mathqa"] == pytest.approx(0.75)
    assert by_model.loc["dem", "retention_general"] == pytest.approx(1.875)
    assert by_model.loc["dem", "retention_general.ci_low"] == pytest.approx(dem["general"]["ci_low"])
    assert by_model.loc["dem", "retention_general.ci_high"] == pytest.approx(dem["general"]["ci_high"])
    assert pd.isna(by_model.loc["dem_ties", "retention_id"]) and pd.isna(by_model.loc["dem_ties", "retention_general"])
    assert by_model.loc["dem_ties", "retention_id_ppl"] > 0
    assert "retention_id" not in report.split("## All models")[1]  # the CIs are in the retention table


def test_a_summary_without_retention_still_renders():
    """A summary.json written before retention existed (a committed reference run) still loads and renders."""
    summary = json.loads((Path(__file__).parents[1] / "reports" / "smollm2-real" / "summary.json").read_text())
    assert "retention" not in summary
    report = render(summary)["report.md"].decode()
    assert "## Retention" not in report and "Benchmarks that separate the arms" in report
    assert not any(c.startswith("retention") for c in rows(summary)[0])


def test_the_retention_contract_refuses_a_value_that_is_no_number(tmp_path):
    summary = full_summary(tmp_path)
    check_summary(summary)  # nulls (not run) are allowed
    summary["retention"]["models"]["dem"]["general"]["value"] = "high"
    with pytest.raises(SummaryError, match=r"'retention\.models\.dem\.general\.value'"):
        render(summary)


def test_the_aggregate_has_the_retention_columns(tmp_path):
    """Mean and t interval over seeds of each retention column; n/a where a seed has none, and for a model left
    out of scoring in every run (no scores, no W/T/L), which still renders."""
    values = {0: 0.5, 1: 0.75, 2: 0.875}
    summaries = []
    for seed, v in values.items():
        s = fake_summary(seed, tmp_path / str(seed))
        s["methods"]["dem_ties"] |= {"scored": False, "scores": {}}
        entry = {"value": v, "ci_low": v - 0.1, "ci_high": v + 0.1}
        none = {"value": None, "ci_low": None, "ci_high": None, "note": "not run (model not scored)"}
        s["retention"] = {"basis": {"a": "val_ppl", "b": "val_ppl"}, "models": {
            name: {"in_distribution": {"a": entry, "b": entry}, "in_distribution_mean": entry,
                   "in_distribution_ppl_mean": entry, "general": none if name == "dem_ties" else entry}
            for name in s["methods"]}}
        summaries.append(s)
    table = aggregate(summaries).set_index("model")
    ci = t_interval(list(values.values()))
    for col in ("retention_id", "retention_id/a", "retention_id_ppl", "retention_general"):
        assert table.loc["dem", col] == pytest.approx(ci["mean"])
        assert (table.loc["dem", f"{col}_low"], table.loc["dem", f"{col}_high"]) == pytest.approx(
            (ci["low"], ci["high"]))
    assert math.isnan(table.loc["dem_ties", "retention_general"])
    assert table.loc["dem_ties", "retention_id"] == pytest.approx(ci["mean"])
    assert math.isnan(table.loc["dem_ties", "mean_score"]) and pd.isna(table.loc["dem_ties", "mean_score_wins"])
    md = render_aggregate(summaries, [tmp_path / str(seed) for seed in values])[1]["aggregate.md"].decode()
    row = next(line for line in md.splitlines() if line.startswith("| dem_ties |"))
    assert "n/a" in row and f"{ci['mean']:.3f} ± {ci['high'] - ci['mean']:.3f}" in row  # retention_id
    assert "`retention_id`: in-distribution retention" in md


def test_every_compared_strategy_has_its_paired_perplexity_row_scored_or_not():
    """The committed merge-strategies reference: four rows were left out of scoring, yet each has its paired
    perplexity test against mixing in report.md, with summary.json's numbers."""
    summary = json.loads((Path(__file__).parents[1] / "reports" / "merge-strategies-smollm2" / "summary.json")
                         .read_text())
    paired = summary["statistics"]["paired"]
    assert len(paired) == 7 and not paired["dem_ties - data_mixing"].get("tasks")  # unscored, still compared
    table = render(summary)["report.md"].decode().split("## Paired differences against data mixing")[1]
    table = table.split("\n## ")[0]
    for name, comp in paired.items():
        ppl = comp["val_log_ppl"]
        p = "< 0.001" if ppl["p_value"] < 0.001 else f"{ppl['p_value']:.3f}"
        assert (f"| {name} | validation perplexity, ratio (below 1 favours the first) | {ppl['ratio']:.3f} "
                f"[{ppl['ratio_low']:.3f}, {ppl['ratio_high']:.3f}] | {p} | |") in table, name
    assert "| dem_ties - data_mixing | validation perplexity, ratio (below 1 favours the first) | 0.957 [0.935, " \
           "0.978] | < 0.001 | |" in table
