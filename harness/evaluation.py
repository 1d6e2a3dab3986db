"""lm-eval bridge: score an in-memory model on built-in tasks and on any stock lm-eval task or group.

Built-in tasks are the held-out test sets, written as local lm-eval tasks (YAML + JSONL, tasks as data). Stock tasks
(`mmlu`, `bbh_fewshot`, `drop`, `boolq`, …) are used exactly as lm-eval ships them, so their scores compare with
published lm-eval numbers; with a hub mirror their datasets come from a local folder (harness/mirror.py).

Result naming (`evaluate` → `flat_scores`): every metric lm-eval reports is kept under its lm-eval key without the
default filter: `"acc,none"` → `acc`, `"exact_match,get-answer"` → `exact_match,get-answer`. Its standard error is
the same name plus `_stderr`. Flat keys are `"<task>/<metric>"` and `"<task>/<metric>_stderr"`, for leaf tasks and
groups alike (`mmlu/acc`, `mmlu_abstract_algebra/acc`, `bbh_fewshot/exact_match`).

HELM-style metrics for multiple-choice tasks (Liang et al. 2022: accuracy, calibration, robustness), added to the
same result dict: `ece` (calibration), and with `robustness=True` `acc_robust` (every metric of the perturbed pass,
`<metric>_robust`) and `robustness_drop` = acc − acc_robust. See `add_calibration` and `perturbed_prompts`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import yaml

from harness import mirror as hub
from harness import perturb as pt
from harness.config import ConfigError
from harness.data import Example
from harness.stopwatch import stage

log = logging.getLogger(__name__)

TASK_VERSION = 1.0  # bump when a built-in task's prompt format changes; stored beside every score
BUILTIN_TASKS = ("mathqa_mc", "sni_mc", "cot_mc", "drop_mc", "bbh_object_counting")  # written by write_tasks
DEFAULT_FILTER = "none"
UNSAFE = re.compile(r"[^\w.-]")  # characters kept out of sample file names (inline tasks are named `group::task`)
ECE_BINS = 10  # equal-width confidence bins of the expected calibration error (Guo et al. 2017; HELM uses 10)
ROBUST_SUFFIX = "__robust"  # samples_dir/<task>__robust.jsonl: per-sample records of the perturbed pass


class EvalConfigError(ConfigError):
    """A bad `eval.*` value (unknown task, duplicate task, few-shot key for no task); one line, exit code 2."""


# ---------------------------------------------------------------- built-in tasks

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


# ---------------------------------------------------------------- task names

@functools.cache
def stock_manager() -> Any:
    """lm-eval's index of every stock task, group and tag: built once per process (it takes 8-15 s)."""
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
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
        index = stock_manager().task_index
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

    entry = stock_manager().task_index[name]
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
    index = stock_manager().task_index
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
    """`eval.helm.perturbations`: a non-empty list of known kinds (harness/perturb.py), else EvalConfigError."""
    problems = pt.unknown_kinds(kinds) or ([] if kinds else [f"empty; use some of {', '.join(pt.KINDS)}"])
    if problems:
        raise EvalConfigError("eval.helm.perturbations: " + "; ".join(problems))


def check_eval(tasks: Sequence[str], num_fewshot: Any = None, mirror_dir: str | Path | None = None,
               builtin: Iterable[str] = BUILTIN_TASKS, perturbations: Sequence[str] | None = None) -> TaskSelection:
    """Every `eval.*` check that needs no model, for before training: task names, few-shot keys, the hub mirror,
    and the perturbation kinds (pass them when robustness is on)."""
    selection = resolve_tasks(tasks, builtin)
    check_num_fewshot(num_fewshot, selection)
    if perturbations is not None:
        check_perturbations(perturbations)
    if mirror_dir is not None:
        check_mirror(tasks, mirror_dir, builtin)
    return selection


# ---------------------------------------------------------------- datasets (hub mirror)

class HubDataset(NamedTuple):
    """One hub dataset config the stock tasks read: the splits lm-eval indexes, the tasks that need them, and the
    `dataset_kwargs` that select its rows (e.g. data_files), which `mirror.fill` passes on when it copies it."""

    path: str
    name: str | None
    splits: tuple[str, ...]
    tasks: tuple[str, ...]
    load_kwargs: dict[str, Any]


