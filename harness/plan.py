"""The plan printed before any training: every run each arm needs (and which the cache already holds), with
estimated tokens, FLOPs and wall time, the memory and disk they need, and the device-hours each reported model
costs on a named accelerator (training, search, evaluation) — so a job that cannot fit stops in seconds, and a
user sees what a sweep will cost before paying for it (`plan_only=true` prints it and exits, offline too)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PretrainedConfig

from harness.arms import Planned
from harness.config import SourceConfig, plain
from harness.data.sources import Distribution, SourceError, load_distribution
from harness.errors import HarnessError
from harness.runs.accelerators import ACCELERATORS
from harness.runs.cost import bytes_human, estimate_disk, estimate_memory, forward_flops, param_count


class PlanError(HarnessError, RuntimeError):
    """The plan cannot fit this machine (e.g. disk); printed as one line, exit code 2."""


@dataclass(frozen=True)
class Row:
    arm: str
    run: str  # the mixture (or what a placeholder run will be)
    note: str
    tokens: int
    flops: float
    cached: bool


def resources(config: PretrainedConfig, *, dtype: torch.dtype, batch_size: int, seq_len: int,
              gradient_checkpointing: bool, n_vectors: int, vector_dtype: torch.dtype, vectors_on: str,
              n_new_checkpoints: int, n_new_vectors: int, cache_root: Path, check_disk: bool = True,
              adapter_params: int | None = None, search_adapters: bool = False,
              statistics_bytes: int = 0) -> dict[str, Any]:
    """Peak memory of one training run and of the coefficient search, and the disk the new cache entries need
    against the disk free under cache_root. Raises PlanError when the disk would not fit, unless not `check_disk`
    (plan_only: the plan may be for another machine, so `describe` only says so). `adapter_params`: LoRA runs,
    each stored as an adapter of that many parameters instead of a checkpoint; `search_adapters`: the searches
    hold those adapters, not dense vectors (cost.estimate_memory)."""
    memory = estimate_memory(config, param_dtype=dtype, batch_size=batch_size, seq_len=seq_len,
                             gradient_checkpointing=gradient_checkpointing, n_vectors=n_vectors,
                             vector_dtype=vector_dtype, vectors_on=vectors_on, adapter_params=adapter_params,
                             search_adapters=search_adapters)
    disk = estimate_disk(config, checkpoint_dtype=dtype, n_checkpoints=n_new_checkpoints, n_vectors=n_new_vectors,
                         vector_dtype=vector_dtype, checkpoint_params=adapter_params, statistics=statistics_bytes)
    probe = cache_root
    while not probe.exists():  # the cache folder may not exist yet: measure the disk it will live on
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    plan = {"params": param_count(config), "memory": memory, "disk": disk, "disk_free": free,
            "search_inputs": "adapters" if search_adapters else "vectors"}
    if disk["total"] > free and check_disk:
        raise PlanError(f"not enough disk under {cache_root}: the plan writes {bytes_human(disk['total'])} "
                        f"({n_new_checkpoints} checkpoints, {n_new_vectors} vectors) but {bytes_human(free)} is "
                        "free; free space or point cache_dir elsewhere")
    return plan


def describe(plan: dict[str, Any], device: str) -> str:
    """One paragraph for the log."""
    m, d = plan["memory"], plan["disk"]
    return (f"plan: {plan['params'] / 1e6:.1f}M parameters on {device}; training peak ≈ "
            f"{bytes_human(m['train_peak'])} (weights {bytes_human(m['weights'])}, gradients "
            f"{bytes_human(m['gradients'])}, AdamW {bytes_human(m['optimizer'])}, activations "
            f"{bytes_human(m['activations'])}); search peak ≈ {bytes_human(m['search_peak_device'])} on the device "
            f"({plan.get('search_inputs', 'vectors')} {bytes_human(m['vectors'])}); new disk "
            f"{bytes_human(d['total'])} (checkpoints {bytes_human(d['checkpoints'])}, vectors "
            f"{bytes_human(d['vectors'])}" + (f", statistics {bytes_human(d['statistics'])}" if d["statistics"] else "")
            + ") of "
            f"{bytes_human(plan['disk_free'])} free" + (" here: NOT ENOUGH for a run on this machine"
                                                        if d["total"] > plan["disk_free"] else ""))


def measured_flops_per_second(cache_root: Path, device_type: str, dtype: str) -> tuple[float, str]:
    """Training FLOP/s achieved on this kind of device, from the records of runs already in the cache (median);
    with none yet, from a short matmul probe on the device at an assumed 30% of its peak (said as such)."""
    rates = []
    for record_file in (cache_root / "train").glob("*/record.json"):
        try:
            r = json.loads(record_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        spec = r.get("spec", {})
        if spec.get("device_type") == device_type and spec.get("dtype") == dtype and r.get("train_wall_s"):
            rates.append(r["train_flops"] / r["train_wall_s"])
    if rates:
        return statistics.median(rates), f"measured on {len(rates)} cached run(s)"
    device = torch.device(device_type)
    size = 1024
    a = torch.randn(size, size, device=device, dtype=getattr(torch, dtype))
    (a @ a).sum().item()  # warm-up
    start = time.perf_counter()
    for _ in range(4):
        (a @ a).sum().item()
    peak = 4 * 2 * size**3 / (time.perf_counter() - start)
    return 0.3 * peak, "probe: 30% of a measured matmul rate (no run cached yet)"


def run_table(rows: list[Row], flops_per_s: float, how: str) -> str:
    """The plan as a table: every run each arm needs, cached or to train, with estimated time."""
    to_train = [r for r in rows if not r.cached]
    tokens = sum(r.tokens for r in to_train)
    flops = sum(r.flops for r in to_train)
    lines = [f"plan: {len(rows)} training run(s), {len(rows) - len(to_train)} in the cache, {len(to_train)} to train: "
             f"{tokens:,} tokens, {flops:.3g} FLOPs, ≈ {_duration(flops / flops_per_s)} at {flops_per_s:.3g} FLOP/s "
             f"({how})",
             f"  {'needed by':<26} {'run':<36} {'for':<36} {'tokens':>10} {'FLOPs':>9} {'est. time':>9}  status"]
    for r in rows:
        status = "cached" if r.cached else "to train"
        lines.append(f"  {r.arm:<26} {r.run[:36]:<36} {r.note[:36]:<36} {r.tokens:>10,} {r.flops:>9.3g} "
                     f"{_duration(r.flops / flops_per_s):>9}  {status}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------ device-hours per arm

# Rows read but not tokenised (a plan tokenises nothing): about 4 characters per token, the usual rule of thumb for
# English text under 32k-50k BPE/SentencePiece vocabularies (digit-heavy text runs shorter, so more tokens).
CHARS_PER_TOKEN = 4.0
# Rows neither read nor stated (data.sources.<name>.tokens_per_row): a guess, and the plan says it is one.
DEFAULT_TOKENS_PER_ROW = 256


def plan_splits(cfg: DictConfig) -> tuple[dict[str, Distribution], str]:
    """Each distribution's rows for a plan. A source that cannot be read (the hub unreachable, no mirror) does not
    stop the plan: it is stood in for by the config's row counts (its runs then cannot show as cached), and the
    one-line note returned says so ("" when every source was read)."""
    splits, unread = {}, {}
    data = cfg.data
    for name in data.distributions:
        source = OmegaConf.to_object(data.sources[name]) if name in data.sources else SourceConfig()
        try:
            splits[name] = load_distribution(name, source, seed=cfg.seeds.data, n_train=data.n_train,
                                             n_val=data.n_val, n_test=data.n_test, n_report=data.n_report)
        except SourceError as err:
            unread[name] = str(err)
            n_val = source.n_val or data.n_val
            info = {"unread": True, "rows_available": source.n_train or data.n_train, "val_rows": n_val,
                    "report_rows": source.n_report or data.n_report or n_val, "tokens_per_row": source.tokens_per_row}
            splits[name] = Distribution(name, [], [], [], f"unread:{name}", info, [], f"unread:{name}")
    if not unread:
        return splits, ""
    guessed = [n for n in unread if splits[n].info["tokens_per_row"] is None]
    first = next(iter(unread.values()))
    return splits, (f"plan: data of {', '.join(unread)} not read ({first[:160]}); planned with the config's row "
                    "counts and data.sources.<name>.tokens_per_row"
                    + (f" ({', '.join(guessed)}: not stated, {DEFAULT_TOKENS_PER_ROW} assumed)" if guessed else "")
                    + ", so no run can show as cached")


def slice_tokens(splits: dict[str, Distribution], seq_len: int) -> dict[str, int]:
    """Forward tokens of one pass over the selection slice and over the report slice, before tokenising: rows
    read → characters ÷ CHARS_PER_TOKEN; rows not read → rows × tokens_per_row. Each distribution's slice is
    packed into whole blocks of seq_len, as perplexity feeds it (the last block padded)."""
    out = {"selection": 0, "report": 0}
    for d in splits.values():
        for key, rows, n in (("selection", d.val, "val_rows"), ("report", d.report, "report_rows")):
            if d.info.get("unread"):
                tokens = d.info[n] * (d.info["tokens_per_row"] or DEFAULT_TOKENS_PER_ROW)
            else:
                tokens = sum(len(e.text) for e in rows) / CHARS_PER_TOKEN
            out[key] += math.ceil(tokens / seq_len) * seq_len
    return out


@dataclass(frozen=True)
class ModelCost:
    """One reported model's compute in a plan: every training run it is charged for (key → FLOPs), its
    selection's forward passes, and its evaluation (lm-eval when `scored`, and the validation perplexities)."""

    label: str
    runs: dict[str, float]
    search_flops: float
    eval_flops: float
    scored: bool

    @property
    def train_flops(self) -> float:
        return sum(self.runs.values())


