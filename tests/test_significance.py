"""Gathering per-sample records for the statistics: file names, metric direction, report-slice perplexity."""

from __future__ import annotations

import pytest

from harness.evaluation.results import write_samples
from harness.stats.significance import per_item, statistics


def _records(values: list[float], metric: str = "acc") -> list[dict]:
    return [{"doc_id": i, "filter": "none", metric: v} for i, v in enumerate(values)]


def test_a_task_whose_name_is_no_file_name_is_read_back(tmp_path):
    """Written under a sanitised name, read under the same one: such a subtask used to drop out of every CI."""
    write_samples(tmp_path, {"grp::sub/one": _records([1.0, 0.0])})
    assert per_item(tmp_path, "grp::sub/one", "acc", {}) == {("grp::sub/one", 0): 1.0, ("grp::sub/one", 1): 0.0}


def test_lower_is_better_tasks_stay_out_of_the_mean_and_perplexity_uses_the_report_slice(tmp_path):
    headline = {"qa": "acc", "wiki": "word_perplexity"}
    scores = {"data_mixing": ([1.0, 0.0, 0.0, 1.0], [10.0, 12.0, 9.0, 11.0]),
              "dem": ([1.0, 1.0, 0.0, 1.0], [30.0, 40.0, 35.0, 33.0])}
    samples, methods = {}, {}
    for label, (qa, wiki) in scores.items():
        write_samples(tmp_path / label, {"qa": _records(qa), "wiki": _records(wiki, "word_perplexity")})
        samples[label] = tmp_path / label
        methods[label] = {"scores": {"qa/acc": sum(qa) / 4, "wiki/word_perplexity": sum(wiki) / 4}}
    units = {label: {"a": {"nll": [4.0 + k, 2.0], "tokens": [2, 2]}, "b": {"nll": [9.0, 3.0 + k], "tokens": [3, 1]}}
             for k, label in enumerate(scores)}
    out = statistics(methods, samples, units, headline, {}, seed=0, higher={"qa": True, "wiki": False})
    paired = out["paired"]["dem - data_mixing"]
    assert paired["tasks"]["wiki"]["higher_is_better"] is False and paired["tasks"]["wiki"]["diff"] == 24.0
    assert paired["mean"]["excluded_lower_is_better"] == ["wiki"]
    assert paired["mean"]["diff"] == pytest.approx(paired["tasks"]["qa"]["diff"]) == 0.25  # qa alone
    ppl = out["val_ppl"]["dem"]
    assert ppl["slice"] == "report" and ppl["n"] == 4 and ppl["tokens"] == 8
    assert paired["val_log_ppl"]["method"] == "stratified-paired-bootstrap" and paired["val_log_ppl"]["diff"] == 0.25