def splits_used(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The splits lm-eval indexes for a task: its eval split (test, else validation) and its few-shot source.

    The few-shot source is read when the task is built, even at 0 shots: `fewshot_split` (or `fewshot_config.split`),
    none when `fewshot_config.samples` are inline, else the first of training, validation, test splits set.
    """
    fs_cfg = cfg.get("fewshot_config") or {}
    declared = [cfg.get(k) for k in ("training_split", "validation_split", "test_split")]
    eval_split = cfg.get("test_split") or cfg.get("validation_split")
    if fewshot := fs_cfg.get("split") or cfg.get("fewshot_split"):
        sources = [fewshot]
    elif fs_cfg.get("samples") is not None:
        sources = []
    else:
        sources = [s for s in declared if s][:1]
    return tuple(dict.fromkeys(s for s in [eval_split, *sources] if s))


def task_datasets(names: Iterable[str]) -> list[HubDataset]:
    """The hub datasets (path, config, splits) that stock tasks/groups read, merged per config; nothing downloaded.

    Tasks that read no hub dataset (a `custom_dataset`, a packaged builder on local files) are left out; Python-class
    tasks declare their splits in code, so for them `splits` is empty (the mirror must hold the folder). Two tasks
    reading one config with different row-selecting kwargs (data_files, …) raise MirrorError: a mirror holds one copy.
    """
    found: dict[tuple[str, str | None], HubDataset] = {}
    for top in names:
        for task, cfg in leaf_configs(top):
            path, name = _dataset_of(cfg)
            if path is None or not hub.is_hub_id(path):
                continue
            kwargs = hub.selecting_kwargs(dict(cfg.get("dataset_kwargs") or {}))
            splits = () if "class" in cfg else splits_used(cfg)
            seen = found.setdefault((path, name), HubDataset(path, name, (), (), kwargs))
            if seen.load_kwargs != kwargs:
                raise hub.MirrorError(f"hub_mirror: tasks {seen.tasks[0]} and {task} read '{path}'"
                                      + (f" config '{name}'" if name else "") + f" with different dataset_kwargs "
                                      f"({seen.load_kwargs} vs {kwargs}); a mirror holds one copy per config")
            found[(path, name)] = seen._replace(splits=tuple(dict.fromkeys(seen.splits + splits)),
                                                tasks=(*seen.tasks, task))
    return list(found.values())


def _dataset_of(cfg: Mapping[str, Any]) -> tuple[str | None, str | None]:
    if cfg.get("custom_dataset") is not None:
        return None, None
    if "class" in cfg and cfg.get("dataset_path") is None:
        from lm_eval.tasks._yaml_loader import load_yaml

        cls = load_yaml(Path(stock_manager().task_index[cfg["task"]].yaml_path), resolve_func=True)["class"]
        return getattr(cls, "DATASET_PATH", None), getattr(cls, "DATASET_NAME", None)
    return cfg.get("dataset_path"), cfg.get("dataset_name")


def check_mirror(names: Sequence[str], mirror_dir: str | Path, builtin: Iterable[str] = BUILTIN_TASKS) -> None:
    """Raise MirrorError (one line) naming the first file the mirror lacks for `eval.tasks`; run it before training."""
    root = Path(mirror_dir).resolve()
    if not root.is_dir():
        raise hub.MirrorError(f"hub_mirror: {root} is not a folder")
    wanted = task_datasets(resolve_tasks(names, builtin).stock)
    lacking = [(d, s) for d in wanted for s in d.splits if hub.split_file(root, d.path, d.name, s) is None]
    lacking += [(d, None) for d in wanted if not d.splits and not hub.mirrored_splits(root, d.path, d.name)]
    if not lacking:
        return
    d, split = lacking[0]
    more = f" (and {len(lacking) - 1} more missing)" if len(lacking) > 1 else ""
    needed_by = f"task {d.tasks[0]}" + (f" and {len(d.tasks) - 1} more" if len(d.tasks) > 1 else "")
    if split is None:
        raise hub.MirrorError(f"hub_mirror: missing {hub.dataset_dir(root, d.path, d.name)}/ (split files) for "
                              f"dataset '{d.path}', needed by {needed_by}{more}")
    err = hub.missing(root, d.path, d.name, split, needed_by)
    raise hub.MirrorError(f"{err}{more}")


def mirror_fingerprint(names: Sequence[str], mirror_dir: str | Path, builtin: Iterable[str] = BUILTIN_TASKS) -> str:
    """sha256 over the mirror files `eval.tasks` read (path and content): part of an evaluation's cache key, so
    editing a mirrored file re-scores the models that saw it."""
    root = Path(mirror_dir).resolve()
    digest = hashlib.sha256()
    for d in task_datasets(resolve_tasks(names, builtin).stock):
        files = hub.mirrored_splits(root, d.path, d.name)
        for split in d.splits or tuple(files):
            if (f := files.get(split)) is not None:
                digest.update(f"{f.relative_to(root)}\0".encode())
                digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()


# ---------------------------------------------------------------- scoring

def evaluate(model: Any, tokenizer: Any, *, tasks: Sequence[str], task_dir: Path | None = None,
             num_fewshot: int | Mapping[str, int] | None = None, limit: int | float | None = None,
             batch_size: int = 32, gen_kwargs: Mapping[str, Any] | None = None, samples_dir: Path | None = None,
             mirror: str | Path | None = None, builtin: Iterable[str] = BUILTIN_TASKS,
             bootstrap_iters: int = 1000, robustness: bool = False, perturbations: Sequence[str] = pt.KINDS,
             perturb_seed: int = 0) -> dict[str, dict[str, Any]]:
    """Score an in-memory model on built-in and stock tasks in one `lm_eval.simple_evaluate` call (two with
    robustness: the perturbed pass reuses the loaded task objects).

    num_fewshot: None = each task's default; an int = lm-eval's `--num_fewshot` (every task whose YAML does not pin
    0 shots); a mapping {task or group: shots} = per task, a group's value reaching all its subtasks, with the same
    rule for pinned 0 shots. gen_kwargs update every generation task's `generation_kwargs` (lm-eval's
    `--gen_kwargs`). Built-in tasks are read from `task_dir/<task>.yaml`. Per-sample records go to
    `samples_dir/<task>.jsonl`. Returns {task or group: {"metrics", "stderr", "higher_is_better", "version", "n",
    "num_fewshot", "group", "subtasks"}}; see the module docstring for metric names.

    Multiple-choice tasks also get `ece` (free: it reads the log-likelihoods already computed). robustness=True
    scores them a second time with each test prompt perturbed (`perturbations`, seeded by `perturb_seed` and the
    prompt, so every model sees the same prompts) and adds `<metric>_robust` and `robustness_drop`; its per-sample
    records go to `samples_dir/<task>__robust.jsonl`. It doubles the multiple-choice scoring time.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    selection = resolve_tasks(tasks, builtin)
    check_num_fewshot(num_fewshot, selection)
    if robustness:
        check_perturbations(perturbations)
    specs: list[Any] = [_builtin_spec(task_dir, t) for t in selection.builtin] + list(selection.stock)
    manager = stock_manager() if selection.stock else TaskManager(include_defaults=False)
    fewshot = num_fewshot if isinstance(num_fewshot, int) else None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    run = functools.partial(simple_evaluate, model=lm, task_manager=manager, num_fewshot=fewshot, limit=limit,
                            gen_kwargs=_plain(gen_kwargs) or None, log_samples=True,
                            bootstrap_iters=bootstrap_iters, verbosity="WARNING")
    robust_out = None
    with hub.hub_mirror(mirror):
        with stage("lm-eval task setup"):
            loaded = [obj for spec in specs for obj in _load(manager, spec)]  # builds tasks: reads datasets
        if isinstance(num_fewshot, Mapping):
            _set_fewshot(loaded, dict(num_fewshot))
        out = run(tasks=loaded)
        if robustness and (targets := robust_targets(loaded)):
            with stage("HELM robustness pass"), perturbed_prompts(_leaf_tasks(targets).values(), perturb_seed,
                                                                   perturbations):
                robust_out = run(tasks=targets)  # the same task objects: same few-shot exemplars, same docs
    leaves = _leaf_tasks(loaded)
    result = collect(out)
    add_calibration(result, out["samples"], leaves)
    samples = dict(out["samples"])
    if robust_out is not None:
        add_robustness(result, collect(robust_out))
        samples |= robust_samples(robust_out["samples"], leaves, perturb_seed, perturbations)
    if samples_dir is not None:
        write_samples(Path(samples_dir), samples)
    return result


