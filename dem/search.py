"""Coefficient search: Optuna proposes merge weights, each trial is one forward pass over the validation
sets (no training), and the study lives in a storage so an interrupted search resumes where it stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch

from dem.merge import merge_state
from harness.perplexity import perplexity

log = logging.getLogger(__name__)

SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
}


def storage_for(url: str | None, folder: Path) -> optuna.storages.BaseStorage | str:
    """An RDB URL as given, or by default a journal file in `folder` (no database server, survives a crash)."""
    if url:
        return url
    folder.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(folder / "study.journal"))
    return optuna.storages.JournalStorage(backend)


@torch.no_grad()
def apply_weights(model: torch.nn.Module, base: dict[str, torch.Tensor], vectors: list[dict[str, torch.Tensor]],
                  weights: list[float], method: str) -> None:
    """Write the merged weights into `model` in place (no new model, no disk)."""
    merged = merge_state(base, vectors, weights, method)
    for name, param in model.named_parameters():
        param.copy_(merged[name])


def search_weights(model: torch.nn.Module, base: dict[str, torch.Tensor],
                   vectors: dict[str, dict[str, torch.Tensor]], val: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   *, method: str, n_trials: int, sampler: str, weight_range: list[float], seed: int,
                   storage: optuna.storages.BaseStorage | str, study_name: str,
                   on_trial: Callable[[int, dict[str, float], float], None] | None = None) -> dict[str, Any]:
    """Minimise pooled validation perplexity of θ₀ + merge(Δ, w) over w ∈ weight_range^n.

    Returns the best weights, its perplexity, trials completed, and the forward tokens all trials used.
    Leaves `model` holding the best merge.
    """
    names = list(vectors)
    vecs = [vectors[n] for n in names]
    low, high = weight_range
    tokens_per_trial = sum(int(x.numel()) for x, _ in val.values())

    def objective(trial: optuna.Trial) -> float:
        w = [trial.suggest_float(f"w_{n}", low, high) for n in names]
        apply_weights(model, base, vecs, w, method)
        ppl = perplexity(model, val)["val_ppl"]
        if on_trial:
            on_trial(trial.number, dict(zip(names, w, strict=True)), ppl)
        return ppl

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage, sampler=SAMPLERS[sampler](seed),
                                direction="minimize", load_if_exists=True)
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    if done:
        log.info("search %s: resuming, %d of %d trials already done", study_name, done, n_trials)
    if n_trials > done:
        study.optimize(objective, n_trials=n_trials - done, show_progress_bar=True)
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial
    weights = {n: best.params[f"w_{n}"] for n in names}
    apply_weights(model, base, vecs, [weights[n] for n in names], method)
    return {
        "weights": weights,
        "val_ppl": best.value,
        "n_trials": len(completed),
        "search_forward_tokens": len(completed) * tokens_per_trial,
    }
