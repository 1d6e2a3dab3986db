"""Simplex grid over mixture weights: every grid point is one full training run of the mixing arm."""

from __future__ import annotations

from itertools import product


def simplex_grid(names: list[str], step: float) -> list[dict[str, float]]:
    """All weight vectors over `names` with entries in {0, step, 2·step, …} that sum to 1."""
    k = round(1 / step)
    points = [c for c in product(range(k + 1), repeat=len(names)) if sum(c) == k]
    points.sort(key=lambda c: tuple(-x for x in c))
    return [{n: c / k for n, c in zip(names, combo, strict=True)} for combo in points]