def _quiet_lm_eval() -> None:
    """Passing an in-memory model is deliberate; lm-eval warns about it on every call and logs each task at INFO.
    And its environment report (torch's collect_env: `pip list` and more in subprocesses) is gathered once per
    process, not on every call: measured 1.5 s of a 3.7 s call on the micro model, and we score task by task."""
    import lm_eval.evaluator

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm_eval.evaluator.add_env_info = _env_info_once


@functools.cache
def _env_info() -> dict[str, Any]:
    from lm_eval.loggers.utils import add_env_info

    info: dict[str, Any] = {}
    add_env_info(info)
    return info


def _env_info_once(storage: dict[str, Any]) -> None:
    """lm-eval's add_env_info, from the first call's answer (nothing it reports changes within a process)."""
    storage.update(_env_info())


def _builtin_spec(task_dir: Path | None, task: str) -> dict[str, Any]:
    """A built-in task as an inline config (the YAML's content): lm-eval then needs no index of task_dir."""
    if task_dir is None:
        raise EvalConfigError(f"eval.tasks: built-in task '{task}' needs the folder write_tasks wrote (task_dir)")
    return yaml.safe_load((Path(task_dir) / f"{task}.yaml").read_text())


def _load(manager: Any, spec: str | dict[str, Any]) -> list[Any]:
    """One listed name → the Task or Group lm-eval builds for it (a tag: its Tasks), ready for simple_evaluate."""
    loaded = manager.load([spec])
    name = spec["task"] if isinstance(spec, dict) else spec
    if name in loaded.get("groups", {}):
        return [loaded["groups"][name]]
    if name in loaded["tasks"]:
        return [loaded["tasks"][name]]
    return list(loaded["tasks"].values())


