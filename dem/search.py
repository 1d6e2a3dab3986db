"""Coefficient search: Optuna proposes merge weights (and any searched strategy parameter); each trial moves
one live model to that merge in place and runs one forward pass over the validation tokens.

Nothing is reloaded or written per trial. For strategies of the form θ₀ + Σ cᵢΔᵢ the model is moved by
θ ← θ + Σ (c′ᵢ − cᵢ) Δᵢ with fused foreach ops and no copy of θ₀ is kept; other strategies (sign consensus)
rebuild from a kept θ₀. What does not depend on the weights (trim masks, random drops) is computed once per
value of the parameters it reads. The study lives in a storage, so an interrupted search resumes.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from dem.merge import Params, Strategy, tensor_generator
from harness.perplexity import nll

log = logging.getLogger(__name__)

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, space: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed, space: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed, space: optuna.samplers.CmaEsSampler(seed=seed),
    "qmc": lambda seed, space: optuna.samplers.QMCSampler(seed=seed),
    "gp": lambda seed, space: optuna.samplers.GPSampler(seed=seed),
    "grid": lambda seed, space: optuna.samplers.GridSampler(space, seed=seed),
}


def storage_for(spec: str, cache_folder: Path, output_dir: Path) -> optuna.storages.BaseStorage | str | None:
    """`journal` (default): a journal file in the cache, resumable, no server; `memory`; `sqlite`: study.db in
    the output folder; anything with `://` is an RDB URL, so several processes or machines can share a study."""
    if "://" in spec:
        return spec
    if spec == "memory":
        return None
    if spec == "sqlite":
        output_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{output_dir / 'study.db'}"
    cache_folder.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(cache_folder / "study.journal")))


class MergeSession:
    """A live model plus distribution vectors; `set(weights, params)` makes the model that merge in place."""

    def __init__(self, model: torch.nn.Module, vectors: list[dict[str, torch.Tensor]], strategy: Strategy,
                 params: Params, seed: int = 0) -> None:
        self.model, self.strategy, self.seed = model, strategy, seed
        named = list(model.named_parameters())  # a tied tensor appears once here
        self.names = [n for n, _ in named]
        self.tensors = [p.data for _, p in named]
        self.raw = [[v[n] for n in self.names] for v in vectors]
        self.cache_key: str | None = None
        self.active = self.raw  # the vectors the current coefficients refer to
        self.coeffs = [0.0] * len(vectors)  # the model starts as θ₀: all coefficients zero
        linear = strategy.coefficients is not None and strategy.coefficients([1.0] * len(vectors), params) is not None
        # Only strategies that are not θ₀ + Σ cᵢΔᵢ rebuild from θ₀ each trial, so only they keep a copy of it.
        self.theta0 = None if linear else [t.clone() for t in self.tensors]

    def _vectors(self, params: Params) -> list[list[torch.Tensor]]:
        """Δ after the strategy's weight-independent step, recomputed only when its parameters change."""
        if not self.strategy.prepare:
            return self.raw
        key = json.dumps({k: params[k] for k in self.strategy.prepare_params}, sort_keys=True)
        if key != self.cache_key:
            per_tensor = [self.strategy.prepare([v[j] for v in self.raw], params, tensor_generator(self.seed, name))
                          for j, name in enumerate(self.names)]
            self.cache_key, self.prepared = key, [[pt[i] for pt in per_tensor] for i in range(len(self.raw))]
        return self.prepared

    @torch.no_grad()
    def set(self, weights: list[float], params: Params) -> None:
        vecs = self._vectors(params)
        if self.theta0 is not None:
            for j, tensor in enumerate(self.tensors):
                tensor.copy_(self.strategy.combine(self.theta0[j], [v[j] for v in vecs], weights, params))
            return
        coeffs = self.strategy.coefficients(weights, params)
        if vecs is not self.active:  # the prepared vectors changed: step back to θ₀ first
            for vec, c in zip(self.active, self.coeffs, strict=True):
                if c:
                    torch._foreach_add_(self.tensors, vec, alpha=-c)
            self.coeffs, self.active = [0.0] * len(vecs), vecs
        for vec, new, old in zip(vecs, coeffs, self.coeffs, strict=True):
            if new != old:
                torch._foreach_add_(self.tensors, vec, alpha=new - old)
        self.coeffs = list(coeffs)


