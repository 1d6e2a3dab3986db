"""Distribution vectors Δᵢ = θᵢ − θ₀, stored as safetensors with their sha256 so that a vector that changed on
disk (corruption, a half-copied cache, a file swapped by hand) is never merged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class VectorIntegrityError(RuntimeError):
    """A stored vector's bytes do not match the hash recorded when it was written."""


def distribution_vector(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ = θ_tuned − θ_base for every tensor (both must share names and shapes)."""
    if base.keys() != tuned.keys():
        raise ValueError("base and fine-tuned checkpoints have different parameter names")
    return {k: (tuned[k] - base[k]).contiguous() for k in base}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_vector(vector: dict[str, torch.Tensor], path: Path) -> str:
    """Write atomically (a crash leaves no file or a whole one); return the file's sha256 for the manifest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(vector, str(tmp))
    tmp.replace(path)
    return sha256_file(path)


def load_vector(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    """Load a vector only if its bytes hash to `sha256`."""
    actual = sha256_file(path)
    if actual != sha256:
        raise VectorIntegrityError(f"{path}: sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…; "
                                   "refusing to merge it (delete that cache entry to rebuild it)")
    return load_file(str(path))
