"""The bad-input catalog: configs, sweeps, plugins, paths, the merge CLI and the report CLI. Every case must end
with exit code 2, at most 3 lines on stderr, no traceback, and nothing created or altered.

The dem-bench cases call the CLI's `main()` in-process (the checks all run before Hydra starts, so this is the
same code path, minus two seconds of interpreter start-up per case); a few also run as real subprocesses."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import harness.__main__ as cli
from tests.conftest import MICRO
from tests.fixtures_hub import write_mirror

PLUGIN_SYNTAX = "from dem.merge import register\n\ndef broken(:\n    pass\n"
PLUGIN_RAISES = "raise RuntimeError('plugin exploded at import')\n"
PLUGIN_DUPLICATE = '''from dem.merge import register


@register("ties")
def ties(base, deltas, weights, params):
    return base
'''

# (overrides, expected text in the one line). {tmp} is the case's own folder.
CONFIG_CASES = [
    (["model=huge"], "model: unknown preset 'huge'. Available: hf, micro"),
    (["model=tinny"], "unknown preset 'tinny'. Did you mean 'tiny'?"),
    (["budget.train_tokns=5"], "unknown key 'budget.train_tokns'. Did you mean 'budget.train_tokens'?"),
    (["dem.samplr=tpe"], "unknown key 'dem.samplr'. Did you mean 'dem.sampler'?"),
    (["+budget.epochs=3"], "budget.epochs: Key 'epochs' not in 'BudgetConfig'"),
    (["budget.train_tokens=0"], "budget.train_tokens=0: must be a positive integer"),
    (["budget.train_tokens=-100"], "budget.train_tokens=-100: must be a positive integer"),
    (["budget.train_tokens=abc"], "budget.train_tokens"),
    (["budget.lr=-1"], "budget.lr=-1.0: must be > 0"),
    (["budget.warmup_ratio=1.5"], "budget.warmup_ratio=1.5: must be in [0, 1)"),
    (["budget.grad_accum_steps=0"], "budget.grad_accum_steps=0: must be >= 1"),
    (["mixing.grid_step=0.3"], "mixing.grid_step=0.3: must divide 1 into a whole number of steps"),
    (["dem.n_trials=0"], "dem.n_trials=0: must be >= 1"),
    (["training.method=lorra"], "training.method=lorra: allowed: full, lora. Did you mean 'lora'?"),
    (["training.method=lora", "training.lora.r=0"], "training.lora.r=0: must be a positive integer"),
    (["training.method=lora", "training.lora.r=2.5"], "training.lora.r"),
    (["training.method=lora", "training.lora.alpha=0"], "training.lora.alpha=0.0: must be > 0"),
    (["training.method=lora", "training.lora.dropout=1.0"], "training.lora.dropout=1.0: must be in [0, 1)"),
    (["training.method=lora", "training.lora.target_modules=[]"], "training.lora.target_modules=[]: name at least"),
    (["training.lora.rank=8"], "unknown key 'training.lora.rank'. Did you mean 'training.lora.r'?"),
    (["dem.sampler=tp"], "dem.sampler=tp: allowed: tpe, random, cmaes, qmc, gp, grid. Did you mean 'tpe'?"),
    (["dem.merge=tiess"], "unknown merge strategy 'tiess'. Did you mean 'ties'?"),
    (["dem.merge=ties", "dem.params={densty: 0.5}"], "merge 'ties' has no parameter 'densty'"),
    (["dem.merge=ties", "dem.params={density: -0.5}"], "merge 'ties': 'density'=-0.5 is outside (0, 1]"),
    (["dem.merge=ties", "dem.params={density: 1.5}"], "merge 'ties': 'density'=1.5 is outside (0, 1]"),
    (["dem.merge=ties", "dem.params={lambda: abc}"], "merge 'ties': 'lambda' must be a finite number, not 'abc'"),
    (["dem.merge=ties", "dem.params={normalize: 3}"], "'normalize' must be true or false"),
    (["dem.merge=della", "dem.params={density: 0.5, epsilon: 0.6}"], "'epsilon'=0.6 is outside [0, 0.5]"),
    (["dem.merge=della", "dem.params={density: 0.9, epsilon: 0.15}"], "density ± epsilon must lie inside (0, 1)"),
    (["dem.search_params=[normalize]"], "'normalize' cannot be searched for merge 'dem'"),
    (["dem.compare=[{merge: ties}, {merge: ties}]"], "dem.compare: each strategy at most once"),
    (["dem.weight_range=[1.0, 0.0]"], "dem.weight_range"),
    (["dem.storage=foo://nowhere"], "dem.storage=foo://nowhere: not a usable database URL"),
    (["dem.storage=cloud"], "dem.storage=cloud: allowed: journal, memory, sqlite, or an RDB URL"),
    (["dem.vectors_on=gpu"], "dem.vectors_on=gpu: allowed: device, cpu"),
    (["dem.vector_dtype=int8"], "dem.vector_dtype=int8: allowed: auto, float32, bfloat16"),
    (["tracking.mode=cloud"], "tracking.mode=cloud: allowed: offline, online, disabled"),
    (["model.device=tpu"], "model.device=tpu: allowed: auto, cpu, cuda"),
    (["model.dtype=float16"], "model.dtype=float16: allowed: auto, float32, bfloat16"),
    (["model=hf", "model.name_or_path={tmp}/no/such"], "no such folder"),
    (["data.distributions=[]"], "data.distributions=[]: a non-empty list of distinct names"),
    (["data.distributions=[mathqa, mathqa]"], "a non-empty list of distinct names"),
    (["data.distributions=[mathqa, nope]"], "no built-in generator 'nope'"),
    (["data.sources.mathqa={format: mathq, path: /x.json}"], "unknown format 'mathq'"),
    (["data.sources.cot={format: flan_cot, path: '{tmp}/none.tsv'}"], "no such file or folder"),
    (["eval.limit=0"], "eval.limit=0: must be null or a positive integer"),
    (["eval.gen_kwargs=5"], "eval.gen_kwargs=5: must be null or a mapping"),
    (["output_dir={tmp}/a_file"], "output_dir={tmp}/a_file: is a file, not a folder"),
    (["cache_dir={tmp}/a_file/sub"], "cache_dir={tmp}/a_file/sub: {tmp}/a_file is a file"),
    (["dem.plugins=[{tmp}/missing.py]"], "plugin file '{tmp}/missing.py': no such file"),
    (["dem.plugins=[{tmp}/syntax.py]"], "plugin file '{tmp}/syntax.py' (line 3): SyntaxError"),
    (["dem.plugins=[{tmp}/raises.py]"], "plugin file '{tmp}/raises.py': RuntimeError: plugin exploded at import"),
    (["dem.plugins=[{tmp}/duplicate.py]"], "merge strategy 'ties' is already registered"),
    (["-m", "budget.lr=3e-3,-1"], "sweep job 2 of 2 (budget.lr=-1): budget.lr=-1.0: must be > 0"),
    (["-m", "model=micro,huge"], "model: unknown preset 'huge'"),
    (["-m", "dem.n_trials=2,0", "mixing.grid_step=0.5,1"], "dem.n_trials=0: must be >= 1"),
    (["arms=[data_mixing, dem, regmixx]"], "arms: unknown arm 'regmixx'"),
    (["arms=[]"], "including data_mixing and dem"),
    (["arms=[dem]"], "including data_mixing and dem"),
    (["mixing.method=regmx"], "mixing.method: unknown method 'regmx'. Did you mean 'regmix'?"),
    (["mixing=regmix", "mixing.proxies=3"], "mixing.proxies=3: RegMix needs at least one more proxy run than"),
    (["mixing=regmix", "mixing.proxy_tokens=16384"], "a proxy run must not be larger than a full run"),
    (["mixing=temperature", "mixing.temperature=0"], "mixing.temperature=0.0: must be > 0"),
    (["budget.mode=matched"], "budget.mode=matched: allowed: per_run, matched_total"),
    (["selection.metric=ppl"], "selection.metric=ppl: allowed: pooled_ppl, mean_log_ppl"),
    (["mixing.mixtures=[{mathqa: 0.5, nope: 0.5}]"], "mixing.mixtures[0]"),
    (["eval.score_models=[base, dem, dme]"], "eval.score_models: no arm produces 'dme'. Did you mean 'dem'?"),
    (["eval.score_models=[]"], "eval.score_models=[]: name at least one model"),
    (["eval.limit={mathqa_mc: 5, mmlu: 3}"], "eval.limit: mmlu not in eval.tasks"),
    (["eval.limit={mathqa_mc: 0}"], "eval.limit: mathqa_mc=0 must be a positive integer or null"),
    # a stock task with neither a mirror nor the hub (the tests run with HF_HUB_OFFLINE=1): named before training
    (["eval.tasks=[mmlu]"], "eval.tasks: mmlu reads hub dataset 'cais/mmlu', which is neither in the local HF cache "
                            "nor reachable"),
    # BBH's YAML asks for up to 256 new tokens; the micro model's context is 256: lm-eval would assert after training
    (["eval.tasks=[bbh_fewshot_boolean_expressions]", "hub_mirror={tmp}/mirror"],
     "generation task bbh_fewshot_boolean_expressions may generate 256 tokens (max_gen_toks), not below the model's "
     "context length of 256; set eval.gen_kwargs={max_gen_toks: N} with N < 256"),
]


def _case_dir(tmp_path: Path) -> Path:
    write_mirror(tmp_path / "mirror")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "syntax.py").write_text(PLUGIN_SYNTAX)
    (tmp_path / "raises.py").write_text(PLUGIN_RAISES)
    (tmp_path / "duplicate.py").write_text(PLUGIN_DUPLICATE)
    return tmp_path


def tree(root: Path) -> str:
    """A hash of everything under `root`: every path (folders too, so an empty folder or a lock file counts) and
    every file's bytes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"<dir>")
    return h.hexdigest()


