"""Fixed mixtures that need no search: one training run each. They are the cheap baselines any mixing study starts
from (Raffel et al. 2020, T5 §3.5.2: examples-proportional and temperature-scaled mixing)."""

from __future__ import annotations


def uniform(sizes: dict[str, int]) -> dict[str, float]:
    """Every distribution the same share of tokens."""
    return {n: 1 / len(sizes) for n in sizes}


def proportional(sizes: dict[str, int]) -> dict[str, float]:
    """Shares proportional to each dataset's size (its training rows): what concatenating the data gives."""
    total = sum(sizes.values())
    return {n: s / total for n, s in sizes.items()}


def temperature(sizes: dict[str, int], tau: float) -> dict[str, float]:
    """T5's temperature scaling, pᵢ ∝ sizeᵢ^(1/τ): τ = 1 is proportional, τ → ∞ uniform."""
    scaled = {n: s ** (1 / tau) for n, s in sizes.items()}
    total = sum(scaled.values())
    return {n: v / total for n, v in scaled.items()}
