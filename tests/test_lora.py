"""LoRA fine-tuning (training.method=lora) on the micro presets: real peft, real Trainer, real safetensors.

One CLI run trains every arm's runs as adapters; the tests then check what is in the cache, that an adapter
reopened with `PeftModel.from_pretrained` gives the fine-tune's cached validation perplexity, that DEM's dense
Δ is what the adapter applies, that DEM searches the adapters as one adapter for a linear strategy (and densifies
them for TIES), and that the FLOPs formula matches torch's own count of a training step."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from harness.evaluation.perplexity import perplexity
from harness.models import lora
from harness.models.loading import copy_params, load_model
from harness.pipeline import load_data, make_context
from harness.runs import cost
from harness.runs.cache import RunCache, read_entry
from harness.validate import validate
from tests.conftest import MICRO, compose_cfg

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# the smallest comparison that trains every arm's runs: grid corners (= DEM's fine-tunes) and the 50/50 mixtures
FAST = ["data.distributions=[mathqa, sni]", "eval.tasks=[mathqa_mc]", "eval.limit=4", "budget.train_tokens=4096",
        "dem.compare=[{merge: ties, params: {density: 0.5}}]"]  # dem: searched as adapters; ties: densified


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    args = [*MICRO, *FAST, "training.method=lora", f"output_dir={root / 'out'}", f"cache_dir={root / 'cache'}"]
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, args[:-2]


def test_every_run_of_every_arm_is_a_hash_checked_peft_adapter(lora_run):
    root, args = lora_run
    adapter_params = cost.lora_params(_context(root, args).model_config, 16, TARGETS)
    runs = sorted((root / "cache" / "train").glob("*/record.json"))
    assert len(runs) == 3  # mathqa, sni (DEM's fine-tunes, the grid's corners) and the grid's 50/50 mixture
    for record_file in runs:
        record = read_entry(record_file.parent)  # verifies the sha256 of every file written
        assert {"adapter_model.safetensors", "adapter_config.json"} <= set(record["files"])
        assert not any(f.startswith("model") for f in record["files"])  # no full checkpoint
        assert record["spec"]["training"]["method"] == "lora" and record["method"] == "lora"
        assert record["adapter_params"] == adapter_params
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert {"data_mixing", "dem"} <= set(summary["methods"])


def test_a_tampered_adapter_is_never_used(lora_run):
    root, _ = lora_run
    folder = next((root / "cache" / "train").glob("*/adapter_model.safetensors")).parent
    key = folder.name
    assert RunCache(root / "cache").get("train", key) is not None
    blob = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))
    try:
        assert RunCache(root / "cache").get("train", key) is None
    finally:
        (folder / "adapter_model.safetensors").write_bytes(blob)


def _context(root: Path, args: list[str]):
    cfg = validate(compose_cfg([*args, f"output_dir={root / 'out'}", f"cache_dir={root / 'cache'}"]))
    return make_context(cfg, RunCache(cfg.cache_dir), root / "out", load_data(cfg), build=True)


def test_an_adapter_reloads_with_peft_and_reproduces_the_fine_tune_s_perplexity(lora_run):
    root, args = lora_run
    ctx = _context(root, args)
    run = ctx.cache.get("train", ctx.run_spec({"mathqa": 1.0}).key)
    assert run is not None and lora.is_adapter(run.path)
    model = PeftModel.from_pretrained(load_model(ctx.base.path), str(run.path))
    cached = [json.loads(f.read_text()) for f in (root / "cache" / "ppl").glob("*/record.json")]
    mine = [r for r in cached if r["spec"]["model"] == run.record["key"] and r["spec"]["data"] == ctx.data_spec]
    assert len(mine) == 1
    assert perplexity(model, ctx.val)["val_ppl"] == pytest.approx(mine[0]["val_ppl"], rel=1e-5)
    assert mine[0]["val_ppl"] != pytest.approx(perplexity(load_model(ctx.base.path), ctx.val)["val_ppl"], rel=1e-3)


def test_dem_s_dense_vector_is_what_the_adapter_applies(lora_run):
    root, args = lora_run
    ctx = _context(root, args)
    run = ctx.cache.get("train", ctx.run_spec({"sni": 1.0}).key)
    theta0 = copy_params(load_model(ctx.base.path))
    delta = lora.dense_vector(load_model(ctx.base.path), run.path)
    merged = copy_params(load_model(run.path, base=ctx.base.path))
    assert delta.keys() == theta0.keys() == merged.keys()
    adapted = [k for k in delta if k.rsplit(".", 2)[-2] in TARGETS]
    assert len(adapted) == 7 * 2  # every target module of both layers, nothing else
    for k in delta:
        torch.testing.assert_close(delta[k], merged[k] - theta0[k], rtol=0, atol=1e-6)
        assert (delta[k].abs().sum() > 0) == (k in adapted)


def test_dem_searches_the_adapters_as_one_adapter_and_saves_the_merge_dense_and_as_an_adapter(lora_run):
    root, args = lora_run
    ctx = _context(root, args)
    methods = json.loads((root / "out" / "summary.json").read_text())["methods"]
    dem, ties = methods["dem"]["selected"], methods["dem_ties"]["selected"]
    assert set(dem["vectors"]["mathqa"]) == {"adapter", "sha256", "run"}  # the adapters, no dense vector
    assert ties["vectors"]["mathqa"]["path"].endswith("vector.safetensors")  # TIES needs Δ entries: densified
    searches = [read_entry(f.parent)["spec"] for f in (root / "cache" / "search").glob("*/record.json")]
    assert sorted((s["merge"], "adapters" in s, "vectors" in s) for s in searches) == [
        ("dem", True, False), ("ties", False, True)]
    folder = root / "out" / "models" / "dem"
    dense = perplexity(load_model(folder), ctx.val)["val_ppl"]
    adapter = PeftModel.from_pretrained(load_model(ctx.base.path), str(folder / "adapter"))
    assert perplexity(adapter, ctx.val)["val_ppl"] == pytest.approx(dense, rel=1e-5)
    assert dem["search_score"] == pytest.approx(dense, rel=1e-5)  # the best trial's score is the saved model's
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["r"] == 2 * 16


def test_lora_training_flops_match_torch_s_count_of_a_training_step():
    """The formula (harness/runs/cost.py train_flops) against FlopCounterMode on a micro-shaped Llama (eager attention,
    so the attention matmuls are counted too): full training exactly, LoRA within 5% and never under (the first
    layer's input gradient, which nothing needs, is the overcount)."""
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                         attn_implementation="eager")
    x = torch.randint(0, 512, (4, 64))

    def measured(settings: dict | None) -> float:
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model = lora.wrap(model, settings) if settings else model
        with FlopCounterMode(display=False) as counter:
            model(input_ids=x, labels=x).loss.backward()
        return counter.get_total_flops()

    settings = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": TARGETS}
    full, with_lora = measured(None), measured(settings)
    n = cost.lora_params(config, 4, TARGETS)
    assert full == cost.train_flops(config, x.numel(), 64)
    estimate = cost.train_flops(config, x.numel(), 64, n)
    assert 1.0 <= estimate / with_lora <= 1.05
    assert with_lora / full < 0.8  # frozen weights' gradients are really skipped


