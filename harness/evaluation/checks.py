"""Every `eval.*` check that needs no model, for before training: task names and few-shot keys (tasks.py), the hub
datasets stock tasks read, and whether the hub mirror holds each split they need; the mirror's fingerprint."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from harness.data import mirror as hub
from harness.evaluation.task_index import stock_index
from harness.evaluation.tasks import (
    BUILTIN_TASKS,
    TaskSelection,
    check_num_fewshot,
    check_perturbations,
    leaf_configs,
    resolve_tasks,
)


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

        cls = load_yaml(Path(stock_index()[cfg["task"]].yaml_path), resolve_func=True)["class"]
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

