"""Merge strategies: small pure functions over tensors, registered by name.

A strategy maps one parameter tensor of the base model and the matching distribution-vector tensors
(Δᵢ = θᵢ − θ₀) plus one weight per vector to the merged tensor. The pipeline applies it to every parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MergeFn = Callable[[torch.Tensor, Sequence[torch.Tensor], Sequence[float]], torch.Tensor]
MERGES: dict[str, MergeFn] = {}


def register(name: str) -> Callable[[MergeFn], MergeFn]:
    """Register a merge strategy under `name`; names are unique."""

    def wrap(fn: MergeFn) -> MergeFn:
        if name in MERGES:
            raise ValueError(f"merge strategy '{name}' is already registered")
        MERGES[name] = fn
        return fn

    return wrap


def get_merge(name: str) -> MergeFn:
    if name not in MERGES:
        raise KeyError(f"unknown merge strategy '{name}'; available: {', '.join(sorted(MERGES))}")
    return MERGES[name]


@register("dem")
def dem_merge(base: torch.Tensor, deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """The paper's Distribution Edited Model: θ₀ + Σ wᵢΔᵢ (Ram et al., 2024, arXiv 2406.15570)."""
    out = base.clone()
    for delta, w in zip(deltas, weights, strict=True):
        out.add_(delta, alpha=w)
    return out


def merge_state(base: dict[str, torch.Tensor], vectors: Sequence[dict[str, torch.Tensor]],
                weights: Sequence[float], method: str = "dem") -> dict[str, torch.Tensor]:
    """Apply a registered strategy to every tensor of a state dict."""
    fn = get_merge(method)
    return {k: fn(t, [v[k] for v in vectors], weights) for k, t in base.items()}