def _set_fewshot(loaded: list[Any], table: dict[str, int]) -> None:
    """Apply {task or group: shots}; the nearest listed ancestor wins; a task whose YAML pins 0 shots keeps 0."""
    from lm_eval.api.group import Group

    def walk(obj: Any, inherited: int | None) -> None:
        name = obj.name if isinstance(obj, Group) else obj.task_name
        shots = table.get(name, inherited)
        if isinstance(obj, Group):
            for child in obj:  # direct children: tasks and subgroups
                walk(child, shots)
        elif shots is not None and shots != 0 and obj.get_config("num_fewshot") == 0:
            log.warning("%s pins num_fewshot: 0 in its YAML; eval.num_fewshot=%d ignored (as lm-eval does)", name,
                        shots)
        elif shots is not None:
            obj.set_config(key="num_fewshot", value=shots)

    for item in loaded:
        walk(item, None)


def _plain(obj: Any) -> Any:
    """Hydra's DictConfig/ListConfig → plain dicts and lists (lm-eval stores and copies gen_kwargs)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, str):
        return [_plain(v) for v in obj]
    return obj


# ---------------------------------------------------------------- HELM-style: calibration and robustness

def _leaf_tasks(loaded: Iterable[Any]) -> dict[str, Any]:
    """{task name: Task} of every leaf under the loaded tasks and groups (the names lm-eval keys samples by)."""
    from lm_eval.api.group import Group

    tasks = [t for obj in loaded for t in (obj.get_all_tasks() if isinstance(obj, Group) else [obj])]
    return {t.task_name: t for t in tasks}


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
    from harness.stats import choice_confidence

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
    from harness.stats import expected_calibration_error

    items = {name: got for name, task in leaves.items() if (got := calibration_items(task, samples.get(name, [])))}
    subtasks = {name: res["subtasks"] for name, res in result.items()}
    for name, res in result.items():
        members = _leaves(name, subtasks) if res["group"] else [name]
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


# ---------------------------------------------------------------- results

def collect(out: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's results → {task or group: {"metrics", "stderr", "higher_is_better", "version", "n", "num_fewshot",
    "group", "subtasks"}} for every task and group it reports (groups also at every nesting level)."""
    subtasks = {g: list(children) for g, children in (out.get("group_subtasks") or {}).items()}
    groups = set(out.get("groups") or {}) | {g for g, c in subtasks.items() if c}
    n_samples = out.get("n-samples") or {}
    scores = {}
    for name, res in out["results"].items():
        metrics, stderr = _metrics(res)
        leaves = _leaves(name, subtasks) if name in groups else [name]
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


def _leaves(name: str, subtasks: Mapping[str, list[str]]) -> list[str]:
    children = subtasks.get(name)
    return [leaf for c in children for leaf in _leaves(c, subtasks)] if children else [name]


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
