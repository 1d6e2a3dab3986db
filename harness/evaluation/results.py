"""lm-eval's results as the harness stores them. Every metric lm-eval reports is kept under its lm-eval key without
the default filter: `"acc,none"` → `acc`, `"exact_match,get-answer"` → `exact_match,get-answer`. Its standard error
is the same name plus `_stderr`. Flat keys are `"<task>/<metric>"` and `"<task>/<metric>_stderr"`, for leaf tasks and
groups alike (`mmlu/acc`, `mmlu_abstract_algebra/acc`, `bbh_fewshot/exact_match`). Per-sample records go to one
JSONL per task."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

DEFAULT_FILTER = "none"


UNSAFE = re.compile(r"[^\w.-]")  # characters kept out of sample file names (inline tasks are named `group::task`)


def collect(out: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's results → {task or group: {"metrics", "stderr", "higher_is_better", "version", "n", "num_fewshot",
    "group", "subtasks"}} for every task and group it reports (groups also at every nesting level)."""
    subtasks = {g: list(children) for g, children in (out.get("group_subtasks") or {}).items()}
    groups = set(out.get("groups") or {}) | {g for g, c in subtasks.items() if c}
    n_samples = out.get("n-samples") or {}
    scores = {}
    for name, res in out["results"].items():
        metrics, stderr = _metrics(res)
        leaves = leaf_names(name, subtasks) if name in groups else [name]
        shots = {out.get("n-shot", {}).get(t) for t in leaves}
        scores[name] = {
            "metrics": metrics,
            "stderr": stderr,
            "higher_is_better": dict((out.get("higher_is_better") or {}).get(name, {})),
            "version": _version(out.get("versions", {}).get(name)),
            "n": sum(int(n_samples.get(t, {}).get("effective", 0)) for t in leaves),
            "num_fewshot": shots.pop() if len(shots) == 1 else None,
            "group": name in groups,
            "subtasks": subtasks.get(name, []),
        }
    return scores


def _metrics(res: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Split `"acc,none"`-style keys into metric values and their stderr (`"N/A"` → None)."""
    metrics: dict[str, float] = {}
    stderr: dict[str, float | None] = {}
    for key, value in res.items():
        if "," not in key:  # alias, name, sample_len
            continue
        metric, filt = key.split(",", 1)
        is_stderr = metric.endswith("_stderr")
        name = metric_name(metric.removesuffix("_stderr") if is_stderr else metric, filt)
        if is_stderr:
            stderr[name] = float(value) if isinstance(value, (int, float)) else None
        else:
            metrics[name] = float(value) if isinstance(value, (int, float)) else value
    return metrics, stderr


def metric_name(metric: str, filt: str) -> str:
    """lm-eval's `metric,filter` key, without the default filter: `acc,none` → `acc`."""
    return metric if filt == DEFAULT_FILTER else f"{metric},{filt}"


def leaf_names(name: str, subtasks: Mapping[str, list[str]]) -> list[str]:
    children = subtasks.get(name)
    return [leaf for c in children for leaf in leaf_names(c, subtasks)] if children else [name]


def _version(value: Any) -> float | str | None:
    """Task versions are numbers in YAML but strings for groups ("3.0"): store numbers when they are numbers."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def flat_scores(result: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """`evaluate`'s result as `{"<task>/<metric>": value, "<task>/<metric>_stderr": stderr}` (numbers only)."""
    flat: dict[str, float] = {}
    for task, res in result.items():
        for metric, value in res["metrics"].items():
            if isinstance(value, (int, float)):
                flat[f"{task}/{metric}"] = float(value)
            if isinstance(stderr := res["stderr"].get(metric), (int, float)):
                flat[f"{task}/{metric}_stderr"] = float(stderr)
    return flat


def samples_file(samples_dir: Path, task: str) -> Path:
    """Where a task's per-sample records live: the one place that names the file, for writers and readers alike
    (task names may hold characters a file name should not, e.g. `group::task`)."""
    return samples_dir / f"{UNSAFE.sub('_', task)}.jsonl"


def write_samples(samples_dir: Path, samples: Mapping[str, list[dict[str, Any]]]) -> None:
    """lm-eval's per-sample records, one JSONL per task: doc id, doc, target, raw and filtered responses
    (per-choice log-likelihoods or the generation), each metric's value, and doc/prompt hashes. The prompts
    themselves (`arguments`) are left out: they repeat per choice, and the task config rebuilds them."""
    from lm_eval.utils import handle_non_serializable

    samples_dir.mkdir(parents=True, exist_ok=True)
    for task, records in samples.items():
        path = samples_file(samples_dir, task)
        with path.open("w") as f:
            for record in records:
                row = {k: v for k, v in record.items() if k != "arguments"}
                f.write(json.dumps(row, default=handle_non_serializable, ensure_ascii=False) + "\n")


HEADLINE = ("acc", "exact_match", "f1", "em", "acc_norm", "mc1", "mcc")  # preference order of a task's one number


def headline_metric(result: Mapping[str, Any]) -> str:
    """The one metric a report table shows for a task: the first of HEADLINE it reports (any filter), else its
    first numeric metric. Every metric stays in summary.json; this only picks the column."""
    names = [m for m, v in result["metrics"].items() if isinstance(v, (int, float))]
    for preferred in HEADLINE:
        for name in names:
            if name == preferred or name.startswith(f"{preferred},"):
                return name
    return names[0]