def search_weights(session: MergeSession, names: list[str], fixed: Params,
                   val: dict[str, tuple[torch.Tensor, torch.Tensor]], *, n_trials: int, sampler: str,
                   weight_range: list[float], searched: dict[str, tuple[float, float]], seed: int,
                   storage: Any, study_name: str, grid_points: int = 5, prune_fraction: float = 0.0,
                   on_trial: Callable[[int, dict[str, float], float], None] | None = None) -> dict[str, Any]:
    """Minimise pooled validation perplexity over weights ∈ weight_range (and `searched` parameters).

    `fixed` are the strategy's resolved parameters; a searched one is overwritten per trial (one shared value
    for per-model parameters).
    With prune_fraction > 0 each trial first scores that fraction of every validation set and Optuna's median
    pruner may stop it there. Returns the best weights and parameters, its perplexity, the trials completed and
    pruned, and the forward tokens all trials used. Leaves the session's model holding the best merge.
    """
    low, high = weight_range
    heads = {n: max(1, math.ceil(len(x) * prune_fraction)) for n, (x, _) in val.items()}
    cuts = ([{n: (0, heads[n]) for n in val}, {n: (heads[n], len(val[n][0])) for n in val}] if prune_fraction
            else [{n: (0, len(val[n][0])) for n in val}])
    space = {f"w_{n}": [low + (high - low) * i / (grid_points - 1) for i in range(grid_points)] for n in names}
    space |= {f"p_{k}": [a + (b - a) * i / (grid_points - 1) for i in range(grid_points)]
              for k, (a, b) in searched.items()}

    def params_of(values: dict[str, float]) -> Params:
        p = dict(fixed)
        for key in searched:
            per_model = isinstance(p[key], list)
            p[key] = [values[f"p_{key}"]] * len(names) if per_model else values[f"p_{key}"]
        return p

    def objective(trial: optuna.Trial) -> float:
        w = [trial.suggest_float(f"w_{n}", low, high) for n in names]
        values = {f"p_{k}": trial.suggest_float(f"p_{k}", a, b) for k, (a, b) in searched.items()}
        session.set(w, params_of(values))
        total, count, tokens = 0.0, 0, 0
        for part in range(len(cuts)):  # [first slice, rest] when pruning, else [everything]
            for n, (x, y) in val.items():
                a, b = cuts[part][n]
                s, c = nll(session.model, x[a:b], y[a:b])
                total, count, tokens = total + s, count + c, tokens + int(x[a:b].numel())
            trial.set_user_attr("forward_tokens", tokens)
            if part == 0 and len(cuts) > 1:
                trial.report(math.exp(total / count), step=0)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        ppl = math.exp(total / count)
        if on_trial:
            on_trial(trial.number, dict(zip(names, w, strict=True)), ppl)
        return ppl

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5) if prune_fraction else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=SAMPLERS[sampler](seed, space),
                                pruner=pruner, direction="minimize", load_if_exists=True)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = sum(t.state in finished for t in study.trials)
    if done:
        log.info("search %s: resuming, %d of %d trials already done", study_name, done, n_trials)
    if n_trials > done:
        study.optimize(objective, n_trials=n_trials - done, show_progress_bar=True)
    trials = [t for t in study.trials if t.state in finished]
    best = study.best_trial
    weights = {n: best.params[f"w_{n}"] for n in names}
    best_params = params_of({k: v for k, v in best.params.items() if k.startswith("p_")})
    session.set([weights[n] for n in names], best_params)
    return {
        "weights": weights,
        "params": best_params,
        "val_ppl": best.value,
        "n_trials": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "search_forward_tokens": sum(t.user_attrs.get("forward_tokens", 0) for t in trials),
    }
