"""Retention: how much of each single-distribution fine-tune's skill a model keeps, and how much of the base
model's general ability — the columns merging studies report (MergeBench, He et al. 2025; FusionBench).

* In-distribution retention of model m on training distribution d: m's score on d's own held-out task ÷ the
  score of `only_<d>` (the fine-tune on d alone), over the items both answered. Where d has no scored own task,
  or `only_<d>` was not scored, the validation perplexity on d's report slice stands in, as ppl(only_<d>) ÷
  ppl(m) — inverted because lower perplexity is better, so on either basis 1 = as good as the fine-tune and
  above 1 = better. The mean over distributions is the "normalised performance" of merging papers. The
  perplexity-based values are given for every model as well: they need no scoring, so a model left out of it
  still has them.
* General retention: m's mean headline score over the general benchmarks (every higher-is-better scored task
  that is no distribution's own task: MMLU, BBH, HELM-style…) ÷ the base model's; below 1 = forgetting.

Each value has a 95% paired bootstrap CI over items (the same resampled items for numerator and denominator;
means over distributions or tasks resample within each one), from intervals.py. Per-item values are read as
for the other statistics (harness/stats/significance.py: `per_item`, groups pooled).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.stats import intervals as stats
from harness.stats.significance import ALPHA, N_BOOT, finite, per_item

DEFINITION = ("In-distribution retention: a model's score on each training distribution's own held-out task ÷ the "
              "single fine-tune only_<d>'s (where no such task is scored, or only_<d> was not: validation "
              "perplexity on d, ppl(only_<d>) ÷ ppl(model)); 1 = as good as the fine-tune, above 1 = better; the "
              "mean over distributions is the 'normalised performance' of merging papers. General retention: "
              "the mean score over the general benchmarks ÷ the base model's; below 1 = forgetting")
METHOD = ("95% paired percentile-bootstrap CIs over items (10,000 resamples; numerator and denominator resampled "
          "together), items resampled within each distribution or task for the means")
Pair = tuple[np.ndarray, np.ndarray]


def own_tasks(dist: str) -> tuple[str, str]:
    """The names training distribution `dist`'s own held-out task may have, preferred first: the built-in
    `<dist>_mc` (mathqa_mc for mathqa), or a stock lm-eval task named like the distribution (mathqa). Either one
    measures the distribution, not general ability, so neither counts as a general benchmark."""
    return (f"{dist}_mc", dist)


def own_task(dist: str, tasks: Sequence[str]) -> str | None:
    """The scored task that measures `dist` itself, if any (see `own_tasks`)."""
    return next((t for t in own_tasks(dist) if t in tasks), None)


def retention(methods: Mapping[str, Any], samples: Mapping[str, Path], ppl_units: Mapping[str, Any],
              headline: Mapping[str, str], groups: Mapping[str, list[str]], names: Sequence[str], seed: int = 0,
              higher: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """summary["retention"]: per model, in-distribution retention per distribution and its mean, the
    perplexity-based ones, and general retention, each {"value", "ci_low", "ci_high", ...} (value None with a
    "note" where it cannot be computed, e.g. a model left out of scoring). `basis` says per distribution whether
    its in-distribution values are task-based (`task:<name>`) or perplexity-based (`val_ppl`): the same for every
    model, so their means compare like with like."""
    up = [t for t in headline if (higher or {}).get(t, True)]  # a lower-is-better metric is no retention
    scored = [label for label, m in methods.items() if m.get("scored", True) and label in samples]
    items = {label: {t: per_item(samples[label], t, headline[t], groups) for t in up} for label in scored}
    basis = {}
    for d in names:
        task = own_task(d, up)
        basis[d] = f"task:{task}" if task and items.get(f"only_{d}", {}).get(task) else "val_ppl"
    general = [t for t in up if not any(t in own_tasks(d) for d in names)]
    models = {label: _model(label, names, basis, items, ppl_units, general, seed) for label in methods}
    return {"definition": DEFINITION, "method": METHOD, "n_boot": N_BOOT, "alpha": ALPHA, "basis": basis,
            "general_tasks": general, "models": models}


def _model(label: str, names: Sequence[str], basis: Mapping[str, str], items: Mapping[str, dict],
           ppl_units: Mapping[str, Any], general: Sequence[str], seed: int) -> dict[str, Any]:
    in_dist, by_ppl = {}, {}
    for d in names:
        ref = f"only_{d}"
        ppl_pair = _ppl_pair(ppl_units.get(label), ppl_units.get(ref), d)
        by_ppl[d] = ppl_pair
        if basis[d] == "val_ppl":
            in_dist[d] = ppl_pair
        else:
            task = basis[d].removeprefix("task:")
            in_dist[d] = _task_pair(items[label][task] if label in items else None, items[ref][task])
    return {"scored": label in items,
            "in_distribution": {d: _ratio(p, basis[d] == "val_ppl", seed) | {"basis": basis[d]}
                                for d, p in in_dist.items()},
            "in_distribution_mean": _mean(in_dist, [d for d in names if basis[d] == "val_ppl"], seed),
            "in_distribution_ppl": {d: _ratio(p, True, seed) | {"basis": "val_ppl"} for d, p in by_ppl.items()},
            "in_distribution_ppl_mean": _mean(by_ppl, list(names), seed),
            "general": _general(items.get(label), items.get("base"), general, label in items, seed)}


def _task_pair(a: Mapping[tuple[str, int], float] | None, b: Mapping[tuple[str, int], float]) -> Pair | str:
    """(model, reference) scores on the items both answered, or why there is no ratio."""
    if a is None:
        return "not run (model not scored)"
    common = sorted(set(a) & set(b))
    if not common:
        return "no item both models answered"
    x, y = np.array([a[k] for k in common]), np.array([b[k] for k in common])
    return (x, y) if y.sum() != 0 else "undefined: the reference scores 0"


def _ppl_pair(units: Any, ref_units: Any, dist: str) -> Pair | str:
    """(nll(reference) − nll(model), tokens) per report-slice example of `dist`, so that exp(Σx/Σy) =
    ppl(reference) ÷ ppl(model); examples with no scored token add nothing and are dropped."""
    if not units or not ref_units or dist not in units or dist not in ref_units:
        return "no validation perplexity"
    tokens = np.asarray(units[dist]["tokens"], dtype=float)
    if not np.array_equal(tokens, np.asarray(ref_units[dist]["tokens"], dtype=float)):
        return "token counts differ from the reference's: not the same examples"
    keep = tokens > 0
    if not keep.any():
        return "no scored token"
    delta = np.asarray(ref_units[dist]["nll"], dtype=float) - np.asarray(units[dist]["nll"], dtype=float)
    return delta[keep], tokens[keep]


def _entry(result: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    return finite({"value": result["value"], "ci_low": result["low"], "ci_high": result["high"],
                    "n": result["n"], **extra})


def _none(note: str, **extra: Any) -> dict[str, Any]:
    return {"value": None, "ci_low": None, "ci_high": None, "note": note, **extra}


def _ratio(pair: Pair | str, log_ratio: bool, seed: int) -> dict[str, Any]:
    if isinstance(pair, str):
        return _none(pair)
    return _entry(stats.ratio_of_sums(*pair, log_ratio=log_ratio, n_boot=N_BOOT, alpha=ALPHA, seed=seed))


def _mean(pairs: Mapping[str, Pair | str], log_ratio: Sequence[str], seed: int) -> dict[str, Any]:
    """The mean over distributions; none unless every distribution has a value (a partial mean would compare
    models over different distributions)."""
    missing = sorted(d for d, p in pairs.items() if isinstance(p, str))
    if missing or not pairs:
        return _none(f"no value for {', '.join(missing)}" if missing else "no training distribution")
    result = stats.mean_of_ratios(dict(pairs), log_ratio=log_ratio, n_boot=N_BOOT, alpha=ALPHA, seed=seed)
    return _entry(result, n_dists=result["n_parts"])


def _general(a: Mapping[str, dict] | None, base: Mapping[str, dict] | None, tasks: Sequence[str], scored: bool,
             seed: int) -> dict[str, Any]:
    """Mean score over the general tasks ÷ the base model's, over the items both answered per task: each task's
    items weighted 1/(its size), so the sums are sums of task means, and resampled within their task."""
    if not scored:
        return _none("not run (model not scored)")
    if base is None:
        return _none("not run (base not scored)")
    xs, ys, strata, used = [], [], [], []
    for task in tasks:
        common = sorted(set(a[task]) & set(base[task]))
        if not common:
            continue
        xs.append(np.array([a[task][k] for k in common]) / len(common))
        ys.append(np.array([base[task][k] for k in common]) / len(common))
        strata += [task] * len(common)
        used.append(task)
    if not used:
        return _none("no general benchmark scored")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if y.sum() == 0:
        return _none("undefined: the base scores 0", tasks=used)
    result = stats.ratio_of_sums(x, y, strata=np.array(strata), n_boot=N_BOOT, alpha=ALPHA, seed=seed)
    return _entry(result, tasks=used)
