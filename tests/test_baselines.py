"""The mixing baselines' pieces on synthetic data with known answers: fixed mixtures, Dirichlet proxies, and the
RegMix regression finding the optimum of a loss surface it only sees through a few dozen points."""

from __future__ import annotations

import numpy as np
import pytest

from baselines import heuristics, regmix

SIZES = {"mathqa": 30_000, "sni": 1_000_000, "cot": 70_000}


def test_fixed_mixtures():
    assert heuristics.uniform(SIZES) == pytest.approx({n: 1 / 3 for n in SIZES})
    prop = heuristics.proportional(SIZES)
    assert prop["sni"] == pytest.approx(1_000_000 / 1_100_000) and sum(prop.values()) == pytest.approx(1)
    assert heuristics.temperature(SIZES, 1.0) == pytest.approx(prop)  # τ = 1 is proportional
    hot = heuristics.temperature(SIZES, 1e6)
    assert hot == pytest.approx(heuristics.uniform(SIZES), abs=1e-4)  # τ → ∞ is uniform
    t2 = heuristics.temperature(SIZES, 2.0)
    assert prop["mathqa"] < t2["mathqa"] < 1 / 3  # in between: small datasets up-weighted


def test_dirichlet_proxies_are_seeded_mixtures():
    names = ["a", "b", "c"]
    first = regmix.dirichlet_mixtures(names, 12, seed=3)
    assert first == regmix.dirichlet_mixtures(names, 12, seed=3)
    assert first != regmix.dirichlet_mixtures(names, 12, seed=4)
    assert all(set(m) == set(names) and sum(m.values()) == pytest.approx(1) and min(m.values()) >= 0 for m in first)


def _loss(m: dict[str, float]) -> float:
    """A smooth loss surface whose best mixture is (0.6, 0.3, 0.1)."""
    best = {"a": 0.6, "b": 0.3, "c": 0.1}
    return 1.0 + sum((m[k] - best[k]) ** 2 for k in best)


def test_regmix_recovers_the_optimum_of_a_known_surface():
    names = ["a", "b", "c"]
    proxies = regmix.dirichlet_mixtures(names, 48, seed=0)
    fit = regmix.predict_best(names, proxies, [_loss(m) for m in proxies], seed=0, candidates=20_000, top_k=50)
    w = fit["weights"]
    assert sum(w.values()) == pytest.approx(1)
    assert np.abs(np.array([w["a"], w["b"], w["c"]]) - [0.6, 0.3, 0.1]).max() < 0.15
    assert _loss(w) < min(_loss(m) for m in proxies) + 0.01  # as good as the best proxy, or better
    assert fit["held_out_spearman"] > 0.7  # ranks unseen mixtures well on a smooth surface
    assert fit == regmix.predict_best(names, proxies, [_loss(m) for m in proxies], seed=0, candidates=20_000,
                                      top_k=50)  # deterministic


def test_rank_correlation_is_near_zero_for_noise():
    rng = np.random.default_rng(0)
    x = rng.dirichlet([1, 1, 1], 40)
    rho = regmix.held_out_rank_correlation(x, rng.normal(size=40), seed=0)
    assert -0.5 < rho < 0.5