def _one_line(capsys: pytest.CaptureFixture, code: int) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert 1 <= len(lines) <= 3 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("overrides,expected", CONFIG_CASES, ids=[" ".join(o) for o, _ in CONFIG_CASES])
def test_dem_bench_rejects_bad_input_before_creating_anything(tmp_path, monkeypatch, capsys, overrides, expected):
    root = _case_dir(tmp_path)
    args = [a.replace("{tmp}", str(root)) for a in overrides]
    out, cache = root / "out", root / "cache"
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["dem-bench", *MICRO, *args, f"output_dir={out}", f"cache_dir={cache}"]
                        if not any(a.startswith(("output_dir", "cache_dir")) for a in args)
                        else ["dem-bench", *MICRO, *args])
    monkeypatch.setattr(cli, "app", lambda: pytest.fail("bad input reached the Hydra app"))
    before = tree(root)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    line = _one_line(capsys, exit_info.value.code)
    assert expected.replace("{tmp}", str(root)) in line, line
    assert tree(root) == before  # nothing created or altered: no output, cache, runs/ or lock, no file touched


@pytest.mark.parametrize("args,expected", [
    (["dem.merge=ties", "dem.params={density: -0.5}"], "'density'=-0.5 is outside (0, 1]"),
    (["-m", "budget.lr=3e-3,-1"], "sweep job 2 of 2 (budget.lr=-1): budget.lr=-1.0: must be > 0"),
])
def test_the_real_cli_process_prints_one_line(tmp_path, args, expected):
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, *args, f"output_dir={tmp_path / 'o'}",
                           f"cache_dir={tmp_path / 'c'}"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ dem-bench-merge


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def merge_inputs(micro_base, tmp_path):
    from harness.models.loading import load_model

    model = load_model(micro_base[0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path / "tuned")
    return micro_base[0], tmp_path / "tuned"


MERGE_CASES = [
    ("out_is_base", lambda b, t, w: ["--out", str(b)], "is, contains or lies inside the input"),
    ("out_inside_base", lambda b, t, w: ["--out", str(b / "merged")], "is, contains or lies inside the input"),
    ("out_contains_input", lambda b, t, w: ["--out", str(t.parent)], "is, contains or lies inside the input"),
    ("out_is_a_file", lambda b, t, w: ["--out", str(w / "a_file")], "is a file"),
    ("out_folder_missing", lambda b, t, w: ["--out", str(w / "no" / "such" / "m")], "does not exist"),
    ("export_folder_missing", lambda b, t, w: ["--out", str(w / "m"), "--export-mergekit", str(w / "no" / "m.yaml")],
     "does not exist"),
    ("density_out_of_range", lambda b, t, w: ["--out", str(w / "m"), "--method", "ties", "--param", "density=1.5"],
     "'density'=1.5 is outside (0, 1]"),
    ("unknown_method", lambda b, t, w: ["--out", str(w / "m"), "--method", "tiez"], "Did you mean 'ties'?"),
    ("unknown_param", lambda b, t, w: ["--out", str(w / "m"), "--param", "densty=0.5"], "has no parameter 'densty'"),
    ("weight_not_a_number", lambda b, t, w: ["--out", str(w / "m"), "--weight", "tuned=abc"], "is not a number"),
]


@pytest.mark.parametrize("name,extra,expected", MERGE_CASES, ids=[c[0] for c in MERGE_CASES])
def test_merge_cli_refuses_before_merging(merge_inputs, tmp_path, capsys, name, extra, expected):
    from dem.merge_cli import main

    base, tuned = merge_inputs
    work = tmp_path / "work"
    work.mkdir()
    (work / "a_file").write_text("x")
    before = (_digest(base), _digest(tuned), sorted(p.name for p in work.iterdir()))
    with pytest.raises(SystemExit) as exit_info:
        main(["--base", str(base), "--model", f"tuned={tuned}", *extra(base, tuned, work)])
    assert expected in _one_line(capsys, exit_info.value.code)
    assert (_digest(base), _digest(tuned), sorted(p.name for p in work.iterdir())) == before


def test_merge_cli_names_a_truncated_or_torn_input(merge_inputs, tmp_path, capsys):
    from dem.merge_cli import main

    base, tuned = merge_inputs
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tuned / "config.json").read_text())
    data = (tuned / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(SystemExit) as exit_info:
        main(["--base", str(base), "--model", f"b={broken}", "--out", str(tmp_path / "m")])
    assert "model.safetensors: unreadable safetensors file" in _one_line(capsys, exit_info.value.code)
    (broken / "model.safetensors").write_bytes(data)
    (broken / "config.json").write_text('{"model_type": "lla')  # torn
    with pytest.raises(SystemExit) as exit_info:
        main(["--base", str(base), "--model", f"b={broken}", "--out", str(tmp_path / "m")])
    assert "config.json: unreadable" in _one_line(capsys, exit_info.value.code)
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".m.tmp-*"))


