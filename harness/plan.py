"""The plan printed before any training: every run each arm needs (and which the cache already holds), with
estimated tokens, FLOPs and wall time, and the memory and disk they need — so a job that cannot fit stops in
seconds, and a user sees what a sweep will cost before paying for it (`plan_only=true` prints it and exits)."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig

from harness.cost import bytes_human, estimate_disk, estimate_memory, param_count
from harness.errors import HarnessError


class PlanError(HarnessError, RuntimeError):
    """The plan cannot fit this machine (e.g. disk); printed as one line, exit code 2."""


@dataclass(frozen=True)
class Row:
    arm: str
    run: str  # the mixture (or what a placeholder run will be)
    note: str
    tokens: int
    flops: float
    cached: bool


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


def measured_flops_per_second(cache_root: Path, device_type: str, dtype: str) -> tuple[float, str]:
    """Training FLOP/s achieved on this kind of device, from the records of runs already in the cache (median);
    with none yet, from a short matmul probe on the device at an assumed 30% of its peak (said as such)."""
    rates = []
    for record_file in (cache_root / "train").glob("*/record.json"):
        try:
            r = json.loads(record_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        spec = r.get("spec", {})
        if spec.get("device_type") == device_type and spec.get("dtype") == dtype and r.get("train_wall_s"):
            rates.append(r["train_flops"] / r["train_wall_s"])
    if rates:
        return statistics.median(rates), f"measured on {len(rates)} cached run(s)"
    device = torch.device(device_type)
    size = 1024
    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    (a @ a).sum().item()  # warm-up
    start = time.perf_counter()
    for _ in range(4):
        (a @ a).sum().item()
    peak = 4 * 2 * size**3 / (time.perf_counter() - start)
    return 0.3 * peak, "probe: 30% of a measured matmul rate (no run cached yet)"


def run_table(rows: list[Row], flops_per_s: float, how: str) -> str:
    """The plan as a table: every run each arm needs, cached or to train, with estimated time."""
    to_train = [r for r in rows if not r.cached]
    tokens = sum(r.tokens for r in to_train)
    flops = sum(r.flops for r in to_train)
    lines = [f"plan: {len(rows)} training run(s), {len(rows) - len(to_train)} in the cache, {len(to_train)} to train: "
             f"{tokens:,} tokens, {flops:.3g} FLOPs, ≈ {_duration(flops / flops_per_s)} at {flops_per_s:.3g} FLOP/s "
             f"({how})",
             f"  {'needed by':<26} {'run':<36} {'for':<36} {'tokens':>10} {'FLOPs':>9} {'est. time':>9}  status"]
    for r in rows:
        status = "cached" if r.cached else "to train"
        lines.append(f"  {r.arm:<26} {r.run[:36]:<36} {r.note[:36]:<36} {r.tokens:>10,} {r.flops:>9.3g} "
                     f"{_duration(r.flops / flops_per_s):>9}  {status}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