def task_flops(config: PretrainedConfig, cost: Any, limit: int | None, robustness: bool) -> float:
    """lm-eval FLOPs of one task on one model, from its eval.cost entry: items × (requests × a forward pass over
    the prompt + the generated tokens, each attending to the prompt and what came before), twice for a task the
    HELM robustness pass scores again. `limit` (the task's eval.limit) caps the items of each subtask."""
    items = cost.n_items if limit is None else min(cost.n_items, limit * cost.subtasks)
    per_item = cost.requests * forward_flops(config, cost.prompt_tokens, cost.prompt_tokens)
    if cost.generated_tokens:
        per_item += forward_flops(config, cost.generated_tokens, cost.prompt_tokens + cost.generated_tokens)
    return items * per_item * (2 if cost.perturbed and robustness else 1)


def validation_tokens(ctx: Any) -> tuple[int, int]:
    """Forward tokens of one pass over the selection slice and over the report slice: counted from the packed
    blocks once tokenised (a run), else the plan's estimate (ctx.slice_tokens)."""
    if ctx.val:
        return (sum(int(v[0].numel()) for v in ctx.val.values()),
                sum(int(v[0].numel()) for v in ctx.report.values()))
    return ctx.slice_tokens.get("selection", 0), ctx.slice_tokens.get("report", 0)


