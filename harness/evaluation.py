"""lm-eval bridge: held-out built-in test sets become local lm-eval tasks (YAML + JSONL, tasks as data),
and in-memory models are scored with `lm_eval.simple_evaluate` — no hub, no model re-load."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from harness.data import Example

log = logging.getLogger(__name__)

TASK_VERSION = 1.0  # bump when a task's prompt format changes; stored beside every score


def write_tasks(task_dir: Path, test_sets: dict[str, list[Example]]) -> None:
    """One multiple-choice task per test set: `<task>.jsonl` holds the docs, `<task>.yaml` says how to read them."""
    task_dir.mkdir(parents=True, exist_ok=True)
    for task, examples in test_sets.items():
        data = task_dir / f"{task}.jsonl"
        with data.open("w") as f:
            for ex in examples:
                f.write(json.dumps({"context": ex.mc_context, "choices": list(ex.mc_choices),
                                    "target": ex.mc_target}) + "\n")
        spec = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{context}}",
            "doc_to_choice": "choices",
            "doc_to_target": "target",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            "metadata": {"version": TASK_VERSION},
        }
        (task_dir / f"{task}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def chance_level(examples: list[Example]) -> float:
    """Expected accuracy of uniform guessing (tasks mix 2- and 5-way items, so it is not simply 1/k)."""
    return sum(1 / len(ex.mc_choices) for ex in examples) / len(examples)


def evaluate(model: Any, tokenizer: Any, task_dir: Path, tasks: list[str], limit: int | None,
             batch_size: int) -> dict[str, dict[str, float]]:
    """Score an in-memory model on local tasks; returns {task: {acc, acc_stderr, version, n}}."""
    from lm_eval import simple_evaluate  # heavy import, kept off the CLI's start-up path
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # Passing an in-memory model is deliberate; lm-eval warns about it on every call, and logs each task at INFO.
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    out = simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False,
                          bootstrap_iters=1000, verbosity="WARNING")
    scores = {}
    for task in tasks:
        res = out["results"][task]
        scores[task] = {
            "acc": float(res["acc,none"]),
            "acc_stderr": float(res["acc_stderr,none"]),
            "version": float(out["versions"][task]),
            "n": int(out["n-samples"][task]["effective"]),
        }
    return scores
