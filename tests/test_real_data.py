"""Real training data and stock lm-eval tasks through the CLI: sources from local files and a hub mirror, stock
tasks scored beside built-in ones, exactly the affected runs retrained when a file changes, and bad input
rejected with one line before anything is created."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MICRO
from tests.fixtures_hub import write_mirror
from tests.test_sources import cot_rows, sni_task, write_json, write_tsv

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0", "WANDB_SILENT": "true"}


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **OFFLINE}, cwd=cwd)


def _files(root: Path) -> dict[str, Path]:
    """A folder of SNI task files, a FLAN CoT TSV and a mirror holding MathQA (hub id regisss/math_qa)."""
    sni = root / "sni"
    sni.mkdir(parents=True)
    write_json(sni / "task001_a.json", sni_task("task001_a", 10))
    write_json(sni / "task002_b.json", sni_task("task002_b", 10))
    return {"sni": sni, "cot": write_tsv(root / "cot_train.tsv", cot_rows(16)), "mirror": write_mirror(root / "mirror")}


def _sources(files: dict[str, Path]) -> str:
    return ("data.sources={mathqa: {format: mathqa, path: regisss/math_qa, val_split: validation, n_val: 1}, "
            f"sni: {{format: sni, path: '{files['sni']}', n_val: 3}}, "
            f"cot: {{format: flan_cot, path: '{files['cot']}', n_val: 3}}}}")


@pytest.mark.slow
def test_real_sources_and_stock_tasks_run_end_to_end_through_a_mirror(tmp_path):
    files = _files(tmp_path / "data")
    common = [*MICRO, "mixing.grid_step=1", "dem.n_trials=2", _sources(files), f"hub_mirror={files['mirror']}",
              "eval.tasks=[mathqa_mc, boolq, mmlu_abstract_algebra, bbh_fewshot_boolean_expressions]",
              "eval.limit=4", "eval.gen_kwargs={max_gen_toks: 4}", f"cache_dir={tmp_path / 'cache'}"]
    first = _cli(*common, f"output_dir={tmp_path / 'one'}")
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    data = summary["data"]
    assert (data["mathqa"]["format"], data["sni"]["format"], data["cot"]["format"]) == ("mathqa", "sni", "flan_cot")
    assert data["mathqa"]["val_split"] == "validation" and data["sni"]["val"] == 3 and data["cot"]["val"] == 3
    dem = summary["methods"]["dem"]["scores"]
    for key in ("mathqa_mc/acc", "boolq/acc", "mmlu_abstract_algebra/acc",
                "bbh_fewshot_boolean_expressions/exact_match"):
        assert 0 <= dem[key] <= 1 and f"{key}_stderr" in dem, key
    assert summary["task_versions"]["boolq"] is not None
    assert summary["headline_metrics"]["bbh_fewshot_boolean_expressions"] == "exact_match"
    rows = (tmp_path / "one" / "samples" / "dem" / "boolq.jsonl").read_text().splitlines()
    assert 1 <= len(rows) <= 4 and "doc_id" in json.loads(rows[0])  # eval.limit=4 (the fixture has 3)
    report = (tmp_path / "one" / "report.md").read_text()
    assert "| boolq (acc) |" in report and " bbh_fewshot_boolean_expressions/exact_match " in report

    # A used CoT row changes: exactly the runs that read CoT are retrained (grid_step=1: only_cot), nothing else.
    rows = cot_rows(16)
    rows[0]["rationale"] = "A different rationale for the first row."
    write_tsv(files["cot"], rows)
    second = _cli(*common, f"output_dir={tmp_path / 'two'}")
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    trained = [line for line in log.splitlines() if "cache miss train/" in line]
    if data["cot"]["train"] + data["cot"]["val"] == 16:  # every row is used, so the edit must invalidate cot
        assert len(trained) == 1 and "(cot=1.00)" in trained[0], trained
    assert "(mathqa=1.00): reusing" in log and "(sni=1.00): reusing" in log


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return _files(tmp_path_factory.mktemp("data"))


def _bad(tmp_path: Path, *overrides: str) -> str:
    """Run the CLI; assert exit 2, one line, no traceback, nothing created; return the line."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _cli(*MICRO, *overrides, f"output_dir={out}", f"cache_dir={cache}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not cache.exists() and not (tmp_path / "runs").exists()
    return lines[0]


def test_an_unknown_task_name_gets_did_you_mean(tmp_path):
    line = _bad(tmp_path, "eval.tasks=[mathqa_mc, mmlu_abstrct_algebra]")
    assert "unknown lm-eval task 'mmlu_abstrct_algebra'. Did you mean 'mmlu_abstract_algebra'" in line


def test_an_unknown_format_is_rejected(tmp_path):
    assert "data.sources.mathqa.format: unknown format 'mathq'" in _bad(
        tmp_path, "data.sources.mathqa={format: mathq, path: /x.json}")


def test_a_missing_or_empty_source_file_is_rejected(tmp_path):
    assert "no such file or folder" in _bad(tmp_path, f"data.sources.cot={{format: flan_cot, path: "
                                                      f"'{tmp_path / 'none.tsv'}'}}")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert "file is empty" in _bad(tmp_path, f"data.sources.cot={{format: flan_cot, path: '{empty}'}}")


def test_a_row_missing_a_required_field_names_file_row_and_field(tmp_path):
    rows = [{"Problem": "p", "options": "a ) 1 , b ) 2", "Rationale": "r", "correct": "a"}] * 2
    rows.append({"Problem": "p", "options": "a ) 1 , b ) 2", "correct": "a"})  # no Rationale
    path = write_json(tmp_path / "math.json", rows)
    line = _bad(tmp_path, f"data.sources.mathqa={{format: mathqa, path: '{path}'}}")
    assert f"{path}: row 3: missing field 'Rationale'" in line


def test_a_mirror_missing_a_split_names_the_file_before_any_training(tmp_path, files):
    (files["mirror"] / "aps/super_glue/boolq/validation.jsonl").rename(tmp_path / "moved.jsonl")
    try:
        line = _bad(tmp_path, f"hub_mirror={files['mirror']}", "eval.tasks=[mathqa_mc, boolq]")
    finally:
        (tmp_path / "moved.jsonl").rename(files["mirror"] / "aps/super_glue/boolq/validation.jsonl")
    assert f"hub_mirror: missing {files['mirror']}/aps/super_glue/boolq/validation.jsonl" in line
    line = _bad(tmp_path, f"hub_mirror={files['mirror']}", "data.sources.mathqa={format: mathqa, path: nobody/none}")
    assert f"hub_mirror: missing {files['mirror']}/nobody/none/default/train.jsonl" in line
