"""RegMix-style mixture search (Liu et al. 2024, "RegMix: Data Mixture as Regression for Language Model
Pre-training", arXiv 2407.01492): train K short proxy runs on seeded Dirichlet-sampled mixtures, regress their
validation loss on the mixture weights, predict the loss of many simulated mixtures, and train one full run on the
mixture predicted best (RegMix averages the top predictions; so do we).

The regressor is LightGBM, as RegMix's best-performing one; RegMix fits it on hundreds of proxies, we have tens,
so the trees are made small (few leaves, a minimum of 2 samples per leaf) to stay usable with so few points."""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr


def dirichlet_mixtures(names: list[str], k: int, seed: int, alpha: float = 1.0) -> list[dict[str, float]]:
    """K seeded mixtures from a symmetric Dirichlet(α): α = 1 covers the simplex uniformly."""
    rng = np.random.default_rng(seed)
    return [dict(zip(names, (float(v) for v in row), strict=True)) for row in rng.dirichlet([alpha] * len(names), k)]


def _regressor(n_samples: int, seed: int):
    import lightgbm as lgb

    return lgb.LGBMRegressor(n_estimators=200, learning_rate=0.05, num_leaves=4,
                             min_child_samples=max(2, n_samples // 8), min_child_weight=0.0, subsample=1.0,
                             random_state=seed, deterministic=True, force_row_wise=True, n_jobs=1, verbose=-1)


def held_out_rank_correlation(x: np.ndarray, y: np.ndarray, seed: int, folds: int = 5) -> float:
    """Spearman ρ between held-out predictions and the proxies' measured losses, by k-fold cross-validation:
    how well the regression ranks mixtures it did not see (RegMix reports the same)."""
    n = len(y)
    order = np.random.default_rng(seed).permutation(n)
    predicted = np.empty(n)
    for f in range(min(folds, n)):
        test = order[f::min(folds, n)]
        train = np.setdiff1d(order, test)
        model = _regressor(len(train), seed).fit(x[train], y[train])
        predicted[test] = model.predict(x[test])
    rho = spearmanr(predicted, y).statistic
    return float(rho) if np.isfinite(rho) else 0.0


def predict_best(names: list[str], mixtures: list[dict[str, float]], losses: list[float], seed: int,
                 candidates: int = 100_000, top_k: int = 100, alpha: float = 1.0) -> dict:
    """Fit the regression on (mixture → loss), score `candidates` simulated mixtures, and return the mean of the
    `top_k` predicted best (RegMix's rule, steadier than the single argmin), with the fit's held-out ρ."""
    x = np.array([[m[n] for n in names] for m in mixtures])
    y = np.array(losses)
    model = _regressor(len(y), seed).fit(x, y)
    rng = np.random.default_rng(seed + 1)
    simulated = rng.dirichlet([alpha] * len(names), candidates)
    predicted = model.predict(simulated)
    top = simulated[np.argsort(predicted, kind="stable")[:top_k]].mean(axis=0)
    top = top / top.sum()
    return {"weights": dict(zip(names, (float(v) for v in top), strict=True)),
            "predicted_loss": float(model.predict(top[None, :])[0]),
            "held_out_spearman": held_out_rank_correlation(x, y, seed), "proxies": len(y),
            "regressor": "lightgbm.LGBMRegressor", "candidates": candidates, "top_k": top_k}
