"""The plan printed before any training: what the runs will need in memory and on disk, so a job that cannot fit
stops in seconds instead of after hours of training."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from harness.cost import bytes_human, estimate_disk, estimate_memory, param_count
from harness.errors import HarnessError


class PlanError(HarnessError, RuntimeError):
    """The plan cannot fit this machine (e.g. disk); printed as one line, exit code 2."""


def resources(config: PretrainedConfig, *, dtype: torch.dtype, batch_size: int, seq_len: int,
              gradient_checkpointing: bool, n_vectors: int, vector_dtype: torch.dtype, vectors_on: str,
              n_new_checkpoints: int, n_new_vectors: int, cache_root: Path) -> dict[str, Any]:
    """Peak memory of one training run and of the coefficient search, and the disk the new cache entries need
    against the disk free under cache_root. Raises PlanError when the disk would not fit."""
    memory = estimate_memory(config, param_dtype=dtype, batch_size=batch_size, seq_len=seq_len,
                             gradient_checkpointing=gradient_checkpointing, n_vectors=n_vectors,
                             vector_dtype=vector_dtype, vectors_on=vectors_on)
    disk = estimate_disk(config, checkpoint_dtype=dtype, n_checkpoints=n_new_checkpoints, n_vectors=n_new_vectors,
                         vector_dtype=vector_dtype)
    probe = cache_root
    while not probe.exists():  # the cache folder may not exist yet: measure the disk it will live on
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    plan = {"params": param_count(config), "memory": memory, "disk": disk, "disk_free": free}
    if disk["total"] > free:
        raise PlanError(f"not enough disk under {cache_root}: the plan writes {bytes_human(disk['total'])} "
                        f"({n_new_checkpoints} checkpoints, {n_new_vectors} vectors) but {bytes_human(free)} is "
                        "free; free space or point cache_dir elsewhere")
    return plan


def describe(plan: dict[str, Any], device: str) -> str:
    """One paragraph for the log."""
    m, d = plan["memory"], plan["disk"]
    return (f"plan: {plan['params'] / 1e6:.1f}M parameters on {device}; training peak ≈ "
            f"{bytes_human(m['train_peak'])} (weights {bytes_human(m['weights'])}, gradients "
            f"{bytes_human(m['gradients'])}, AdamW {bytes_human(m['optimizer'])}, activations "
            f"{bytes_human(m['activations'])}); search peak ≈ {bytes_human(m['search_peak_device'])} on the device "
            f"(vectors {bytes_human(m['vectors'])}); new disk {bytes_human(d['total'])} (checkpoints "
            f"{bytes_human(d['checkpoints'])}, vectors {bytes_human(d['vectors'])}) of "
            f"{bytes_human(plan['disk_free'])} free")
