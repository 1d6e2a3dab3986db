"""Distribution vectors Δᵢ = θᵢ − θ₀, stored as safetensors with their sha256 so that a vector that changed on
disk (corruption, a half-copied cache, a file swapped by hand) is never merged.

Δ is always computed in fp32 and may be stored in a narrower dtype (bf16 halves the bytes a search trial reads);
the record of each stored vector says what that cast cost, as the max abs error on its largest tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.errors import HarnessError
from harness.runs.cache import sha256_file


class VectorIntegrityError(HarnessError, RuntimeError):
    """A stored vector's bytes do not match the hash recorded when it was written."""


def distribution_vector(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Δ = θ_tuned − θ_base for every tensor (both must share names and shapes), in fp32: it holds the difference
    of two bf16 or fp16 weights exactly in practice, where their own dtype rounds it for any pair more than a factor
    of two apart."""
    if base.keys() != tuned.keys():
        raise ValueError("base and fine-tuned checkpoints have different parameter names")
    return {k: (tuned[k].float() - base[k].float()).contiguous() for k in base}


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` → "bfloat16", the spelling the config and the manifest use."""
    return str(dtype).removeprefix("torch.")


def save_vector(vector: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | str | None = None) -> dict[str, Any]:
    """Write Δ cast to `dtype` (None: as given) atomically (a crash leaves no file or a whole one).

    Returns the manifest record: `sha256` of the file, the stored `dtype`, and `max_abs_error` — max |Δ − stored Δ|
    on the largest tensor, named in `error_tensor` — so a merge's tolerance can be tied to what the cast lost.
    """
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    stored = {k: v.to(dtype).contiguous() if dtype else v.contiguous() for k, v in vector.items()}
    largest = max(vector, key=lambda k: vector[k].numel())
    ref = vector[largest].float() if vector[largest].element_size() < 4 else vector[largest]
    # exact: a value and its rounding to a narrower float differ by a number representable in the wider one
    error = (ref - stored[largest].to(ref.dtype)).abs().max().item() if ref.numel() else 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(stored, str(tmp))
    tmp.replace(path)
    return {"sha256": sha256_file(path), "dtype": dtype_name(stored[largest].dtype), "max_abs_error": error,
            "error_tensor": largest}


def _check(path: Path, sha256: str) -> None:
    actual = sha256_file(path)
    if actual != sha256:
        raise VectorIntegrityError(f"{path}: sha256 {actual[:12]}… does not match the manifest's {sha256[:12]}…; "
                                   "refusing to merge it (delete that cache entry to rebuild it)")


def load_vector(path: Path, sha256: str, *, dtype: torch.dtype | None = None, device: torch.device | str = "cpu",
                pin_memory: bool = False) -> dict[str, torch.Tensor]:
    """Load one vector only if its bytes hash to `sha256`, optionally cast to `dtype`, placed on `device` and (CUDA
    builds, CPU device) page-locked one tensor at a time. For a search, prefer `load_vectors`: separately loaded
    vectors are merged through a staging buffer instead of one addmv straight from the vectors."""
    _check(path, sha256)
    vector = load_file(str(path), device=str(device))
    for k, v in vector.items():
        v = v.to(dtype) if dtype else v
        vector[k] = v.pin_memory() if pin_memory else v
    return vector


def load_vectors(paths: list[Path], sha256s: list[str], *, dtype: torch.dtype | None = None,
                 device: torch.device | str = "cpu", pin_memory: bool = False) -> list[dict[str, torch.Tensor]]:
    """Load n vectors (each hash-checked before any is read) into one [n, *shape] buffer per tensor, returned as n
    dicts of row views: the memory of n separate loads, laid out so that MergeSession updates θ with one addmv per
    tensor over all vectors instead of a pass per vector.

    `dtype` defaults to the dtype the vectors are stored in (they must agree). `pin_memory` (CUDA builds, CPU
    device) page-locks the buffers as they are allocated, so a search streaming vectors from host memory
    (`MergeSession(vectors_on="cpu")`) copies them to the GPU asynchronously, without a second host copy.
    """
    for path, sha in zip(paths, sha256s, strict=True):
        _check(path, sha)
    stacks: dict[str, torch.Tensor] = {}
    for i, path in enumerate(paths):  # one file mapped at a time: the peak is the buffers plus one vector
        with safe_open(str(path), framework="pt") as f:
            if i and set(f.keys()) != set(stacks):
                raise ValueError(f"{path}: its tensors differ from {paths[0]}'s; vectors must share parameter names")
            for name in f.keys():
                t = f.get_tensor(name)
                if not i:
                    stacks[name] = torch.empty((len(paths), *t.shape), dtype=dtype or t.dtype, device=device,
                                               pin_memory=pin_memory)
                elif t.shape != stacks[name].shape[1:] or (dtype is None and t.dtype != stacks[name].dtype):
                    raise ValueError(f"{path}: {name!r} is {t.dtype} {tuple(t.shape)} but {paths[0]} has it as "
                                     f"{stacks[name].dtype} {tuple(stacks[name].shape[1:])}; pass dtype= to load "
                                     "vectors stored in different dtypes together")
                stacks[name][i].copy_(t)
    return [{name: stack[i] for name, stack in stacks.items()} for i in range(len(paths))]
