"""HELM-style metrics for multiple-choice tasks (Liang et al. 2022: accuracy, calibration, robustness), added to
`evaluate`'s result dict: `ece` (calibration, from the log-likelihoods already computed), and with robustness on,
`<metric>_robust` (every metric of a second pass with each test prompt perturbed) and `robustness_drop` =
acc − acc_robust. See `add_calibration` and `perturbed_prompts`."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from harness.evaluation import perturb as pt
from harness.evaluation.results import DEFAULT_FILTER, leaf_names

log = logging.getLogger(__name__)

ECE_BINS = 10  # equal-width confidence bins of the expected calibration error (Guo et al. 2017; HELM uses 10)


ROBUST_SUFFIX = "__robust"  # samples_dir/<task>__robust.jsonl: per-sample records of the perturbed pass


def is_multiple_choice(task: Any) -> bool:
    """lm-eval's `output_type: multiple_choice`: one log-likelihood per choice, scored by argmax."""
    return getattr(task, "OUTPUT_TYPE", None) == "multiple_choice"


def calibration_items(task: Any, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(confidence, correct) per item of a multiple-choice task, from its per-sample records; None if not MC.

    Confidence is the softmax, over the offered choices, of the raw summed log-likelihoods (`filtered_resps`), at
    the argmax — the prediction lm-eval's `acc` scores. Not `acc_norm`'s length-normalised ones: a sum over fewer
    characters is not a probability. The target index comes from the record (a choice string is looked up in the
    task's choices; multiple-input tasks such as winogrande keep it in `doc_to_text`). A task whose own `acc` is not
    that argmax correctness (truthfulqa_mc2's is a probability mass; several correct choices) gets None, with a note.
    """
    from harness.stats.intervals import choice_confidence

    rows = [r for r in records if r.get("filter", DEFAULT_FILTER) == DEFAULT_FILTER]
    if not is_multiple_choice(task) or not rows:
        return None
    golds = [_gold_index(task, r) for r in rows]
    lls = [[float(resp[0]) for resp in r["filtered_resps"]] for r in rows]
    if any(g is None or not 0 <= g < len(ll) for g, ll in zip(golds, lls, strict=True)):
        log.info("%s: no single target index per item; no ece", task.task_name)
        return None
    confidence, correct = choice_confidence(lls, golds)
    if any("acc" in r and float(r["acc"]) != float(c) for r, c in zip(rows, correct, strict=True)):
        log.info("%s: its acc is not argmax correctness of the choice log-likelihoods; no ece", task.task_name)
        return None
    return confidence, correct


def _gold_index(task: Any, record: Mapping[str, Any]) -> int | None:
    """The target choice index of one record, as lm-eval's process_results resolves it (None: not one index)."""
    if getattr(task, "multiple_input", 0):
        gold = task.doc_to_text(record["doc"])
    elif isinstance(gold := record["target"], str):
        choices = task.doc_to_choice(record["doc"])
        gold = choices.index(gold) if gold in choices else None
    return gold if isinstance(gold, (int, np.integer)) and not isinstance(gold, bool) else None


def add_calibration(result: dict[str, dict[str, Any]], samples: Mapping[str, Sequence[Mapping[str, Any]]],
                    leaves: Mapping[str, Any]) -> None:
    """Add `ece` (ECE_BINS bins, no stderr) to every MC task, and to every group whose leaves all have it, over the
    pooled items (so a group's ece is not the mean of its subtasks', as its `acc` may be)."""
    from harness.stats.intervals import expected_calibration_error

    items = {name: got for name, task in leaves.items() if (got := calibration_items(task, samples.get(name, [])))}
    subtasks = {name: res["subtasks"] for name, res in result.items()}
    for name, res in result.items():
        members = leaf_names(name, subtasks) if res["group"] else [name]
        if members and all(m in items for m in members):
            confidence = np.concatenate([items[m][0] for m in members])
            correct = np.concatenate([items[m][1] for m in members])
            _put(res, "ece", expected_calibration_error(confidence, correct, n_bins=ECE_BINS), None, False)


def _put(res: dict[str, Any], metric: str, value: float, stderr: float | None, higher_is_better: bool) -> None:
    res["metrics"][metric] = float(value)
    res["stderr"][metric] = stderr
    res["higher_is_better"][metric] = higher_is_better


def robust_targets(loaded: Sequence[Any]) -> list[Any]:
    """What the perturbed pass scores: each loaded MC task, each group whose leaves are all perturbable (so lm-eval
    aggregates `acc_robust` as it does `acc`), else a mixed group's perturbable leaves on their own."""
    from lm_eval.api.group import Group

    targets: list[Any] = []
    for obj in loaded:
        leaves = obj.get_all_tasks() if isinstance(obj, Group) else [obj]
        able = [t for t in leaves if _perturbable(t)]
        targets += [obj] if isinstance(obj, Group) and len(able) == len(leaves) else able
    return targets


def _perturbable(task: Any) -> bool:
    """A MC task with one prompt per doc. Multiple-input tasks (winogrande) put the choices into the context, so
    perturbing their prompt would perturb the choices: they are left out, as are generation tasks."""
    if is_multiple_choice(task) and not getattr(task, "multiple_input", 0):
        return True
    log.info("%s: not a single-prompt multiple-choice task; no robustness score", task.task_name)
    return False


@contextlib.contextmanager
def perturbed_prompts(tasks: Iterable[Any], seed: int, kinds: Sequence[str]) -> Iterator[None]:
    """Within the block each task's test prompt is perturbed — the test doc's own text, nothing else.

    lm-eval 0.4.13 builds a MC request as `fewshot_context(doc)` = description + exemplars (each rendered with
    `doc_to_text(exemplar, fewshot doc_to_text)` + delimiter + answer) + `doc_to_text(doc)` + target delimiter, with
    one continuation `target_delimiter + choice` per choice (`construct_requests`). So `doc_to_text` is wrapped to
    perturb only the doc that `fewshot_context` is rendering (by identity): exemplars, description, delimiters and
    choices stay as they are, and `process_results` (outside fewshot_context) sees the original text. The wrappers
    are instance attributes shadowing the methods, removed on exit, so the objects score unperturbed again after.
    """
    patched = list(tasks)
    for task in patched:
        _wrap(task, seed, kinds)
    try:
        yield
    finally:
        for task in patched:
            del task.fewshot_context, task.doc_to_text


def _wrap(task: Any, seed: int, kinds: Sequence[str]) -> None:
    if {"fewshot_context", "doc_to_text"} & set(vars(task)):
        raise RuntimeError(f"{task.task_name}: its prompt methods are already wrapped")
    render, text_of = task.fewshot_context, task.doc_to_text
    rendering: list[Any] = [None]  # the test doc fewshot_context is rendering now

    def fewshot_context(*args: Any, **kwargs: Any) -> Any:
        rendering[0] = kwargs["doc"] if "doc" in kwargs else args[0]
        try:
            return render(*args, **kwargs)
        finally:
            rendering[0] = None

    def doc_to_text(doc: Any, *args: Any, **kwargs: Any) -> Any:
        text = text_of(doc, *args, **kwargs)
        return pt.perturb(text, seed, kinds) if doc is rendering[0] and isinstance(text, str) else text

    task.fewshot_context, task.doc_to_text = fewshot_context, doc_to_text


def add_robustness(result: dict[str, dict[str, Any]], robust: Mapping[str, Mapping[str, Any]]) -> None:
    """Every metric of the perturbed pass as `<metric>_robust` (with its stderr), and `robustness_drop` =
    acc − acc_robust (no stderr here: the paired per-sample records give one)."""
    for name, res in robust.items():
        if name not in result:
            continue
        for metric, value in res["metrics"].items():
            if isinstance(value, (int, float)):
                higher = res["higher_is_better"].get(metric.partition(",")[0], True)
                _put(result[name], robust_name(metric), value, res["stderr"].get(metric), higher)
        if "acc" in res["metrics"] and "acc" in result[name]["metrics"]:
            _put(result[name], "robustness_drop", result[name]["metrics"]["acc"] - res["metrics"]["acc"], None, False)


def robust_name(metric: str) -> str:
    """`acc` → `acc_robust`, `acc,flt` → `acc_robust,flt` (the filter stays last, as in every metric name)."""
    base, comma, filt = metric.partition(",")
    return f"{base}_robust{comma}{filt}"


def robust_samples(samples: Mapping[str, list[dict[str, Any]]], leaves: Mapping[str, Any], seed: int,
                   kinds: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """The perturbed pass's records under `<task>__robust`, each with the `perturbed_text` its prompt ended in
    (recomputed: perturbations are pure), so the file shows what the model read."""
    out = {}
    for task, records in samples.items():
        text_of = leaves[task].doc_to_text
        out[f"{task}{ROBUST_SUFFIX}"] = [{**r, "perturbed_text": pt.perturb(text_of(r["doc"]), seed, kinds)}
                                         for r in records]
    return out

