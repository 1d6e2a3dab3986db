"""Distribution vectors Δᵢ = θᵢ − θ₀, stored as safetensors next to the run they come from."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def distribution_vector(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ = θ_tuned − θ_base for every floating-point tensor (both state dicts must share keys and shapes)."""
    if base.keys() != tuned.keys():
        raise ValueError("base and fine-tuned checkpoints have different parameter names")
    return {k: (tuned[k] - base[k]).contiguous() for k in base}


def save_vector(vector: dict[str, torch.Tensor], path: Path) -> None:
    """Write atomically: a crash leaves either no file or a whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(vector, str(tmp))
    tmp.replace(path)


def load_vector(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
