"""Task names for `eval.tasks`: the project's built-in tasks (held-out test sets written as local lm-eval tasks, YAML +
JSONL) and stock lm-eval tasks, groups and tags, resolved against lm-eval's index without building or downloading
anything; the per-task parts of `eval.num_fewshot`, `eval.limit` and `eval.gen_kwargs`.

Stock tasks (`mmlu`, `bbh_fewshot`, `drop`, `boolq`, …) are used exactly as lm-eval ships them, so their scores
compare with published lm-eval numbers; with a hub mirror their datasets come from a local folder
(harness/data/mirror.py, checked in checks.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.data.builtin import Example
from harness.errors import ConfigError
from harness.evaluation import perturb as pt
from harness.evaluation.task_index import stock_index

log = logging.getLogger(__name__)


TASK_VERSION = 1.0  # bump when a built-in task's prompt format changes; stored beside every score


BUILTIN_TASKS = ("mathqa_mc", "sni_mc", "cot_mc", "drop_mc", "bbh_object_counting")  # written by write_tasks


class EvalConfigError(ConfigError):
    """A bad `eval.*` value (unknown task, duplicate task, few-shot key for no task); one line, exit code 2."""


def write_tasks(task_dir: Path, test_sets: dict[str, list[Example]]) -> dict[str, str]:
    """One multiple-choice task per test set: `<task>.jsonl` holds the docs, `<task>.yaml` says how to read them.

    Returns each task's sha256 over its exact items and its YAML (less the data file's path, which differs per
    output folder): what evaluation results are keyed by, so a changed item is never scored under an old key."""
    task_dir.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for task, examples in test_sets.items():
        data = task_dir / f"{task}.jsonl"
        items = "".join(json.dumps({"context": ex.mc_context, "choices": list(ex.mc_choices),
                                    "target": ex.mc_target}) + "\n" for ex in examples)
        data.write_text(items)
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
        portable = {k: v for k, v in spec.items() if k != "dataset_kwargs"}
        hashes[task] = hashlib.sha256(json.dumps([portable, items], sort_keys=True).encode()).hexdigest()
    return hashes


def chance_level(examples: list[Example]) -> float:
    """Expected accuracy of uniform guessing (tasks mix 2- and 5-way items, so it is not simply 1/k)."""
    return sum(1 / len(ex.mc_choices) for ex in examples) / len(examples)


@functools.cache
def stock_manager() -> Any:
    """lm-eval's TaskManager over every stock task: what evaluation builds tasks with, once per process (it builds
    its own index, 13 s). Resolving names needs only the index, which task_index.stock_index keeps on disk."""
    from lm_eval.tasks import TaskManager

    quiet_lm_eval()
    return TaskManager()


@dataclasses.dataclass(frozen=True)
class TaskSelection:
    """`eval.tasks` split into the project's built-in tasks and stock lm-eval tasks/groups/tags (order kept)."""

    builtin: tuple[str, ...]
    stock: tuple[str, ...]


def resolve_tasks(names: Sequence[str], builtin: Iterable[str] = BUILTIN_TASKS) -> TaskSelection:
    """Sort names into built-in and stock ones; unknown or overlapping names raise EvalConfigError (one line).

    A built-in name wins over a stock one of the same name. lm-eval's index is built only when a name is not built-in.
    """
    builtin = set(builtin)
    local = tuple(n for n in names if n in builtin)
    stock = tuple(n for n in names if n not in builtin)
    problems = [f"'{n}' is listed twice" for n in sorted({n for n in names if list(names).count(n) > 1})]
    if stock:
        index = stock_index()
        known = sorted(set(index) | builtin)
        problems += [_unknown(n, known) for n in stock if n not in index]
        if not problems:
            problems += _overlaps(stock)
    if problems:
        raise EvalConfigError("eval.tasks: " + "; ".join(problems))
    return TaskSelection(local, stock)