def model_costs(ctx: Any, arms: list[Any], done: Mapping[str, Any]) -> tuple[list[ModelCost], list[str]]:
    """Every model the comparison reports — the base, each single-distribution fine-tune, each arm's rows — with
    its training, search and evaluation FLOPs, and notes on what could not be estimated."""
    cfg, seq_len = ctx.cfg, ctx.cfg.budget.seq_len
    selection, report = validation_tokens(ctx)
    score_models = OmegaConf.select(cfg, "eval.score_models", default=None)  # None: every model is scored
    costs_ = {t: cfg.eval.cost[t] for t in cfg.eval.tasks if t in cfg.eval.cost}
    notes = []
    if missing := [t for t in cfg.eval.tasks if t not in cfg.eval.cost]:
        notes.append(f"lm-eval cost of {', '.join(missing)} not estimated (no eval.cost entry)")
    limit = plain(cfg.eval.limit)  # an int for every task, or {task: int} (None: every item)
    lm_eval = sum(task_flops(ctx.model_config, c, limit.get(t) if isinstance(limit, dict) else limit,
                             cfg.eval.helm.robustness) for t, c in costs_.items())
    perplexity = forward_flops(ctx.model_config, selection + report, seq_len)  # each model: both slices once

    def run_flops(p: Any) -> tuple[str, float]:
        tokens = p.spec.train_tokens if p.spec else p.train_tokens
        return (p.spec.key if p.spec else f"{p.arm}: {p.note}"), (p.flops if p.flops is not None
                                                                    else ctx.train_flops(tokens))

    def model(label: str, runs: list[Any], passes: int, on: str | None = None) -> ModelCost:
        config = ctx.for_model(on).model_config if on and ctx.for_model else ctx.model_config
        scored = score_models is None or label in score_models
        return ModelCost(label, dict(run_flops(p) for p in runs), passes * forward_flops(config, selection, seq_len),
                         perplexity + (lm_eval if scored else 0.0), scored)

    rows = [model("base", [], 0)]
    rows += [model(f"only_{n}", [Planned("reference", ctx.run_spec({n: 1.0}))], 0) for n in ctx.names]
    for arm in arms:
        planned = getattr(arm, "planned_models", None)
        if planned is None:
            notes.append(f"arm {arm.name} declares no planned_models: costed as one model, no selection passes")
            rows.append(model(arm.name, arm.plan(ctx, done), 0))
            continue
        rows += [model(m.label, m.runs, m.selection_passes, m.selection_model) for m in planned(ctx, done)]
    if ctx.base.record.get("located") is False:
        notes.append(f"model {cfg.model.name_or_path} not found locally (the hub is not asked in a plan): costed "
                     "from model.architecture")
    return rows, notes


