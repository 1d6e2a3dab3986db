"""Linear merges of LoRA adapters without dense vectors (dem/adapter_merge.py) on a tiny random Llama and three
random peft adapters of different ranks and alphas (B non-zero): the registry's dense merge θ₀ + Σ wᵢΔᵢ, the
merged adapter reloaded with `PeftModel.from_pretrained`, and the search session's adapter weighting give the
same logits; `dem-bench-merge` takes adapters as inputs and writes both outputs, and refuses what it cannot do."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from dem.adapter_merge import AdapterMergeError, AdapterSession
from dem.merge import get_strategy, merge_state
from dem.merge_cli import main
from dem.search import WorkerSpec, finished_trials, open_storage, run_worker, search_weights, storage_location
from harness.evaluation.perplexity import perplexity
from harness.models import lora
from harness.models.loading import copy_params, load_model
from harness.runs.cache import sha256_file

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
WEIGHTS = [0.7, -0.4, 1.3]
CASES = [("dem", {}), ("task_arithmetic", {"lambda": 0.6}), ("linear", {"normalize": True})]


def _llama(hidden: int = 32) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=64, tie_word_embeddings=True))


def _adapter(base: Path, folder: Path, r: int, alpha: float, seed: int, targets: list[str] = TARGETS) -> Path:
    """A peft adapter with random A and B (peft starts B at zero, which would make every Δ zero)."""
    model = get_peft_model(load_model(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                        task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    _llama().save_pretrained(root / "base")
    folders = [_adapter(root / "base", root / f"a{i}", r, alpha, i)
               for i, (r, alpha) in enumerate([(2, 4.0), (4, 4.0), (3, 9.0)])]
    return root / "base", folders


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=x).logits


def _dense(base: Path, folders: list[Path], weights: list[float], method: str, params: dict) -> torch.nn.Module:
    """θ₀ + merge(Δ) through the registry, Δ being each adapter's dense update."""
    vectors = [lora.dense_vector(load_model(base), f) for f in folders]
    merged = merge_state(copy_params(load_model(base)), vectors, weights, method, params)
    model = load_model(base)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(merged[k])
    return model


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("method,params", CASES)
def test_dense_merge_merged_adapter_and_search_session_give_the_same_logits(adapters, tmp_path, method, params):
    base, folders = adapters
    x = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    strategy = get_strategy(method)
    resolved = strategy.resolve(params, 3)
    dense = _logits(_dense(base, folders, WEIGHTS, method, resolved), x)
    assert _close(dense, _logits(load_model(base), x)) > 1e-2  # the adapters really change the model

    session = AdapterSession(load_model(base), folders, strategy, resolved)
    session.set([0.1, 0.2, 0.3], resolved)  # a trial before: nothing accumulates
    session.set(WEIGHTS, resolved)
    assert _close(_logits(session.model, x), dense) <= 1e-5
    session.save_adapter(tmp_path / "merged")
    config = json.loads((tmp_path / "merged" / "adapter_config.json").read_text())
    assert config["r"] == 2 + 4 + 3 and config["lora_alpha"] == 9 and len(config["target_modules"]) == 2 * 7
    reloaded = PeftModel.from_pretrained(load_model(base), str(tmp_path / "merged"))
    assert _close(_logits(reloaded, x), dense) <= 1e-5
    assert _close(_logits(session.merged_model(), x), dense) <= 1e-5


def test_an_adapter_search_finds_what_the_dense_model_scores(adapters):
    """search_weights drives the AdapterSession like a MergeSession; its best trial's perplexity is the dense
    merge's at those weights."""
    base, folders = adapters
    g = torch.Generator().manual_seed(2)
    val = {n: (x, x) for n, x in (("a", torch.randint(0, 128, (2, 16), generator=g)),
                                  ("b", torch.randint(0, 128, (2, 16), generator=g)))}
    session = AdapterSession(load_model(base), folders, get_strategy("dem"), {})
    names = ["d0", "d1", "d2"]
    result = search_weights(session, names, {}, val, n_trials=4, sampler="random", weight_range=[0.0, 1.0],
                            searched={}, seed=0, storage=None, study_name="adapters")
    best = [result["weights"][n] for n in names]
    dense = perplexity(_dense(base, folders, best, "dem", {}), val)["val_ppl"]
    assert result["n_trials"] == 4 and math.isfinite(result["val_ppl"])
    assert result["val_ppl"] == pytest.approx(dense, rel=1e-5)


def test_a_search_worker_rebuilds_the_adapter_session_from_hash_checked_files(adapters, tmp_path):
    """dem.search_workers > 1 with adapters: each worker opens θ₀ and the adapters named in its spec, refusing an
    adapter whose bytes are not the ones the run recorded."""
    base, folders = adapters
    x = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    val = {"a": (x, x)}
    hashes = [sha256_file(f / "adapter_model.safetensors") for f in folders]
    spec = WorkerSpec(base=str(base), vectors=[], sha256=hashes, adapters=[str(f) for f in folders], merge="dem",
                      fixed={}, names=["d0", "d1", "d2"], storage=storage_location("journal", tmp_path, tmp_path),
                      study_name="s", n_trials=2, sampler="random", weight_range=[0.0, 1.0], searched={}, seed=0,
                      trials=2)
    assert len(run_worker(spec, val)) == 2
    first = finished_trials(optuna.load_study(study_name="s", storage=open_storage(spec.storage, repair=False)))[0]
    w = [first.params[f"w_{n}"] for n in spec.names]
    assert first.value == pytest.approx(perplexity(_dense(base, folders, w, "dem", {}), val)["val_ppl"], rel=1e-5)
    with pytest.raises(AdapterMergeError, match="sha256 differs"):
        run_worker(dataclasses.replace(spec, sha256=["0" * 64] * 3), val)


