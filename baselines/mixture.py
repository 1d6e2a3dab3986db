"""Mixture sampling: draw training sequences so each distribution supplies its weight's share of tokens."""

from __future__ import annotations

import random

from harness.data.tokens import Sequence_


def sample_mixture(pools: dict[str, list[Sequence_]], weights: dict[str, float], n_tokens: int,
                   seed: int) -> list[Sequence_]:
    """Sequences whose token counts split `n_tokens` by `weights` (weights > 0 must sum to 1).

    Each pool is walked in a seeded random order and re-shuffled when exhausted (more epochs), then the
    draws of all distributions are shuffled together so every batch is a mixture.
    """
    rng = random.Random(seed)
    drawn: list[Sequence_] = []
    for name in sorted(weights):
        w = weights[name]
        if w <= 0:
            continue
        pool, target, got = pools[name], w * n_tokens, 0
        order: list[int] = []
        while got < target:
            if not order:
                order = rng.sample(range(len(pool)), len(pool))
            seq = pool[order.pop()]
            drawn.append(seq)
            got += len(seq[0])
    rng.shuffle(drawn)
    return drawn
