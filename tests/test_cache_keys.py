"""Every option that changes a cached result is in that result's key, and no other: each model/data/eval option
is toggled and the keys of the pipeline's entries are compared (computed as a plan computes them, nothing built).

The base is a local folder (`model=hf`), so its key is its files' fingerprint and the options' effect on the
entries downstream shows directly (a tiny base's key holds every model option itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pipeline import Evaluator, load_data, make_context
from harness.runs.cache import RunCache, spec_key
from harness.validate import validate
from tests.conftest import MICRO, compose_cfg

ENTRIES = ("base", "pools", "train", "selection ppl / search", "report ppl", "eval")


def _keys(tmp: Path, base: Path, overrides: list[str]) -> dict[str, str]:
    out = tmp / "out"
    cfg = validate(compose_cfg([*MICRO, "model=hf", f"model.name_or_path={base}", "model.device=cpu",
                                f"output_dir={out}", f"cache_dir={tmp / 'cache'}", *overrides]))
    splits = load_data(cfg)
    ctx = make_context(cfg, RunCache(cfg.cache_dir), out, splits, build=False)
    run = ctx.run_spec({"mathqa": 1.0})
    return {"base": ctx.base.key, "pools": run.pools["mathqa"], "train": run.key,
            "selection ppl / search": spec_key("ppl", ctx.data_spec), "report ppl": spec_key("ppl", ctx.report_spec),
            "eval": spec_key("eval", Evaluator(ctx, splits).specs)}  # any task's entry


@pytest.mark.parametrize(("override", "changed"), [
    ("model.use_fast_tokenizer=false", {"pools", "train", "selection ppl / search", "report ppl", "eval"}),
    ("model.use_safetensors=false", {"pools", "train", "selection ppl / search", "report ppl", "eval"}),
    ("seeds.train=1", {"train"}),
    ("seeds.data=1", {"pools", "train", "selection ppl / search", "report ppl", "eval"}),
    # the built-in generators draw train, val, test, report in turn: a size moves every later slice's items
    ("data.n_train=200", {"pools", "train", "selection ppl / search", "report ppl", "eval"}),
    ("data.n_val=10", {"pools", "train", "selection ppl / search", "report ppl", "eval"}),  # fingerprint: train+val
    ("data.n_report=5", {"report ppl"}),
    ("data.n_test=10", {"report ppl", "eval"}),  # keyed by the items scored (the report slice is drawn after them)
    ("eval.limit=5", {"eval"}),
    ("budget.lr=0.01", {"train"}),
    ("training.method=lora", {"train"}),
    ("training.lora.r=8", set()),  # LoRA's settings do not touch full fine-tuning's keys
])
def test_an_option_changes_exactly_the_keys_of_the_results_it_changes(micro_base, tmp_path, override, changed):
    base = micro_base[0]
    before = _keys(tmp_path / "a", base, [])
    after = _keys(tmp_path / "b", base, [override])
    assert {e for e in ENTRIES if before[e] != after[e]} == changed


def test_evaluation_is_keyed_per_task(micro_base, tmp_path):
    """One task's limit or shots re-keys that task's evaluation entry only; the others are reused."""
    def specs(sub: str, overrides: list[str]) -> dict[str, str]:
        out = tmp_path / sub / "out"
        cfg = validate(compose_cfg([*MICRO, "model=hf", f"model.name_or_path={micro_base[0]}", "model.device=cpu",
                                    f"output_dir={out}", f"cache_dir={tmp_path / sub / 'cache'}", *overrides]))
        splits = load_data(cfg)
        ctx = make_context(cfg, RunCache(cfg.cache_dir), out, splits, build=False)
        return {t: spec_key("eval", spec) for t, spec in Evaluator(ctx, splits).specs.items()}

    before = specs("a", [])
    assert set(before) == {"mathqa_mc", "sni_mc", "cot_mc", "drop_mc", "bbh_object_counting"}
    for sub, override, changed in [("b", "eval.limit={sni_mc: 5}", {"sni_mc"}),
                                   ("c", "eval.num_fewshot={cot_mc: 1}", {"cot_mc"}),
                                   ("d", "eval.gen_kwargs={max_gen_toks: 8}", set())]:  # no generation task here
        after = specs(sub, [override])
        assert {t for t in before if before[t] != after[t]} == changed, override


def test_regmix_selection_randomness_follows_seeds_search_not_seeds_train(micro_base, tmp_path):
    """Every arm's selection randomness follows seeds.search: a `-m seeds.search=…` sweep varies RegMix's proxy
    mixtures as it varies DEM's search, and seeds.train leaves them alone."""
    from baselines.arm import RegMix

    def proxies(i: int, overrides: list[str]) -> list[dict[str, float]]:
        out = tmp_path / str(i)
        cfg = validate(compose_cfg([*MICRO, "model=hf", f"model.name_or_path={micro_base[0]}", "model.device=cpu",
                                    "mixing=regmix", "mixing.proxy_tokens=1024", f"output_dir={out}",
                                    f"cache_dir={out / 'cache'}", *overrides]))
        ctx = make_context(cfg, RunCache(cfg.cache_dir), out, load_data(cfg), build=False)
        return [s.weights for s in RegMix("data_mixing", cfg).proxies(ctx)]

    base = proxies(0, [])
    assert proxies(1, ["seeds.train=1"]) == base
    assert proxies(2, ["seeds.search=1"]) != base
