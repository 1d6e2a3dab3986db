"""Per-run statistics from the per-sample results: one comparison run is one sample, so every score gets a
confidence interval, and DEM is compared with data mixing *paired* over the same items.

* Each model's headline score per task: the mean of its per-item values (lm-eval's `log_samples`), with a 95%
  percentile-bootstrap CI over items; a group (mmlu, bbh) pools its subtasks' items.
* `<row> - data_mixing` for `dem` and every `dem_<merge>` (and every other row against mixing): the paired
  difference per task over the same items (paired bootstrap; for 0/1 metrics also McNemar's exact test), and the
  difference of the mean over tasks (stratified paired bootstrap: items resampled within each task).
* Validation perplexity with a CI, and the paired log-perplexity difference, on the *report* slice (held out from
  every selection, so an arm that tried more candidates gains nothing from it): whole examples are resampled
  within each distribution, so every replicate pools the distributions in the observed proportions.
The methods are in harness/stats.py; this module only gathers and aligns the numbers they need.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness import stats
from harness.evaluation import samples_file

N_BOOT = 10_000
ALPHA = 0.05
METHOD = ("95% percentile-bootstrap CIs over items (10,000 resamples); paired differences by paired bootstrap over "
          "the same items (p two-sided, from the bootstrap distribution), McNemar's exact test beside it for 0/1 "
          "metrics; the mean over tasks by a stratified paired bootstrap; perplexity on the report slice (never used "
          "for selection), whole examples resampled within each distribution")


def per_item(samples: Path, task: str, metric: str, groups: Mapping[str, list[str]]) -> dict[tuple[str, int], float]:
    """{(task, doc_id): value} of one metric for a task, a group pooling its (nested) subtasks' items."""
    if task in groups:
        out: dict[tuple[str, int], float] = {}
        for sub in groups[task]:
            out |= per_item(samples, sub, metric, groups)
        return out
    name, _, filt = metric.partition(",")
    file = samples_file(samples, task)
    if not file.exists():
        return {}
    values = {}
    for line in file.read_text().splitlines():
        record = json.loads(line)
        if record.get("filter", "none") == (filt or "none") and isinstance(record.get(name), (int, float)):
            values[(task, int(record["doc_id"]))] = float(record[name])
    return values


def _binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """NaN (an undefined CI, e.g. from one seed) as None: summary.json stays strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def statistics(methods: Mapping[str, Any], samples: Mapping[str, Path], ppl_units: Mapping[str, Any],
               headline: Mapping[str, str], groups: Mapping[str, list[str]], seed: int = 0,
               higher: Mapping[str, bool] | None = None) -> dict[str, Any]:
    """CIs for every model's headline scores and validation perplexity, and paired tests of each row against the
    data-mixing arm (per task, mean over tasks, perplexity). `ppl_units`: per model, the report slice's
    per-example {distribution: {"nll": [...], "tokens": [...]}}. `higher`: per task, whether its headline metric
    is higher-is-better (lm-eval's flag); lower-is-better tasks are tested per task but left out of the mean."""
    higher = {t: (higher or {}).get(t, True) for t in headline}
    items = {label: {t: per_item(samples[label], t, m, groups) for t, m in headline.items()} for label in samples}
    scores: dict[str, dict[str, Any]] = {}
    for label, by_task in items.items():
        scores[label] = {}
        for task, values in by_task.items():
            if not values:
                continue
            v = np.array(list(values.values()))
            reported = methods[label]["scores"].get(f"{task}/{headline[task]}")
            low, high = stats.bootstrap_ci(v, n_boot=N_BOOT, alpha=ALPHA, seed=seed)
            scores[label][task] = _finite({"metric": headline[task], "value": float(v.mean()), "low": low,
                                           "high": high, "n": len(v), "reported": reported})
    ppl = {}
    for label, units in ppl_units.items():
        nll, tokens, strata = _pooled(units)
        ppl[label] = _finite(stats.ppl_with_ci(nll, tokens, n_boot=N_BOOT, alpha=ALPHA, seed=seed, strata=strata))
        ppl[label]["slice"] = "report"
    paired = {}
    if "data_mixing" in items:  # every arm's row against mixing (the reference rows base/only_* are not arms)
        for label in items:
            if label != "data_mixing" and label != "base" and not label.startswith("only_"):
                paired[f"{label} - data_mixing"] = _paired(items[label], items["data_mixing"],
                                                           ppl_units.get(label), ppl_units.get("data_mixing"), seed,
                                                           higher)
    return {"method": METHOD, "n_boot": N_BOOT, "alpha": ALPHA, "scores": scores, "val_ppl": ppl, "paired": paired}


def _pooled(units: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distribution's per-example (nll, tokens) in one array each, and each example's distribution."""
    nll = np.concatenate([np.asarray(u["nll"], dtype=float) for u in units.values()])
    tokens = np.concatenate([np.asarray(u["tokens"], dtype=float) for u in units.values()])
    strata = np.concatenate([np.full(len(u["nll"]), name) for name, u in units.items()])
    return nll, tokens, strata


def _paired(a: Mapping[str, dict], b: Mapping[str, dict], units_a: Any, units_b: Any, seed: int,
            higher: Mapping[str, bool]) -> dict[str, Any]:
    """`a − b` per task over the items both have, over the mean of the higher-is-better tasks, and in
    validation log-perplexity (report slice)."""
    tasks, pairs = {}, {}
    for task in a:
        common = sorted(set(a[task]) & set(b.get(task, {})))
        if not common:
            continue
        x = np.array([a[task][k] for k in common])
        y = np.array([b[task][k] for k in common])
        result = stats.paired_difference(x, y, n_boot=N_BOOT, alpha=ALPHA, seed=seed)
        if _binary(x) and _binary(y):
            result["mcnemar_p"] = stats.mcnemar(x, y)["p_value"]
        tasks[task] = _finite({**result, "higher_is_better": higher.get(task, True)})
        if higher.get(task, True):
            pairs[task] = (x, y)
    out: dict[str, Any] = {"tasks": tasks}
    if pairs:
        out["mean"] = _finite(stats.paired_mean_over_tasks(pairs, n_boot=N_BOOT, alpha=ALPHA, seed=seed))
        out["mean"]["excluded_lower_is_better"] = sorted(t for t in tasks if t not in pairs)
    if units_a and units_b:
        nll_a, tokens, strata = _pooled(units_a)
        nll_b, _, _ = _pooled(units_b)
        out["val_log_ppl"] = _finite(stats.paired_log_ppl_difference(nll_a, nll_b, tokens, n_boot=N_BOOT,
                                                                     alpha=ALPHA, seed=seed, strata=strata))
        out["val_log_ppl"]["slice"] = "report"
    return out
