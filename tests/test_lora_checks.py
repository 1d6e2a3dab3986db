"""What LoRA must not break, and the input it must refuse: full fine-tuning keeps the cache keys it had before
LoRA existed (pinned literals), an adapter is the same whatever ran before it, and a LoRA run resumes after a kill
like a full one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from harness.cache import RunCache
from harness.config import validate
from harness.data import generate_splits
from harness.models import load_tokenizer
from harness.pipeline import load_data, make_context
from harness.tokens import encode
from harness.training import finetune
from tests.conftest import MICRO, compose_cfg

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


def test_an_adapter_does_not_depend_on_what_ran_before_it_in_the_process(micro_base, tmp_path):
    """peft draws each adapter's A at random before Trainer seeds anything: unseeded, the first run of a process
    differed with what ran before it (a base built or not in this process), so a resumed comparison retrained
    another adapter than the uninterrupted one."""
    base_dir, _, cfg = micro_base
    tok = load_tokenizer(base_dir)
    pools = {"mathqa": [encode(tok, e) for e in generate_splits("mathqa", 0, 40, 1, 1).train]}
    budget = OmegaConf.merge(cfg.budget, {"train_tokens": 512})  # one optimizer step
    settings = {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    adapters = []
    for before in (1, 2):
        torch.manual_seed(before)  # the process's RNG as other work left it
        finetune(tmp_path / str(before), base_dir, pools, {"mathqa": 1.0}, budget, 0, tok.pad_token_id,
                 lora_settings=settings)
        adapters.append(load_file(tmp_path / str(before) / "adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys() and len(adapters[0]) == 2 * 2 * 2  # A, B; q, v; 2 layers
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