# ----------------------------------------------------------------------------------------------- dem-bench-report


def _summary() -> dict:
    method = {"train_tokens": 1, "train_flops": 1.0, "train_wall_s": 1.0, "search_forward_tokens": 0, "val_ppl": 2.0,
              "val_ppl_by_dist": {"a": 2.0}, "scores": {"t/acc": 0.5}, "selected": {"weights": {"a": 1.0},
                                                                                   "grid": [], "n_trials": 1,
                                                                                   "sampler": "tpe", "merge": "dem"}}
    return {"methods": {"base": method, "data_mixing": method, "dem": method}, "cost_ratio": 1.0,
            "chance": {"t": 0.25}, "task_versions": {"t": 1.0}, "seed": 0, "wall_s": 1.0,
            "provenance": {"git_commit": "x"}}


@pytest.mark.parametrize("name,content,expected", [
    ("incomplete", lambda s: json.dumps({**s, "methods": {**s["methods"], "dem": {
        k: v for k, v in s["methods"]["dem"].items() if k != "val_ppl"}}}), "missing 'methods.dem.val_ppl'"),
    ("no_mixing", lambda s: json.dumps({**s, "methods": {"dem": s["methods"]["dem"]}}),
     "missing 'methods.data_mixing'"),
    ("null_val_ppl", lambda s: json.dumps({**s, "methods": {**s["methods"], "dem": {
        **s["methods"]["dem"], "val_ppl": None}}}), "'methods.dem.val_ppl': Input should be a valid number (got null)"),
    ("negative_flops", lambda s: json.dumps({**s, "methods": {**s["methods"], "data_mixing": {
        **s["methods"]["data_mixing"], "train_flops": -1.0}}}), "'methods.data_mixing.train_flops': Input should be "
     "greater than or equal to 0"),
    ("ppl_by_dist_text", lambda s: json.dumps({**s, "methods": {**s["methods"], "base": {
        **s["methods"]["base"], "val_ppl_by_dist": {"a": "2.0"}}}}), "'methods.base.val_ppl_by_dist.a'"),
    ("no_forward_tokens", lambda s: json.dumps({**s, "methods": {**s["methods"], "dem": {
        k: v for k, v in s["methods"]["dem"].items() if k != "search_forward_tokens"}}}),
     "missing 'methods.dem.search_forward_tokens' (or 'selection_forward_tokens')"),
    ("null_cost_ratio", lambda s: json.dumps({**s, "cost_ratio": None}), "'cost_ratio'"),
    ("not_json", lambda s: '{"methods": {', "JSONDecodeError"),
    ("not_an_object", lambda s: "[1, 2]", "missing 'methods'"),
    ("no_summary", None, "no summary.json in it"),
])
def test_report_cli_changes_nothing_when_the_summary_is_bad(tmp_path, capsys, name, content, expected):
    from harness.report.cli import main

    if content is not None:
        (tmp_path / "summary.json").write_text(content(_summary()))
    (tmp_path / "results.csv").write_text("model,val_ppl\nold,1\n")
    (tmp_path / "report.md").write_text("old report")
    before = _digest(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert expected in _one_line(capsys, exit_info.value.code)
    assert _digest(tmp_path) == before


def test_the_summary_contract_accepts_the_renamed_forward_tokens_field():
    """`selection_forward_tokens` (the new name of search_forward_tokens) satisfies the contract too."""
    from harness.report.contract import check_summary

    summary = _summary()
    for name, m in summary["methods"].items():
        summary["methods"][name] = {**{k: v for k, v in m.items() if k != "search_forward_tokens"},
                                    "selection_forward_tokens": 0}
    check_summary(summary)