def search_inputs(ctx: Any, arms: list[Any]) -> str | None:
    """What the arms' searches hold, from their optional `search_inputs(ctx)`: "adapters" (LoRA adapters only, no
    dense vector written), "vectors", or None when no arm searches."""
    kinds = {arm.search_inputs(ctx) for arm in arms if hasattr(arm, "search_inputs")}
    return None if not kinds else "adapters" if kinds == {"adapters"} else "vectors"


def memory_fit(ctx: Any, acc: Any, search_adapters: bool = False) -> str:
    """Whether one training run and the DEM search fit the accelerator's memory, in the dtype they would run in
    there (model.dtype auto is bf16 on these GPUs, whatever this machine runs; the memory line above is for this
    machine)."""
    cfg = ctx.cfg
    dtype = torch.float32 if cfg.model.dtype == "float32" else torch.bfloat16
    vector_dtype = dtype if cfg.dem.vector_dtype == "auto" else getattr(torch, cfg.dem.vector_dtype)
    m = estimate_memory(ctx.model_config, param_dtype=dtype, batch_size=cfg.budget.batch_size,
                        seq_len=cfg.budget.seq_len, gradient_checkpointing=cfg.model.gradient_checkpointing,
                        n_vectors=len(ctx.names), vector_dtype=vector_dtype, vectors_on=cfg.dem.vectors_on,
                        adapter_params=ctx.adapter_params, search_adapters=search_adapters)
    room = acc.memory_gb * 1e9
    state = m["weights"] + m["gradients"] + m["optimizer"]
    train = "fits" if m["train_peak"] <= room else (
        f"does NOT fit (weights, gradients and AdamW alone {bytes_human(state)}, and data-parallel training "
        "replicates them on every device): pick an accelerator with more memory")
    search = "fits" if m["search_peak_device"] <= room else "does NOT fit: dem.vectors_on=cpu streams the vectors"
    return (f"on it ({str(dtype).removeprefix('torch.')}, harness/runs/cost.py): training peak ≈ "
            f"{bytes_human(m['train_peak'])} of its {acc.memory_gb} GB, {train}; DEM search peak ≈ "
            f"{bytes_human(m['search_peak_device'])} (dem.vectors_on={cfg.dem.vectors_on}), {search}")


def hours_table(rows: list[tuple[str, int, float, float, float]], rate: float) -> list[str]:
    """Rows of (label, runs, training, search, evaluation FLOPs) as device-hours at `rate` FLOP/s, with FLOPs."""
    lines = [f"  {'model':<24} {'runs':>4} {'training h':>11} {'search h':>9} {'evaluation h':>12} {'total h':>9} "
             f"{'FLOPs':>9}"]
    for label, runs, train, search, evaluation in rows:
        total = train + search + evaluation
        lines.append(f"  {label:<24} {runs:>4} {train / rate / 3600:>11.4g} {search / rate / 3600:>9.4g} "
                     f"{evaluation / rate / 3600:>12.4g} {total / rate / 3600:>9.4g} {total:>9.3g}")
    return lines


