"""What LoRA must not break, and the input it must refuse: full fine-tuning keeps the cache keys it had before
LoRA existed (pinned literals), and a LoRA run resumes after a kill like a full one."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.cache import RunCache
from harness.config import validate
from harness.pipeline import load_data, make_context
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