def _unknown(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (f"unknown lm-eval task '{name}'.{hint} Built-in: {', '.join(BUILTIN_TASKS)}; "
            "stock tasks and groups: `lm-eval ls tasks`")


def _overlaps(stock: Sequence[str]) -> list[str]:
    """lm-eval refuses a task reached from two listed names (e.g. `mmlu` and `mmlu_anatomy`): say so before training."""
    owner: dict[str, str] = {}
    clashes: dict[tuple[str, str], str] = {}
    for name in stock:
        for leaf, _ in leaf_configs(name):
            if (first := owner.setdefault(leaf, name)) != name:
                clashes.setdefault((first, name), leaf)
    return [f"'{a}' and '{b}' both run '{leaf}'; list one of them" for (a, b), leaf in clashes.items()]


def leaf_configs(name: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(task name, raw YAML config) of every leaf task a stock task/group/tag runs, without building or downloading."""
    return ((task, cfg) for task, cfg, is_group in _walk(name) if not is_group)


def _walk(name: str, overrides: Mapping[str, Any] | None = None) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(name, config, is_group) of `name` and everything under it, as lm-eval's TaskFactory would build them:
    a group's non-structural keys and a member's inline keys override the task's own YAML."""
    from lm_eval.tasks._index import Kind

    entry = stock_index()[name]
    if entry.kind == Kind.TAG:
        for task in sorted(entry.tags):
            yield from _walk(task, overrides)
    elif entry.kind == Kind.GROUP:
        yield name, dict(entry.cfg), True
        yield from _walk_group(name, entry.cfg, dict(overrides or {}))
    else:
        yield name, {**(entry.cfg or {}), **(overrides or {}), "task": name}, False


def _walk_group(group: str, cfg: Mapping[str, Any], overrides: dict[str, Any]) -> Iterator[tuple[str, dict, bool]]:
    from lm_eval.config.group import GroupConfig

    structural = {f.name for f in dataclasses.fields(GroupConfig)}
    merged = {**{k: v for k, v in cfg.items() if k not in structural}, **overrides}
    index = stock_index()
    for item in cfg.get("task") or []:
        if isinstance(item, str):
            ref, extra = item, {}
        elif "group" in item:
            ref, extra = item["group"], {k: v for k, v in item.items() if k != "group"}
            if ref not in index:  # an inline subgroup
                yield f"{group}::{ref}", dict(item), True
                yield from _walk_group(f"{group}::{ref}", item, merged)
                continue
        elif "task" in item:
            ref, extra = item["task"], {k: v for k, v in item.items() if k != "task"}
        else:  # lm-eval refuses it too, when the group is built
            raise EvalConfigError(f"lm-eval group '{group}' has a member with neither 'task' nor 'group': {item}")
        if ref in index:
            yield from _walk(ref, {**merged, **extra})
        else:  # an inline task defined inside the group
            yield f"{group}::{ref}", {**merged, **extra, "task": f"{group}::{ref}"}, False


def check_num_fewshot(num_fewshot: Any, selection: TaskSelection) -> None:
    """`eval.num_fewshot` is null, an int >= 0, or {listed task, group or subtask: int >= 0}; else EvalConfigError."""
    def bad(value: Any) -> bool:
        return isinstance(value, bool) or not isinstance(value, int) or value < 0

    if num_fewshot is None:
        return
    if not isinstance(num_fewshot, Mapping):
        if bad(num_fewshot):
            raise EvalConfigError(f"eval.num_fewshot={num_fewshot}: null, an int >= 0, or {{task or group: int}}")
        return
    problems = [f"{k}={v} must be an int >= 0" for k, v in num_fewshot.items() if bad(v)]
    names = {n for top in (*selection.builtin, *selection.stock) for n in reachable(top, selection.builtin)}
    if unknown := sorted(set(num_fewshot) - names):
        problems.append(f"{', '.join(unknown)} not among eval.tasks or their subtasks")
    if problems:
        raise EvalConfigError("eval.num_fewshot: " + "; ".join(problems))


def reachable(task: str, builtin: Iterable[str] = BUILTIN_TASKS) -> set[str]:
    """A listed task and every group and subtask under it: the names `eval.num_fewshot` may key for it."""
    return {task} if task in set(builtin) else {n for n, _, _ in _walk(task)}


def fewshot_for(num_fewshot: Any, task: str, builtin: Iterable[str] = BUILTIN_TASKS) -> Any:
    """The part of `eval.num_fewshot` that reaches one listed task: what scoring that task alone needs (and what
    its cache key holds, so changing another task's shots never re-scores this one)."""
    if not isinstance(num_fewshot, Mapping):
        return num_fewshot
    names = reachable(task, builtin)
    return {k: v for k, v in num_fewshot.items() if k in names} or None


def limit_for(limit: Any, task: str) -> int | None:
    """`eval.limit` for one listed task: an int for every task (per subtask of a group), or {task: int|null} per
    listed task (a task it does not name is scored in full)."""
    return limit.get(task) if isinstance(limit, Mapping) else limit


def check_limit(limit: Any, tasks: Sequence[str]) -> None:
    """`eval.limit`: null, an int > 0, or {listed task: int > 0 or null}; else EvalConfigError (one line)."""
    def bad(value: Any) -> bool:
        return value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0)

    if not isinstance(limit, Mapping):
        if isinstance(limit, float):
            raise EvalConfigError(f"eval.limit={limit}: must be an integer or null, not a decimal number")
        if bad(limit):
            raise EvalConfigError(f"eval.limit={limit}: must be null or a positive integer (or {{listed task: "
                                  "int or null}})")
        return
    problems = [f"{k}={v} must be a positive integer or null" for k, v in limit.items() if bad(v)]
    if unknown := sorted(set(limit) - set(tasks)):
        problems.append(f"{', '.join(unknown)} not in eval.tasks ({', '.join(tasks)})")
    if problems:
        raise EvalConfigError("eval.limit: " + "; ".join(problems))


def generates(task: str, builtin: Iterable[str] = BUILTIN_TASKS) -> bool:
    """Whether a listed task has a generation (generate_until) subtask: only those read `eval.gen_kwargs`."""
    if task in set(builtin):
        return False
    return any(cfg.get("output_type") == "generate_until" for _, cfg in leaf_configs(task))


def generation_limits(names: Sequence[str], gen_kwargs: Mapping[str, Any] | None = None) -> dict[str, int]:
    """{generation leaf task: the most tokens it may generate}: eval.gen_kwargs over its YAML's generation_kwargs
    (as lm-eval's --gen_kwargs does), read with lm-eval's own alias rule and default (256)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    out = {}
    for top in names:
        for task, cfg in leaf_configs(top):
            if cfg.get("output_type") == "generate_until":
                kwargs = {**(cfg.get("generation_kwargs") or {}), **(gen_kwargs or {})}
                out[task] = int(normalize_gen_kwargs(dict(kwargs), 256)["max_gen_toks"])
    return out


def check_perturbations(kinds: Sequence[str]) -> None:
    """`eval.helm.perturbations`: a non-empty list of known kinds (perturb.py), else EvalConfigError."""
    problems = pt.unknown_kinds(kinds) or ([] if kinds else [f"empty; use some of {', '.join(pt.KINDS)}"])
    if problems:
        raise EvalConfigError("eval.helm.perturbations: " + "; ".join(problems))


def quiet_lm_eval() -> None:
    """Passing an in-memory model is deliberate; lm-eval warns about it on every call and logs each task at INFO.
    And its environment report (torch's collect_env: `pip list` and more in subprocesses) is gathered once per
    process, not on every call: measured 1.5 s of a 3.7 s call on the micro model, and we score task by task.
    And a task's Jinja templates are compiled once per process, not once per document (`_apply_template`)."""
    import lm_eval.evaluator
    import lm_eval.utils

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm_eval.evaluator.add_env_info = _env_info_once
    lm_eval.utils.apply_template = _apply_template


@functools.lru_cache(maxsize=512)
def _template(source: str) -> Any:
    import lm_eval.utils

    return lm_eval.utils.env.from_string(source)


def _apply_template(template: str, doc: dict) -> str:
    """lm_eval.utils.apply_template, with each template compiled once: lm-eval compiles it afresh for every document
    it renders (18,030 compiles in the embedded default's evaluation, ~0.2 ms each here); a compiled template is
    immutable and renders the same text, in lm-eval's own Jinja environment."""
    return _template(template).render(**doc)


@functools.cache
def _env_info() -> dict[str, Any]:
    from lm_eval.loggers.utils import add_env_info

    info: dict[str, Any] = {}
    add_env_info(info)
    return info


def _env_info_once(storage: dict[str, Any]) -> None:
    """lm-eval's add_env_info, from the first call's answer (nothing it reports changes within a process)."""
    storage.update(_env_info())

