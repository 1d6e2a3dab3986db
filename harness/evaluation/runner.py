"""lm-eval bridge: score an in-memory model on built-in and stock tasks in one `simple_evaluate` call, and the
HELM-style pass beside it (helm.py); results are flattened and written by results.py."""

from __future__ import annotations

import dataclasses
import functools
import logging
import weakref
from array import array
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from harness.data import mirror as hub
from harness.evaluation import perturb as pt
from harness.evaluation import tasks as lm_tasks
from harness.evaluation.helm import (
    add_calibration,
    add_robustness,
    perturbed_prompts,
    robust_samples,
    robust_targets,
)
from harness.evaluation.results import collect, write_samples
from harness.evaluation.tasks import (
    BUILTIN_TASKS,
    EvalConfigError,
    check_num_fewshot,
    check_perturbations,
    quiet_lm_eval,
    resolve_tasks,
)
from harness.runs.stopwatch import stage

log = logging.getLogger(__name__)

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

    quiet_lm_eval()
    selection = resolve_tasks(tasks, builtin)
    check_num_fewshot(num_fewshot, selection)
    if robustness:
        check_perturbations(perturbations)
    specs: list[Any] = [builtin_spec(task_dir, t) for t in selection.builtin] + list(selection.stock)
    # lm_tasks.stock_manager, not a name imported here: a test replaces it to show built-in tasks need no index
    manager = lm_tasks.stock_manager() if selection.stock else TaskManager(include_defaults=False)
    fewshot = num_fewshot if isinstance(num_fewshot, int) else None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    memoise_encoding(lm)
    run = functools.partial(simple_evaluate, model=lm, task_manager=manager, num_fewshot=fewshot, limit=limit,
                            gen_kwargs=_plain(gen_kwargs) or None, log_samples=True,
                            bootstrap_iters=bootstrap_iters, verbosity="WARNING")
    robust_out = None
    with hub.hub_mirror(mirror):
        with stage("lm-eval task setup"):
            loaded = [obj for spec in specs for obj in load_task(manager, spec)]  # builds tasks: reads datasets
        if isinstance(num_fewshot, Mapping):
            set_fewshot(loaded, dict(num_fewshot))
        out = run(tasks=loaded)
        if robustness and (targets := robust_targets(loaded)):
            with stage("HELM robustness pass"), perturbed_prompts(leaf_tasks(targets).values(), perturb_seed,
                                                                   perturbations):
                robust_out = run(tasks=targets)  # the same task objects: same few-shot exemplars, same docs
    leaves = leaf_tasks(loaded)
    result = collect(out)
    add_calibration(result, out["samples"], leaves)
    samples = dict(out["samples"])
    if robust_out is not None:
        add_robustness(result, collect(robust_out))
        samples |= robust_samples(robust_out["samples"], leaves, perturb_seed, perturbations)
    if samples_dir is not None:
        write_samples(Path(samples_dir), samples)
    return result


MEMO_TOKENS = 4_000_000  # token ids kept per tokenizer (4 bytes each): the embedded default needs ~0.6M


@dataclasses.dataclass
class _Encoded:
    ids: dict[tuple[Any, ...], array] = dataclasses.field(default_factory=dict)
    tokens: int = 0


_ENCODED: weakref.WeakKeyDictionary[Any, _Encoded] = weakref.WeakKeyDictionary()  # tokenizer -> its encodings


def memoise_encoding(lm: Any) -> None:
    """Make `lm.tok_encode` remember its answers per tokenizer, for every HFLM of the process.

    A comparison scores every model on the same requests with the same tokenizer, and lm-eval encodes each
    multiple-choice context once per choice (context alone and context + choice): 94,608 encodes in the embedded
    default, 10k of them distinct. Encoding is a pure function of the string, the arguments and the two HFLM
    settings in the key; a hit returns a fresh list, so no caller can change what the next one gets. Past
    MEMO_TOKENS nothing more is kept (later strings are encoded as before), bounding memory on large benchmarks.
    """
    encode = lm.tok_encode
    memo = _ENCODED.setdefault(lm.tokenizer, _Encoded())

    def tok_encode(string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        if kwargs:
            return encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len,
                          **kwargs)
        key = (string, add_special_tokens, left_truncate_len, lm.add_bos_token, lm.backend)
        if (known := memo.ids.get(key)) is not None:
            return known.tolist()
        ids = encode(string, add_special_tokens=add_special_tokens, left_truncate_len=left_truncate_len)
        if memo.tokens + len(ids) <= MEMO_TOKENS:
            memo.ids[key] = array("i", ids)
            memo.tokens += len(ids)
        return ids

    lm.tok_encode = tok_encode


def builtin_spec(task_dir: Path | None, task: str) -> dict[str, Any]:
    """A built-in task as an inline config (the YAML's content): lm-eval then needs no index of task_dir."""
    if task_dir is None:
        raise EvalConfigError(f"eval.tasks: built-in task '{task}' needs the folder write_tasks wrote (task_dir)")
    return yaml.safe_load((Path(task_dir) / f"{task}.yaml").read_text())


def load_task(manager: Any, spec: str | dict[str, Any]) -> list[Any]:
    """One listed name → the Task or Group lm-eval builds for it (a tag: its Tasks), ready for simple_evaluate."""
    loaded = manager.load([spec])
    name = spec["task"] if isinstance(spec, dict) else spec
    if name in loaded.get("groups", {}):
        return [loaded["groups"][name]]
    if name in loaded["tasks"]:
        return [loaded["tasks"][name]]
    return list(loaded["tasks"].values())


def set_fewshot(loaded: list[Any], table: dict[str, int]) -> None:
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


def leaf_tasks(loaded: Iterable[Any]) -> dict[str, Any]:
    """{task name: Task} of every leaf under the loaded tasks and groups (the names lm-eval keys samples by)."""
    from lm_eval.api.group import Group

    tasks = [t for obj in loaded for t in (obj.get_all_tasks() if isinstance(obj, Group) else [obj])]
    return {t.task_name: t for t in tasks}

