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
* The chance level of every multiple-choice task (mean over items of 1/number of choices), from the records.
The methods are in harness/stats/intervals.py; this module only gathers and aligns the numbers they need.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from harness.evaluation.results import samples_file
from harness.stats import intervals as stats

N_BOOT = 10_000
ALPHA = 0.05
METHOD = ("95% percentile-bootstrap CIs over items (10,000 resamples); paired differences by paired bootstrap over "
          "the same items (p two-sided, from the bootstrap distribution), McNemar's exact test beside it for 0/1 "
          "metrics; the mean over tasks by a stratified paired bootstrap; perplexity on the report slice (never used "
          "for selection), whole examples resampled within each distribution")


def _records(samples: Path, task: str, filt: str, groups: Mapping[str, list[str]]) -> Iterator[tuple[str, dict]]:
    """(subtask, record) of a task's per-sample records under one filter; a group yields its (nested) subtasks'."""
    if task in groups:
        for sub in groups[task]:
            yield from _records(samples, sub, filt, groups)
        return
    file = samples_file(samples, task)
    if not file.exists():
        return
    for line in file.read_text().splitlines():
        record = json.loads(line)
        if record.get("filter", "none") == filt:
            yield task, record


def per_item(samples: Path, task: str, metric: str, groups: Mapping[str, list[str]]) -> dict[tuple[str, int], float]:
    """{(task, doc_id): value} of one metric for a task, a group pooling its (nested) subtasks' items."""
    name, _, filt = metric.partition(",")
    return {(sub, int(r["doc_id"])): float(r[name]) for sub, r in _records(samples, task, filt or "none", groups)
            if isinstance(r.get(name), (int, float))}


def n_choices(record: Mapping[str, Any]) -> int | None:
    """How many choices a multiple-choice record offered: its `filtered_resps` (or `resps`) hold one
    [log-likelihood, is-greedy] pair per choice. None for a generation (a string) or a single log-likelihood."""
    resps = record.get("filtered_resps", record.get("resps"))
    if not isinstance(resps, list) or len(resps) < 2:
        return None
    for r in resps:
        pair = r[0] if isinstance(r, list) and len(r) == 1 and isinstance(r[0], list) else r  # `resps` nest once more
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, float))
                and not isinstance(pair[0], bool)):
            return None
    return len(resps)


def chance_from_records(samples: Path, task: str, metric: str, groups: Mapping[str, list[str]]) -> float | None:
    """Expected score of uniform guessing: the mean over items of 1/(number of choices), groups pooled as their
    score is. Only for multiple-choice tasks whose headline metric is 0/1 per item (acc, acc_norm, mc1): a
    generation task, or a per-item probability mass such as truthfulqa_mc2's, has no such level (None)."""
    name, _, filt = metric.partition(",")
    inverse = []
    for _, record in _records(samples, task, filt or "none", groups):
        k = n_choices(record)
        if k is None or record.get(name) not in (0, 1):
            return None
        inverse.append(1 / k)
    return sum(inverse) / len(inverse) if inverse else None


def _binary(values: np.ndarray) -> bool:
    return bool(np.all((values == 0) | (values == 1)))


def finite(d: dict[str, Any]) -> dict[str, Any]:
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
            scores[label][task] = finite({"metric": headline[task], "value": float(v.mean()), "low": low,
                                          "high": high, "n": len(v), "reported": reported})
    ppl = {}
    for label, units in ppl_units.items():
        nll, tokens, strata = _pooled(units)
        ppl[label] = finite(stats.ppl_with_ci(nll, tokens, n_boot=N_BOOT, alpha=ALPHA, seed=seed, strata=strata))
        ppl[label]["slice"] = "report"
    paired = {}
    if "data_mixing" in methods:  # every arm's row against mixing (the reference rows base/only_* are not arms);
        for label in methods:      # perplexity pairs even where eval.score_models left a model's tasks unscored
            if label != "data_mixing" and label != "base" and not label.startswith("only_"):
                paired[f"{label} - data_mixing"] = _paired(items.get(label, {}), items.get("data_mixing", {}),
                                                           ppl_units.get(label), ppl_units.get("data_mixing"), seed,
                                                           higher)
    return {"method": METHOD, "n_boot": N_BOOT, "alpha": ALPHA, "scores": scores, "val_ppl": ppl, "paired": paired,
            "chance": chance_levels(samples, headline, groups)}


def chance_levels(samples: Mapping[str, Path], headline: Mapping[str, str],
                  groups: Mapping[str, list[str]]) -> dict[str, float]:
    """{task: chance level} for every scored multiple-choice task, read from the first scored model's records
    (every model answers the same items). Stock tasks have no other source of it: summary["chance"] covers only
    the built-in tasks (from their test sets), and the report prefers that one where both exist."""
    out = {}
    for task, metric in headline.items():
        for folder in samples.values():
            level = chance_from_records(folder, task, metric, groups)
            if level is not None:
                out[task] = level
                break
    return out


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
        tasks[task] = finite({**result, "higher_is_better": higher.get(task, True)})
        if higher.get(task, True):
            pairs[task] = (x, y)
    out: dict[str, Any] = {"tasks": tasks}
    if pairs:
        out["mean"] = finite(stats.paired_mean_over_tasks(pairs, n_boot=N_BOOT, alpha=ALPHA, seed=seed))
        out["mean"]["excluded_lower_is_better"] = sorted(t for t in tasks if t not in pairs)
    if units_a and units_b:
        nll_a, tokens, strata = _pooled(units_a)
        nll_b, _, _ = _pooled(units_b)
        out["val_log_ppl"] = finite(stats.paired_log_ppl_difference(nll_a, nll_b, tokens, n_boot=N_BOOT,
                                                                    alpha=ALPHA, seed=seed, strata=strata))
        out["val_log_ppl"]["slice"] = "report"
    return out
