"""One run trained by two processes (torchrun, DDP through Trainer, gloo on the CPU) matches the same run trained
in one: same tokens, steps and effective batch, cost counted for both processes, and the same final loss and
weights up to float reordering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from safetensors.torch import load_file

from harness.data.builtin import generate_splits
from harness.data.tokens import encode
from harness.models.loading import LoadOptions, load_tokenizer
from harness.runs.cache import RunCache
from harness.runs.spec import RunSpec, execute, store_pools, tokenizer_spec
from harness.runs.train_run import main

# Each optimizer step sees the same blocks in both runs (the distributed sampler deals the single-process batch out
# over the ranks) and Trainer normalises the loss by the label tokens of all ranks, so the runs differ only in the
# order of float sums (per-rank partial gradients, then an all-reduce). Measured on the micro run (16 steps): last
# logged loss 1.1e-7 relative apart, mean training loss 6e-9, weights 1.2e-7 at most — while training moved them by
# 2.4e-2 and another seed (other blocks per step) moves the last loss by 0.6-0.8% and the mean loss by 0.07-0.3%.
# The tolerances leave ~1000x for other CPUs' kernels and stay below any real change in what a step trains on.
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-4


def micro_spec(micro_base, cache_root: Path) -> RunSpec:
    """A one-distribution micro run (as pipeline.make_context's run_spec builds it) with its pool in `cache_root`."""
    base_dir, _, cfg = micro_base
    tok = load_tokenizer(base_dir)
    pool = [encode(tok, e) for e in generate_splits("mathqa", 0, 100, 1, 1).train]
    fingerprints = {"mathqa": "test-mathqa-100"}
    pools = store_pools(RunCache(cache_root), tokenizer_spec("micro-test", LoadOptions()), {"mathqa": lambda: pool},
                        fingerprints)
    budget = {k: v for k, v in OmegaConf.to_container(cfg.budget, resolve=True).items() if k != "mode"}
    return RunSpec(base_key="micro-test", base_path=str(base_dir), weights={"mathqa": 1.0},
                   fingerprints=fingerprints, pools=pools, budget=budget, seed=0, device="cpu", dtype="float32")


@pytest.mark.slow
def test_torchrun_two_processes_match_one(micro_base, tmp_path):
    single_root, ddp_root = tmp_path / "single", tmp_path / "ddp"
    spec = micro_spec(micro_base, single_root)
    assert micro_spec(micro_base, ddp_root) == spec  # pools are keyed by base + fingerprint: one spec, two caches
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())

    one = execute(spec, single_root)  # the in-process path every executor uses today
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "harness.runs.train_run", str(spec_file), str(ddp_root)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    entry_path = Path(done.stdout.strip().splitlines()[-1])
    assert entry_path == ddp_root.resolve() / "train" / spec.key  # printed by rank 0, last line
    two = json.loads((entry_path / "record.json").read_text())

    a = one.record
    assert (a["processes"], two["processes"]) == (1, 2)
    for field in ("train_tokens", "loss_tokens", "steps", "effective_batch", "train_flops"):
        assert two[field] == a[field], field
    assert a["effective_batch"] == spec.budget["batch_size"] * spec.budget["grad_accum_steps"]
    assert two["train_device_s"] == pytest.approx(2 * two["train_wall_s"])
    assert two["loss_last"] == pytest.approx(a["loss_last"], rel=LOSS_RTOL)
    assert two["train_loss"] == pytest.approx(a["train_loss"], rel=LOSS_RTOL)
    w1, w2 = load_file(str(one.path / "model.safetensors")), load_file(str(entry_path / "model.safetensors"))
    assert w1.keys() == w2.keys()
    w0 = load_file(str(Path(spec.base_path) / "model.safetensors"))
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    assert diff < WEIGHT_ATOL < moved  # the runs agree far more closely than training moved the weights

    # The plain entry point finds the finished entry and trains nothing (no process group, no Trainer).
    main([str(spec_file), str(ddp_root)])
    assert json.loads((entry_path / "record.json").read_text()) == two


def test_a_batch_that_does_not_split_fails_before_training(micro_base, tmp_path, monkeypatch):
    from harness.runs.train_run import train_run

    spec = micro_spec(micro_base, tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"budget.batch_size=8 does not split over 3 processes"):
        train_run(spec, tmp_path)
    assert not (tmp_path / "train").exists()