def test_non_linear_strategies_and_mismatched_adapters_are_refused(adapters, tmp_path):
    base, folders = adapters
    with pytest.raises(AdapterMergeError, match="'ties' is not"):
        AdapterSession(load_model(base), folders, get_strategy("ties"), get_strategy("ties").resolve({}, 3))
    fewer = _adapter(base, tmp_path / "qv", 2, 4.0, 7, ["q_proj", "v_proj"])
    with pytest.raises(AdapterMergeError, match="adapt different modules"):
        AdapterSession(load_model(base), [folders[0], fewer], get_strategy("dem"), {})


def _merge(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code


def test_merge_cli_takes_adapters_and_writes_a_dense_checkpoint_and_one_adapter(adapters, tmp_path, capsys):
    base, folders = adapters
    out, out_adapter = tmp_path / "dense", tmp_path / "adapter"
    main(["--base", str(base), *[a for i, f in enumerate(folders) for a in ("--model", f"d{i}={f}")],
          *[a for i, w in enumerate(WEIGHTS) for a in ("--weight", f"d{i}={w}")],
          "--out", str(out), "--out-adapter", str(out_adapter)])
    assert capsys.readouterr().out.strip().endswith(f"{out.resolve()} and {out_adapter.resolve()}")
    expected = copy_params(_dense(base, folders, WEIGHTS, "dem", {}))
    written = load_file(str(out / "model.safetensors"))
    for k, v in expected.items():
        torch.testing.assert_close(written[k], v, rtol=0, atol=1e-6)
    x = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(3))
    reloaded = PeftModel.from_pretrained(load_model(base), str(out_adapter))
    assert _close(_logits(reloaded, x), _logits(load_model(out), x)) <= 1e-5
    assert json.loads((out_adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        base.resolve())

    ties = tmp_path / "ties"  # a non-linear strategy densifies the adapters
    main(["--base", str(base), "--model", f"a={folders[0]}", "--model", f"b={folders[1]}", "--method", "ties",
          "--param", "density=0.5", "--out", str(ties)])
    vectors = [lora.dense_vector(load_model(base), f) for f in folders[:2]]
    expected = merge_state(copy_params(load_model(base)), vectors, [1.0, 1.0], "ties", {"density": 0.5})
    written = load_file(str(ties / "model.safetensors"))
    for k, v in expected.items():
        torch.testing.assert_close(written[k], v, rtol=0, atol=1e-6)


def test_merge_cli_refuses_adapter_merges_it_cannot_do_with_one_line(adapters, tmp_path, capsys):
    base, folders = adapters
    fewer = _adapter(base, tmp_path / "qv", 2, 4.0, 7, ["q_proj", "v_proj"])
    torch.manual_seed(1)
    _llama(hidden=48).save_pretrained(tmp_path / "wide_base")
    wide = _adapter(tmp_path / "wide_base", tmp_path / "wide", 2, 4.0, 8)
    full = tmp_path / "full"
    load_model(base).save_pretrained(full)
    models = ["--model", f"a={folders[0]}", "--model", f"b={folders[1]}"]
    good = ["--base", str(base), *models]
    adapter_out = ["--out-adapter", str(tmp_path / "o")]
    cases = [
        ([*good, "--method", "ties", *adapter_out], "--out-adapter: merge 'ties' is not θ₀ + Σ cᵢΔᵢ"),
        ([*good, "--method", "linear", "--param", "normalize=false", *adapter_out], "merge 'linear' is not"),
        ([*good, "--model", f"c={fewer}", *adapter_out], "adapt different modules"),
        ([*good, "--model", f"c={full}", *adapter_out], f"--model c={full} is a full checkpoint"),
        ([*good, "--model", f"c={wide}", *adapter_out], "adapters were trained on different bases"),
        (["--base", str(base), "--model", f"c={wide}", *adapter_out], f"{wide}: does not fit the base model"),
        ([*good, "--model", f"c={wide}", "--out", str(tmp_path / "o")], f"c: adapter {wide} does not fit the base"),
        (good, "no output: give --out DIR"),
        ([*good, "--out", str(tmp_path / "o"), "--out-adapter", str(tmp_path / "o" / "a")], "lies inside --out"),
        ([*good, "--out", str(tmp_path / "o"), "--export-mergekit", str(tmp_path / "m.yaml")],
         "adapter inputs are not exported"),
    ]
    capsys.readouterr()
    for args, expected in cases:
        assert _merge(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (args, err)
    assert not (tmp_path / "o").exists()
