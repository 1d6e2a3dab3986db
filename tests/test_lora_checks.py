"""What LoRA must not break, and the input it must refuse: full fine-tuning keeps the cache keys it had before
LoRA existed (pinned literals), an adapter is the same whatever ran before it, and a LoRA run resumes after a kill
like a full one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

import harness.__main__ as cli
import harness.config
from harness.config import CONF_DIR
from harness.data.builtin import generate_splits
from harness.data.tokens import encode
from harness.models.loading import load_tokenizer
from harness.pipeline import load_data, make_context
from harness.runs.cache import RunCache
from harness.runs.trainer import finetune
from harness.validate import validate
from tests.conftest import MICRO, compose_cfg
from tests.test_bad_input import _one_line, tree
from tests.test_models import gpt2_checkpoint
from tests.test_resume import _diff, _strip

LORA = [*MICRO, "training.method=lora"]
# the smallest LoRA comparison that trains every arm's runs (as tests/test_lora.py): mathqa, sni, their 50/50 mixture
FAST = ["data.distributions=[mathqa, sni]", "eval.tasks=[mathqa_mc]", "eval.limit=4", "budget.train_tokens=4096"]
LLAMA_LAYERS = "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"  # the micro Llama's, lm_head tied
DEFAULT_TARGETS = "'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'"
# (overrides, the one line's text): {gpt2} is a local GPT-2 checkpoint, also the model preset `gpt2`
BAD_INPUT = [
    (["training.lora.r=0"], "training.lora.r=0: must be a positive integer (the adapters' rank)"),
    (["training.lora.r=-1"], "training.lora.r=-1: must be a positive integer (the adapters' rank)"),
    (["training.lora.r=2.5"], "training.lora.r=2.5: must be an integer, not a decimal number"),
    (["training.lora.r=x"], "training.lora.r=x: must be an integer, not a string"),
    (["training.lora.r=null"], "training.lora.r=null: must be an integer, not null"),
    (["training.lora.target_modules=[q_proj, foo]"],
     f"training.lora.target_modules: in model=micro, 'foo' names no layer; the linear layers LoRA can adapt there: "
     f"{LLAMA_LAYERS}"),
    (["training.lora.target_modules=[foo, bar]"], "in model=micro, 'foo', 'bar' name no layer;"),
    (["training.lora.target_modules=[q_proj, input_layernorm]"],
     "in model=micro, 'input_layernorm' names model.layers.0.input_layernorm (LlamaRMSNorm), not a linear layer;"),
    (["training.lora.target_modules=[embed_tokens]"],
     "in model=micro, 'embed_tokens' names model.embed_tokens (Embedding), not a linear layer;"),
    (["training.lora.target_modules=[v_proj, lm_head]"],
     "in model=micro, 'lm_head' names lm_head, whose weight is tied to model.embed_tokens.weight "
     "(tie_word_embeddings): its adapter would be trained on one layer and merged into both;"),
    (["model=hf", "model.name_or_path={gpt2}"],  # GPT-2's layers are c_attn, c_proj, c_fc (Conv1D)
     f"in model=hf, {DEFAULT_TARGETS} name no layer; the linear layers LoRA can adapt there: c_attn, c_proj, c_fc"),
    (["mixing=regmix", "mixing.proxies=4", "mixing.proxy_tokens=1024", "mixing.proxy_model=gpt2"],
     f"in mixing.proxy_model=gpt2, {DEFAULT_TARGETS} name no layer;"),
    (["-m", "training.lora.target_modules=[q_proj],[q_prj]"],
     "sweep job 2 of 2 (training.lora.target_modules=[q_prj]): training.lora.target_modules: in model=micro, "
     "'q_prj' names no layer;"),
]

# Computed on e25d253, the commit before LoRA was merged (45e5d7c "Merge branch 'lora18'"), with this test's code:
# the default micro comparison's tiny base and two of its training runs, nothing built.
PRE_LORA_KEYS = {"base": "31f40f954bc97eb3", "mathqa": "4cc2c13c6eaf4e4a", "mathqa+sni": "f586860acfccbfe5"}


def _plan_keys(tmp: Path, overrides: list[str]) -> dict[str, str]:
    cfg = validate(compose_cfg([*MICRO, "model.device=cpu", f"output_dir={tmp / 'out'}",
                                f"cache_dir={tmp / 'cache'}", *overrides]))
    ctx = make_context(cfg, RunCache(cfg.cache_dir), tmp / "out", load_data(cfg), build=False)
    return {"base": ctx.base.key, "mathqa": ctx.run_spec({"mathqa": 1.0}).key,
            "mathqa+sni": ctx.run_spec({"mathqa": 0.5, "sni": 0.5}).key}


@pytest.mark.parametrize("overrides", [[], ["training.method=full"], ["training.method=full", "training.lora.r=4"]],
                         ids=["default", "method=full", "full with lora settings"])
def test_full_fine_tuning_keeps_the_cache_keys_it_had_before_lora(tmp_path, overrides):
    """A cache filled before LoRA is reused as it is. If a deliberate change elsewhere (a DATA_VERSION or
    TRAIN_VERSION bump) moves these keys, re-pin them; a LoRA change must never move them."""
    assert _plan_keys(tmp_path, overrides) == PRE_LORA_KEYS
    assert not (tmp_path / "cache").exists()  # keys computed as a plan computes them: nothing built


def _adapter(folder: Path, micro_base, gradient_checkpointing: bool = False) -> dict[str, torch.Tensor]:
    """Four optimizer steps of LoRA on the micro base (r=4 on q_proj and v_proj): the saved adapter's tensors."""
    base_dir, _, cfg = micro_base
    tok = load_tokenizer(base_dir)
    pools = {"mathqa": [encode(tok, e) for e in generate_splits("mathqa", 0, 40, 1, 1).train]}
    budget = OmegaConf.merge(cfg.budget, {"train_tokens": 2048})  # the first step warms up at lr 0
    settings = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    finetune(folder, base_dir, pools, {"mathqa": 1.0}, budget, 0, tok.pad_token_id,
             gradient_checkpointing=gradient_checkpointing, lora_settings=settings)
    adapter = load_file(folder / "adapter_model.safetensors")
    assert len(adapter) == 2 * 2 * 2  # A and B, on q_proj and v_proj, in 2 layers
    return adapter