def test_lora_memory_counts_gradients_and_adam_for_the_adapters_only():
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    kw = {"param_dtype": torch.float32, "batch_size": 8, "seq_len": 64, "gradient_checkpointing": False,
          "n_vectors": 3, "vector_dtype": torch.float32, "vectors_on": "device"}
    n = cost.lora_params(config, 16, TARGETS)
    assert n == 2 * 16 * (4 * (64 + 64) + 2 * (64 + 128) + (128 + 64))  # q,k,v,o; gate, up; down per layer
    full, adapters = cost.estimate_memory(config, **kw), cost.estimate_memory(config, adapter_params=n, **kw)
    assert adapters["gradients"] == 4 * n and adapters["optimizer"] == 8 * n
    assert adapters["weights"] == full["weights"] + 4 * n and adapters["activations"] == full["activations"]
    assert adapters["train_peak"] < full["train_peak"]


def test_an_adapter_search_is_planned_as_adapters_not_dense_vectors():
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    kw = {"param_dtype": torch.float32, "batch_size": 8, "seq_len": 64, "gradient_checkpointing": False,
          "n_vectors": 3, "vector_dtype": torch.float32, "vectors_on": "device"}
    n = cost.lora_params(config, 4, TARGETS)
    dense = cost.estimate_memory(config, adapter_params=n, **kw)
    adapters = cost.estimate_memory(config, adapter_params=n, search_adapters=True, **kw)
    assert adapters["vectors"] == 2 * 3 * n * 4  # the rank-Σr adapter and the B copies, bounded
    assert adapters["search_peak_device"] - dense["search_peak_device"] == adapters["vectors"] - dense["vectors"]
    assert adapters["vectors"] < dense["vectors"] and adapters["train_peak"] == dense["train_peak"]
    with pytest.raises(ValueError, match="adapter_params"):
        cost.estimate_memory(config, search_adapters=True, **kw)


@pytest.mark.parametrize(("compare", "inputs"), [("[]", "adapters"), ("[{merge: ties}]", "vectors")])
def test_the_plan_counts_no_dense_vector_when_every_search_is_on_adapters(tmp_path, compare, inputs):
    """`dem` alone is searched on the adapters: no vector on disk; a TIES row densifies them, so they count."""
    args = [*MICRO, "training.method=lora", f"dem.compare={compare}", "plan_only=true",
            f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if "search peak" in x)
    assert f"on the device ({inputs} " in line, line
    assert ("vectors 0 B)" in line) == (inputs == "adapters"), line