def total_row(costs: list[ModelCost], runs: dict[Any, float]) -> tuple[str, int, float, float, float]:
    """Every model together, each distinct run once (`runs`: run → FLOPs)."""
    return ("all (each run once)", len(runs), sum(runs.values()), sum(r.search_flops for r in costs),
            sum(r.eval_flops for r in costs))


def device_hours_text(ctx: Any, arms: list[Any], done: Mapping[str, Any]) -> str:
    """Device-hours per reported model and in total on plan.accelerator at plan.mfu: FLOPs ÷ (peak × MFU),
    split into training, search (selection passes) and evaluation, with what the estimate assumes."""
    cfg = ctx.cfg
    acc, mfu = ACCELERATORS[cfg.plan.accelerator], cfg.plan.mfu
    costs, notes = model_costs(ctx, arms, done)
    rows = [(r.label if r.scored else f"{r.label} (ppl only)", len(r.runs), r.train_flops, r.search_flops,
             r.eval_flops) for r in costs]
    rows.append(total_row(costs, {k: f for r in costs for k, f in r.runs.items()}))  # a run several rows need, once
    tasks = [t for t in cfg.eval.tasks if t in cfg.eval.cost]
    selection, report = validation_tokens(ctx)
    return "\n".join([
        f"device-hours on one {acc.name} at {mfu:.0%} MFU: FLOPs ÷ ({acc.peak_flops / 1e12:g} TFLOP/s × {mfu:g}) "
        f"(plan.accelerator={cfg.plan.accelerator}: {acc.source}; plan.mfu)",
        "  " + memory_fit(ctx, acc, search_inputs(ctx, arms) == "adapters"),
        *hours_table(rows, acc.peak_flops * mfu),
        f"  assumes: training = 3 × forward FLOPs per token (harness/runs/cost.py); search = selection passes × the "
        f"selection slice ({selection:,} tokens{'' if ctx.val else ', estimated'}); evaluation = lm-eval "
        f"({', '.join(tasks) or 'no task costed'}: eval.cost items × prompt tokens, limit={cfg.eval.limit}, "
        f"robustness={cfg.eval.helm.robustness}) + one pass over each validation slice ({selection:,} + {report:,} "
        "tokens) per model; generation decodes far below training MFU, so its hours are a floor",
        *(f"  note: {n}" for n in notes)])


def sweep_hours_text(jobs: list[tuple[Any, str, list[ModelCost]]]) -> str:
    """A sweep's device-hours per reported model (summed over its jobs) and in total, where a run several jobs share
    (the same run in the same cache) counts once; one table per accelerator and MFU the jobs name.
    `jobs`: (config, cache root, model costs) per job."""
    groups: dict[tuple[str, float], list[tuple[str, list[ModelCost]]]] = {}
    for cfg, cache_root, costs in jobs:
        groups.setdefault((cfg.plan.accelerator, cfg.plan.mfu), []).append((cache_root, costs))
    lines = []
    for (name, mfu), members in groups.items():
        acc = ACCELERATORS[name]
        per_label: dict[str, list[float]] = {}
        for _, costs in members:
            for r in costs:
                row = per_label.setdefault(r.label, [0, 0.0, 0.0, 0.0])
                row[0] += len(r.runs)
                row[1] += r.train_flops
                row[2] += r.search_flops
                row[3] += r.eval_flops
        runs = {(root, k): f for root, costs in members for r in costs for k, f in r.runs.items()}
        every = [r for _, costs in members for r in costs]
        rows = [(label, int(n), t, s, e) for label, (n, t, s, e) in per_label.items()]
        lines += [f"sweep device-hours on one {acc.name} at {mfu:.0%} MFU, {len(members)} job(s) summed "
                  "(a run several jobs share counted once in the total):",
                  *hours_table([*rows, total_row(every, runs)], acc.peak_flops * mfu)]
    return "\n".join(lines)