def test_an_adapter_does_not_depend_on_what_ran_before_it_in_the_process(micro_base, tmp_path):
    """peft draws each adapter's A at random before Trainer seeds anything: unseeded, the first run of a process
    differed with what ran before it (a base built or not in this process), so a resumed comparison retrained
    another adapter than the uninterrupted one."""
    adapters = []
    for before in (1, 2):
        torch.manual_seed(before)  # the process's RNG as other work left it
        adapters.append(_adapter(tmp_path / str(before), micro_base))
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])


def test_gradient_checkpointing_trains_the_same_adapter(micro_base, tmp_path):
    """Checkpointed blocks behind a frozen embedding get no gradient under reentrant checkpointing unless the
    input requires one (models.lora.wrap asks for it; transformers' default is non-reentrant anyway): the adapters
    train, exactly as without checkpointing (model.gradient_checkpointing is not in a run's key)."""
    plain, checkpointed = _adapter(tmp_path / "plain", micro_base), _adapter(tmp_path / "gc", micro_base, True)
    assert any(k for k in plain if "lora_B" in k and plain[k].abs().sum() > 0)  # B starts at 0: it was trained
    assert all(torch.equal(plain[k], checkpointed[k]) for k in plain)


def test_lora_params_count_gpt2_s_conv1d_layers_as_peft_trains_them():
    """GPT-2's projections are transformers' Conv1D, not nn.Linear: the plan's adapter count (FLOPs, memory) must
    see them, as peft does."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.models import lora
    from harness.runs import cost

    config = GPT2Config(n_embd=48, n_layer=2, n_head=2, vocab_size=100, n_positions=64, bos_token_id=0,
                        eos_token_id=0)
    targets = ["c_attn", "c_proj", "c_fc"]
    wrapped = lora.wrap(GPT2LMHeadModel(config), {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": targets})
    assert cost.lora_params(config, 4, targets) == lora.trainable_params(wrapped) == 2 * 4 * (
        (48 + 144) + (48 + 48) + (48 + 192) + (192 + 48))  # per block: attn c_attn, c_proj; mlp c_fc, c_proj


@pytest.fixture(scope="module")
def conf_with_gpt2(tmp_path_factory) -> tuple[Path, Path]:
    """The shipped config tree plus a `gpt2` model preset: a local GPT-2 checkpoint (its layers are not *_proj)."""
    root = tmp_path_factory.mktemp("gpt2conf")
    gpt2 = gpt2_checkpoint(root / "gpt2")
    conf = root / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "model" / "gpt2.yaml").write_text(f"preset: gpt2\nsource: hf\nname_or_path: {gpt2}\n")
    return conf, gpt2


@pytest.mark.parametrize("overrides,expected", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_lora_input_is_one_line_before_anything_exists(conf_with_gpt2, tmp_path, monkeypatch, capsys,
                                                           overrides, expected):
    conf, gpt2 = conf_with_gpt2
    monkeypatch.setattr(harness.config, "CONF_DIR", conf)  # presets, the proxy's preset
    monkeypatch.setattr(cli, "CONF_DIR", conf)  # what the CLI composes from
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{gpt2}", str(gpt2)) for a in overrides]
    monkeypatch.setattr(sys, "argv", ["dem-bench", *LORA, *args, f"output_dir={tmp_path / 'out'}",
                                      f"cache_dir={tmp_path / 'cache'}"])
    monkeypatch.setattr(cli, "app", lambda: pytest.fail("bad input reached the Hydra app"))
    before = (tree(tmp_path), tree(conf))
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    line = _one_line(capsys, exit_info.value.code)
    assert expected in line, line
    assert (tree(tmp_path), tree(conf)) == before  # no output folder, no cache entry, nothing touched


def test_the_real_cli_names_an_unknown_target_module_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", *LORA, "training.lora.target_modules=[q_proj, qproj]",
                           f"output_dir={tmp_path / 'o'}", f"cache_dir={tmp_path / 'c'}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("dem-bench: error: training.lora.target_modules: in model=micro, 'qproj' names "
                                  f"no layer; the linear layers LoRA can adapt there: {LLAMA_LAYERS}"), proc.stderr
    assert list(tmp_path.iterdir()) == []


def _lora_cmd(out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "harness", *LORA, *FAST, f"output_dir={out}", f"cache_dir={cache}"]


@pytest.mark.slow
def test_a_lora_run_killed_in_its_second_fine_tune_resumes_to_the_uninterrupted_summary(tmp_path):
    reference = subprocess.run(_lora_cmd(tmp_path / "ref", tmp_path / "ref-cache"), capture_output=True, text=True,
                               timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]

    out, cache = tmp_path / "out", tmp_path / "cache"
    proc = subprocess.Popen(_lora_cmd(out, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    misses = []
    for line in proc.stdout:
        if "cache miss train/" in line:
            misses.append(line.split("cache miss train/")[1].split()[0])
            if len(misses) == 2:  # kill as soon as the second fine-tune's build folder exists: a fine-tune of the
                # micro model can finish within a second, so a fixed sleep may land after it (a CI failure)
                deadline = time.monotonic() + 30
                while not list(cache.glob(f"train/.{misses[1]}.tmp-*")) and time.monotonic() < deadline:
                    time.sleep(0.005)
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first, second = misses
    assert (cache / "train" / first / "adapter_model.safetensors").is_file()  # the first adapter was finished
    assert not (cache / "train" / second).exists() and list(cache.glob("train/.*.tmp-*"))  # the second was not

    final = subprocess.run(_lora_cmd(out, cache), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    log = final.stdout + final.stderr
    assert f"cache hit train/{first}" in log  # the finished adapter is reused, not retrained
    retrained = [line.split("cache miss train/")[1].split()[0] for line in log.splitlines()
                 if "cache miss train/" in line]
    assert retrained[0] == second and first not in retrained and len(retrained) == 2, retrained
    assert not list(cache.rglob(".*.tmp-*")), "the dead build's debris is cleaned up"

    ref = (tmp_path / "ref" / "summary.json").read_text().replace(str(tmp_path / "ref-cache"), "<cache>")
    got = (out / "summary.json").read_text().replace(str(cache), "<cache>")
    differences = _diff(_strip(json.loads(ref)), _strip(json.loads(got)))
    assert differences == [], "\n".join(differences[:20])
