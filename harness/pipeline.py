"""The comparison, top to bottom: the arms named in `arms` (data mixing, DEM, …) under one compute budget.

config → data → base model → every arm plans its training runs (the plan is printed) → the runs are trained
through the locked run cache → each arm selects its model(s) → lm-eval on every model (and the base and each
single-distribution fine-tune) → statistics, cost and quality → report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from harness.arm_registry import make_arm
from harness.arms import Arm, Candidate, Context, Planned
from harness.config import SourceConfig, model_preset, plain
from harness.data.builtin import bbh_object_counting, generate_splits
from harness.data.mirror import hub_mirror
from harness.data.sources import Distribution, load_distribution
from harness.data.tokens import encode, pack, pack_examples
from harness.evaluation.checks import check_eval, mirror_fingerprint
from harness.evaluation.contamination import affected, check, overlap, task_documents, training_texts
from harness.evaluation.perplexity import perplexity, selection_score, sums_of
from harness.evaluation.perturb import VERSION as PERTURB_VERSION
from harness.evaluation.results import flat_scores, headline_metric
from harness.evaluation.runner import evaluate
from harness.evaluation.tasks import TASK_VERSION, chance_level, fewshot_for, generates, limit_for, write_tasks
from harness.models import lora
from harness.models.loading import DTYPES, load_model, load_tokenizer, resolve_runtime
from harness.plan import (
    Row,
    describe,
    device_hours_text,
    measured_flops_per_second,
    resources,
    run_table,
    search_inputs,
)
from harness.report.comparison import rows, write_atomic, write_report
from harness.report.tracking import Tracker
from harness.runs import cost, provenance
from harness.runs.base import base_config, load_options, prepare_base, runtime_spec
from harness.runs.cache import Entry, RunCache, spec_key
from harness.runs.executor import make_executor
from harness.runs.spec import DATA_VERSION, RunSpec, normalise, pool_spec, store_pools, tokenizer_spec
from harness.runs.stopwatch import Stopwatch, stage
from harness.stats.retention import retention
from harness.stats.significance import statistics

log = logging.getLogger(__name__)

CONTAMINATION_VERSION = 1  # bump when harness/evaluation/contamination.py's counts change meaning
CONTAMINATION_METHOD = ("exact normalised text and 13-gram overlap (lm-eval's Janitor normalisation) of each "
                        "source's training rows with each scored document; 'contained': exact, or half the "
                        "document's content words in shared 13-grams (harness/evaluation/contamination.py)")
VALIDATION_NOTE = ("val_ppl, val_ppl_by_dist, their CIs and paired tests are on the report slice, which no selection "
                   "sees; selection_val_ppl is on the selection slice the search and the grid chose on (optimistic "
                   "for the models chosen on it)")


def run_comparison(cfg: DictConfig, output_dir: Path, sweep: dict[str, str] | None = None) -> Path:
    """Run the configured arms; write summary.json, results.csv, report.md, cost_quality.png into output_dir.

    With `hub_mirror` set, every hub dataset (training sources, lm-eval tasks) is read from that folder. `sweep`
    ({"group": sweep folder name, "job_type": the swept values}) puts a sweep's jobs in one W&B group."""
    with hub_mirror(cfg.hub_mirror), Stopwatch() as watch:
        return _compare(cfg, output_dir, sweep or {}, watch)


def _compare(cfg: DictConfig, output_dir: Path, sweep: dict[str, str], watch: Stopwatch) -> Path:
    started = time.perf_counter()
    prov = provenance.collect()  # at the start: a commit made while the run is going on is not the code it ran
    out = output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = RunCache(cfg.cache_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.tracking.mode, cfg.tracking.project, out, resolved, **sweep)

    # 1. Distributions: train/val(/test) rows from each one's source — built-in generators, local files or the
    #    hub — with a fingerprint of the rows used, which every cache key that reads them includes.
    with stage("data"):
        splits = load_data(cfg)

    # 1b. Training on what is scored: every source's training rows against every scored task's documents; a
    #     source holding a task's test documents stops the run here (one line), unless eval.allow_contamination.
    with stage("contamination check"):
        contamination = check_contamination(cfg, cache, out, splits)

    # 2. The base model θ₀ (built, converted or located once) on the configured device and dtype, its tokenizer,
    #    and the training rows tokenized into the cache, where any training job can read them.
    ctx = make_context(cfg, cache, out, splits, build=True)
    ctx.tracker = tracker

    # 3. Plan: every run each arm needs (plus the single-distribution reference runs), printed with its cost,
    #    memory and disk before any training — stop here if the disk cannot hold it.
    arms = [make_arm(name, cfg) for name in cfg.arms]
    with stage("plan"):
        log.info(plan_text(ctx, arms, done={}))

    # 4. Train what is planned, round after round (an arm may name runs that depend on earlier results, as
    #    RegMix's full run depends on its proxies); every run goes through the cache (finished runs are reused).
    with stage("training (outside the runs)"):
        done = train_planned(ctx, arms)

    # 5. Each arm selects its model(s); the base and each single-distribution fine-tune are reported beside them.
    candidates = references(ctx, done)
    for arm in arms:
        with stage(f"select {arm.name} (other)"):
            candidates += arm.select(ctx, done)

    # 6. Validation perplexity and lm-eval for every model; each row charged for every run it needed.
    evaluator = Evaluator(ctx, splits)
    evaluator.n_models = sum(evaluator.wanted(c.label) for c in candidates)
    methods = {c.label: method_entry(ctx, c, done, evaluator, prov["git_commit"]) for c in candidates}

    # 7. Statistics from the per-sample results, cost and quality; the report (summary.json last: it marks the
    #    run complete).
    with stage("statistics"):
        stats, kept = cached_statistics(ctx, methods, evaluator)
    summary = {
        "methods": methods,
        **cost_ratios(methods),
        "selection_metric": cfg.selection.metric,
        "statistics": stats,
        "retention": kept,
        "chance": evaluator.chance(),
        "task_versions": {t: r["version"] for t, r in evaluator.results.items()},
        "headline_metrics": evaluator.headline,
        "higher_is_better": evaluator.higher,
        "contamination": {**contamination, "affected": affected(contamination["contaminated"], evaluator.results)},
        "seed": cfg.seed,
        "seeds": OmegaConf.to_container(cfg.seeds, resolve=True),
        "data": {n: {"fingerprint": d.fingerprint, "report_fingerprint": d.report_fingerprint, **d.info}
                 for n, d in splits.items()},
        "validation": {"selection": {n: len(d.val) for n, d in splits.items()},
                       "report": {n: len(d.report) for n, d in splits.items()},
                       "note": VALIDATION_NOTE},
        "runtime": {"device": ctx.runtime.name, "dtype": str(ctx.runtime.dtype).removeprefix("torch.")},
        "config": resolved,
        "provenance": prov,
        "wall_s": time.perf_counter() - started,
        "output_dir": str(out),
    }
    with stage("W&B"):
        tracker.finish(rows(summary), {k: summary[k] for k in ("cost_ratio", "cost_ratio_train") if k in summary})
    # timings.json covers every stage before this line; the report's own writing falls outside it
    write_atomic(out / "timings.json", json.dumps(watch.timings(), indent=1))  # before summary.json: complete
    write_report(summary, out)
    return out


# ---------------------------------------------------------------------------------------------------- the steps


STATS_CODE = sorted((Path(__file__).parent / "stats").glob("*.py"))  # what computes statistics: part of their key


def cached_statistics(ctx: Context, methods: Mapping[str, Any], evaluator: Evaluator) -> tuple[dict, dict]:
    """summary's `statistics` and `retention` (10,000-resample bootstraps, 2 s of a 14 s warm rerun), as a cache
    entry keyed by everything they read — the rows, every per-sample file's bytes, the per-example perplexities,
    the seed — and by the statistics code's own bytes, so a change to either computes them afresh."""
    cfg = ctx.cfg
    keyed = {label: {k: v for k, v in m.items() if k != "built_by_other_commit"} for label, m in methods.items()}
    inputs = hashlib.sha256(json.dumps(  # built_by_other_commit: provenance, which a rerun by other code changes
        [keyed, evaluator.ppl_units, evaluator.headline, evaluator.groups, evaluator.higher,
         list(cfg.data.distributions), cfg.seeds.search], sort_keys=True, default=str).encode())
    for label, folder in sorted(evaluator.samples.items()):
        for f in sorted(Path(folder).rglob("*.jsonl")):
            inputs.update(f"{label}/{f.relative_to(folder)}".encode())
            inputs.update(f.read_bytes())
    code = hashlib.sha256(b"".join(f.read_bytes() for f in STATS_CODE)).hexdigest()
    spec = {"inputs": inputs.hexdigest(), "code": code, "numpy": np.__version__, "scipy": scipy.__version__}

    def compute(folder: Path) -> dict[str, Any]:
        stats = statistics(methods, evaluator.samples, evaluator.ppl_units, evaluator.headline, evaluator.groups,
                           seed=cfg.seeds.search, higher=evaluator.higher)
        kept = retention(methods, evaluator.samples, evaluator.ppl_units, evaluator.headline, evaluator.groups,
                         names=list(cfg.data.distributions), seed=cfg.seeds.search, higher=evaluator.higher)
        return {"statistics": stats, "retention": kept}

    record = ctx.cache.get_or_create("summary_stats", spec, compute, "statistics").record  # JSON-normalised, hit or not
    return record["statistics"], record["retention"]


def source_of(cfg: DictConfig, name: str) -> SourceConfig:
    """A distribution's source config; a name without an entry is built-in."""
    return OmegaConf.to_object(cfg.data.sources[name]) if name in cfg.data.sources else SourceConfig()


def load_data(cfg: DictConfig) -> dict[str, Distribution]:
    return {n: load_distribution(n, source_of(cfg, n), seed=cfg.seeds.data, n_train=cfg.data.n_train,
                                 n_val=cfg.data.n_val, n_test=cfg.data.n_test, n_report=cfg.data.n_report)
            for n in cfg.data.distributions}


def make_context(cfg: DictConfig, cache: RunCache, out: Path, splits: dict[str, Distribution],
                 build: bool) -> Context:
    """Everything arms need to name, train and measure runs. With build=False (a plan only) nothing is written:
    the base and the token pools are named by their keys, not made."""
    names = list(cfg.data.distributions)
    runtime = resolve_runtime(cfg.model.device, cfg.model.dtype)
    options = load_options(cfg.model)
    with stage("base model"):
        base = prepare_base(cfg, cache, runtime, build=build)
    fingerprints = {n: d.fingerprint for n, d in splits.items()}
    tokenizer = tokenizer_spec(base.key, options)
    budget = OmegaConf.to_container(cfg.budget, resolve=True)
    if build:
        log.info("base model %s from %s on %s (%s)", base.key, base.path, runtime.name, runtime.dtype)
        tok = load_tokenizer(base.path, options)
        with stage("tokenisation"):
            pools = store_pools(cache, tokenizer, {n: lambda s=s: [encode(tok, e) for e in s.train]
                                                   for n, s in splits.items()}, fingerprints)
        model_config = AutoConfig.from_pretrained(base.path, trust_remote_code=options.trust_remote_code)
    else:
        tok = None
        pools = {n: spec_key("pools", pool_spec(tokenizer, fingerprints[n])) for n in names}
        model_config = planned_model_config(cfg, base.path, options)
    budget_cfg = {k: v for k, v in budget.items() if k != "mode"}  # the mode decides tokens; runs record tokens
    dtype_name = str(runtime.dtype).removeprefix("torch.")
    training = lora.settings(cfg.training)
    adapter_params = (cost.lora_params(model_config, training["lora"]["r"], training["lora"]["target_modules"])
                      if training else None)

    def run_spec(weights: dict[str, float], train_tokens: int | None = None) -> RunSpec:
        w = normalise(weights)
        return RunSpec(base_key=base.key, base_path=str(base.path), weights=w,
                       fingerprints={n: fingerprints[n] for n in w}, pools={n: pools[n] for n in w},
                       budget={**budget_cfg, "train_tokens": int(train_tokens or budget["train_tokens"])},
                       seed=cfg.seeds.train, device=str(runtime.device), dtype=dtype_name,
                       options=asdict(options), gradient_checkpointing=cfg.model.gradient_checkpointing,
                       training=training)

    data_spec = {"version": DATA_VERSION, "seed": cfg.seeds.data, "fingerprints": fingerprints, "tokenizer": tokenizer}
    report_spec = {"version": DATA_VERSION, "seed": cfg.seeds.data, "slice": "report", "tokenizer": tokenizer,
                   "fingerprints": {n: d.report_fingerprint for n, d in splits.items()}}
    ctx = Context(cfg=cfg, cache=cache, names=names,
                  rows_available={n: d.info.get("rows_available") or len(d.train) for n, d in splits.items()},
                  out=out, base=base, runtime=runtime, options=options, seeds=cfg.seeds, data_spec=data_spec,
                  report_spec=report_spec,
                  run_spec=run_spec, score=lambda record: selection_score(sums_of(record), cfg.selection.metric),
                  train_flops=lambda tokens: cost.train_flops(model_config, tokens, cfg.budget.seq_len, adapter_params),
                  model_config=model_config, tokenizer=tok, adapter_params=adapter_params)
    if build:
        with stage("tokenisation"):
            ctx.val = {n: pack([encode(tok, e) for e in s.val], cfg.budget.seq_len, tok.pad_token_id,
                               drop_last=False) for n, s in splits.items()}
            ctx.report = {n: pack_examples([encode(tok, e) for e in s.report], cfg.budget.seq_len, tok.pad_token_id)
                          for n, s in splits.items()}
        ctx.load = lambda path: load_model(path, runtime, options, base=base.path)  # base: for LoRA runs

        def measure(model_key: str, open_model: Any) -> dict[str, Any]:
            spec = {"model": model_key, "data": data_spec, "seq_len": cfg.budget.seq_len, "names": names,
                    "format": 2, **runtime_spec(runtime)}  # format 2: per-block nll kept for confidence intervals
            return cache.get_or_create("ppl", spec, lambda d: perplexity(open_model(), ctx.val)).record

        def measure_report(model_key: str, open_model: Any) -> dict[str, Any]:
            spec = {"model": model_key, "data": ctx.report_spec, "seq_len": cfg.budget.seq_len, "names": names,
                    "format": 3, **runtime_spec(runtime)}  # format 3: per-example nll (whole examples resampled)
            return cache.get_or_create("ppl", spec, lambda d: perplexity(open_model(), ctx.report)).record

        ctx.measure = measure
        ctx.measure_report = measure_report
    others: dict[str, Context] = {}

    def for_model(preset: str) -> Context:
        """This comparison's context for another model preset (RegMix's proxy model): same data and device."""
        if preset not in others:
            model = model_preset(preset)
            model.device, model.dtype = cfg.model.device, cfg.model.dtype
            sub = OmegaConf.merge(cfg, {"model": model})
            others[preset] = make_context(sub, cache, out, splits, build)
        return others[preset]

    ctx.for_model = for_model
    return ctx


def planned_model_config(cfg: DictConfig, base_path: Path, options: Any) -> Any:
    """The base's config for cost estimates before it exists: its own once built or located, else what the
    preset describes (harness.runs.base.base_config)."""
    if (base_path / "config.json").exists():
        return AutoConfig.from_pretrained(base_path, trust_remote_code=options.trust_remote_code)
    return base_config(cfg.model, plan=True)


def all_planned(ctx: Context, arms: list[Arm], done: Mapping[str, Entry]) -> list[Planned]:
    """The reference runs (one fine-tune per distribution, reported as only_<name>) and every arm's runs."""
    references_ = [Planned("reference", ctx.run_spec({n: 1.0}), f"only_{n}") for n in ctx.names]
    return references_ + [p for arm in arms for p in arm.plan(ctx, done)]


def plan_text(ctx: Context, arms: list[Arm], done: Mapping[str, Entry]) -> str:
    """The plan: a table of every run (cached or to train, tokens, FLOPs, time) and the memory/disk estimate.
    Raises PlanError when the disk cannot hold the new checkpoints and vectors."""
    planned = all_planned(ctx, arms, done)
    arms_of: dict[str, list[str]] = {}  # a run several arms need (a grid corner is a DEM fine-tune) is listed once
    for p in planned:
        if p.spec is not None and p.arm not in arms_of.setdefault(p.spec.key, []):
            arms_of[p.spec.key].append(p.arm)
    table, listed = [], set()
    for p in planned:
        if p.spec is not None and p.spec.key in listed:
            continue
        tokens = p.spec.train_tokens if p.spec else p.train_tokens
        arm = "+".join(arms_of[p.spec.key]) if p.spec else p.arm
        flops = p.flops if p.flops is not None else ctx.train_flops(tokens)
        table.append(Row(arm, p.spec.label if p.spec else "(to be chosen)", p.note, tokens, flops,
                         p.spec is not None and ctx.cache.has("train", p.spec.cache_spec())))
        if p.spec is not None:
            listed.add(p.spec.key)
    dtype = str(ctx.runtime.dtype).removeprefix("torch.")
    rate, how = measured_flops_per_second(ctx.cache.root, ctx.runtime.device.type, dtype)
    dem = ctx.cfg.dem
    searched = search_inputs(ctx, arms)
    vector_dtype = ctx.runtime.dtype if dem.vector_dtype == "auto" else DTYPES[dem.vector_dtype]
    budget = resources(ctx.model_config, dtype=ctx.runtime.dtype, batch_size=ctx.cfg.budget.batch_size,
                       seq_len=ctx.cfg.budget.seq_len, gradient_checkpointing=ctx.cfg.model.gradient_checkpointing,
                       n_vectors=len(ctx.names), vector_dtype=vector_dtype, vectors_on=dem.vectors_on,
                       n_new_checkpoints=sum(not r.cached for r in table),
                       n_new_vectors=len(ctx.names) if searched == "vectors" else 0,
                       cache_root=ctx.cache.root, check_disk=not ctx.cfg.plan_only, adapter_params=ctx.adapter_params,
                       search_adapters=searched == "adapters",
                       statistics_bytes=sum(arm.statistics_bytes(ctx) for arm in arms
                                            if hasattr(arm, "statistics_bytes")))
    return "\n".join([run_table(table, rate, how), describe(budget, ctx.runtime.name),
                      device_hours_text(ctx, arms, done)])


def train_planned(ctx: Context, arms: list[Arm]) -> dict[str, Entry]:
    """Train every planned run through the executor, until no arm names a new one."""
    executor = make_executor(ctx.cfg.executor, ctx.cache.root)
    done: dict[str, Entry] = {}
    while True:
        todo: dict[str, tuple[str, RunSpec]] = {}
        for p in all_planned(ctx, arms, done):
            if p.spec is not None and p.spec.key not in done:
                todo.setdefault(p.spec.key, (p.arm, p.spec))
        if not todo:
            return done
        for key, entry in executor.run(list(todo.values()), ctx.cache.root).items():
            done[key] = entry
            r = entry.record
            ctx.tracker.log({"run/label": todo[key][1].label, "run/arm": todo[key][0],
                             "run/train_loss": r["train_loss"], "run/train_tokens": r["train_tokens"],
                             "run/train_flops": r["train_flops"], "run/train_wall_s": r["train_wall_s"],
                             "run/cached": entry.hit})


def references(ctx: Context, done: Mapping[str, Entry]) -> list[Candidate]:
    """The shared starting point and each single-distribution fine-tune, reported beside the arms."""
    base = ctx.base
    rows_ = [Candidate("base", base.key, lambda: ctx.load(base.path), [], 0,
                       {"source": base.record["source"], "pretrain_tokens": base.record.get("train_tokens", 0)})]
    for n in ctx.names:
        run = done[ctx.run_spec({n: 1.0}).key]
        rows_.append(Candidate(f"only_{n}", run.record["key"], lambda run=run: ctx.load(run.path),
                               [run.record["key"]], 0, {"weights": {n: 1.0}}))
    return rows_


def builtin_test_sets(cfg: DictConfig, splits: Mapping[str, Distribution], tasks: Iterable[str]) -> dict[str, list]:
    """The items each built-in task scores: the seeded generator's held-out test items of its distribution."""
    out = {}
    for task in tasks:
        if task == "bbh_object_counting":
            out[task] = bbh_object_counting(cfg.seeds.data, cfg.data.n_test)
            continue
        n = task.removesuffix("_mc")
        s = splits.get(n)
        out[task] = (s if s is not None and s.test else
                     generate_splits(n, cfg.seeds.data, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test)).test
    return out


def check_contamination(cfg: DictConfig, cache: RunCache, out: Path, splits: Mapping[str, Distribution]
                        ) -> dict[str, Any]:
    """Every source's training rows against every scored task's documents (exact text, 13-grams: see
    harness/evaluation/contamination.py), through the cache (reading a large suite's documents takes a minute). Raises
    ContaminationError when a source holds a stock task's test documents, unless eval.allow_contamination.

    Built-in tasks are reported, never refused: their items come from the training generators' own templates
    (held out by exact text, so near-duplicates by construction)."""
    tasks = list(cfg.eval.tasks)
    selection = check_eval(tasks, plain(cfg.eval.num_fewshot), cfg.hub_mirror)
    items = write_tasks(out / "tasks", builtin_test_sets(cfg, splits, selection.builtin))
    spec = {"train": {n: d.fingerprint for n, d in splits.items()}, "tasks": tasks, "limit": plain(cfg.eval.limit),
            "builtin_items": items, "lm_eval": provenance.version("lm_eval"), "version": CONTAMINATION_VERSION,
            "mirror": mirror_fingerprint(tasks, cfg.hub_mirror) if cfg.hub_mirror else None}

    def build(folder: Path) -> dict[str, Any]:
        docs = task_documents(tasks, task_dir=out / "tasks", mirror=cfg.hub_mirror, limit=plain(cfg.eval.limit))
        return {"overlap": overlap(training_texts(splits), docs)}

    result = cache.get_or_create("contamination", spec, build, "training rows vs scored documents").record["overlap"]
    exempt = sorted({t for per_task in result.values() for t in per_task if t in selection.builtin})
    pairs = check(result, allow=cfg.eval.allow_contamination, exempt=exempt)
    if pairs:
        log.warning("eval.allow_contamination=true: scoring despite %s", ", ".join(f"{s}→{t}" for s, t in pairs))
    return {"overlap": result, "contaminated": [list(p) for p in pairs], "allowed": cfg.eval.allow_contamination,
            "exempt_builtin": exempt, "method": CONTAMINATION_METHOD}


@dataclass
class Evaluator:
    """lm-eval on each model through the cache, one entry per (model, listed task): adding a task to a finished run
    scores only that task, and a run stopped during evaluation resumes at the task it was on. The built-in tasks
    are written once; every result and per-sample record is kept."""

    ctx: Context
    splits: dict[str, Distribution]
    n_models: int = 0  # how many models will be scored (for progress and the time-left estimate)

    def __post_init__(self) -> None:
        cfg, ctx = self.ctx.cfg, self.ctx
        self.tasks = list(cfg.eval.tasks)
        helm = cfg.eval.helm
        self.selection = check_eval(self.tasks, plain(cfg.eval.num_fewshot), cfg.hub_mirror,
                                    perturbations=list(helm.perturbations) if helm.robustness else None)
        self.test_sets = builtin_test_sets(cfg, self.splits, self.selection.builtin)
        items = write_tasks(ctx.out / "tasks", self.test_sets)  # keyed by the exact items, not the sizes asked
        common = {"lm_eval": provenance.version("lm_eval"), "load_options": asdict(ctx.options),
                  "helm": {**OmegaConf.to_container(helm), "perturb_version": PERTURB_VERSION},
                  "task_version": TASK_VERSION, "format": 3, **runtime_spec(ctx.runtime)}
        num_fewshot, limit = plain(cfg.eval.num_fewshot), plain(cfg.eval.limit)
        self.specs = {}  # per listed task: everything its score depends on besides the model
        for task in self.tasks:
            self.specs[task] = {
                "task": task, "limit": limit_for(limit, task), "num_fewshot": fewshot_for(num_fewshot, task),
                "gen_kwargs": plain(cfg.eval.gen_kwargs) if generates(task) else None,
                "builtin_items": items.get(task),
                "mirror": mirror_fingerprint([task], cfg.hub_mirror) if cfg.hub_mirror and task not in items else None,
                **common}
        self.results: dict[str, dict[str, Any]] = {}  # the last scored model's results (versions, headline metrics)
        self.samples: dict[str, Path] = {}  # model label -> its per-sample records (scored models only)
        self.records: dict[str, list[dict[str, Any]]] = {}  # model label -> its evaluations' cache records
        self.ppl_units: dict[str, dict[str, Any]] = {}  # model label -> the report slice's per-example nll
        self.task_seconds: dict[str, float] = {}  # listed task -> seconds it took on a model (for the estimate)
        self.items: dict[str, int] = {}  # listed task -> items scored per model
        self.scored = 0  # models scored so far
        self.started = time.perf_counter()

    def wanted(self, label: str) -> bool:
        """Whether `eval.score_models` asks for this model (null: every model)."""
        chosen = self.ctx.cfg.eval.score_models
        return chosen is None or label in chosen

    def scores(self, candidate: Candidate) -> dict[str, float]:
        """Every listed task's scores for one model, each task through its own cache entry."""
        cfg, ctx = self.ctx.cfg, self.ctx
        self.scored += 1
        samples = ctx.out / "samples" / candidate.label
        results: dict[str, dict[str, Any]] = {}
        self.records[candidate.label] = []
        model: list[Any] = []  # opened once, on the first task not in the cache

        for i, task in enumerate(self.tasks, 1):
            def run_eval(folder: Path, task: str = task, i: int = i) -> dict[str, Any]:
                if not model:
                    model.append(candidate.open())
                self._progress(candidate.label, i, task)
                began = time.perf_counter()
                with stage(f"lm-eval {candidate.label} {task}"):
                    result = evaluate(
                        model[0], ctx.tokenizer, tasks=[task], task_dir=ctx.out / "tasks",
                        num_fewshot=self.specs[task]["num_fewshot"], limit=self.specs[task]["limit"],
                        batch_size=cfg.eval.batch_size, gen_kwargs=self.specs[task]["gen_kwargs"],
                        samples_dir=folder / "samples", mirror=cfg.hub_mirror, robustness=cfg.eval.helm.robustness,
                        perturbations=list(cfg.eval.helm.perturbations), perturb_seed=cfg.eval.helm.seed)
                self.task_seconds[task] = time.perf_counter() - began
                return {"results": result, "eval_wall_s": self.task_seconds[task]}

            entry = ctx.cache.get_or_create("eval", {"model": candidate.model_key, **self.specs[task]}, run_eval,
                                            f"{candidate.label} {task}")
            self.records[candidate.label].append(entry.record)
            self.items[task] = entry.record["results"][task]["n"]
            shutil.copytree(entry.path / "samples", samples, dirs_exist_ok=True)  # per-sample outputs, for audits
            results |= entry.record["results"]
        self.samples[candidate.label] = samples
        self.results = results
        return flat_scores(results)

    def _progress(self, label: str, i: int, task: str) -> None:
        """One line per (model, task) scored: where it is, how many items, and the time left — estimated from the
        seconds each task took on an earlier model (known after the first model scored)."""
        items = f", {self.items[task]} items" if task in self.items else ""
        left_tasks = len(self.tasks) - i + 1 + (self.n_models - self.scored) * len(self.tasks)
        if self.task_seconds:
            per_task = {t: self.task_seconds.get(t) for t in self.tasks}
            known = [v for v in per_task.values() if v is not None]
            mean = sum(known) / len(known)
            this_model = sum(per_task.get(t) or mean for t in self.tasks[i - 1:])
            left = this_model + (self.n_models - self.scored) * sum(v or mean for v in per_task.values())
            eta = f"about {left / 60:.0f} min left"
        else:
            eta = "time left: estimated once a task has been scored"
        elapsed = (time.perf_counter() - self.started) / 60
        log.info("eval: model %d/%d %s, task %d/%d %s%s; %d (model, task) pairs to go, %.0f min so far, %s",
                 self.scored, self.n_models, label, i, len(self.tasks), task, items, left_tasks, elapsed, eta)

    @property
    def headline(self) -> dict[str, str]:
        return {t: headline_metric(self.results[t]) for t in self.tasks} if self.results else {}

    @property
    def higher(self) -> dict[str, bool]:
        """Per task, lm-eval's `higher_is_better` for its headline metric (True when lm-eval does not say)."""
        return {t: bool(self.results[t]["higher_is_better"].get(m.split(",")[0], True))
                for t, m in self.headline.items()}

    @property
    def groups(self) -> dict[str, list[str]]:
        """Each group task and its subtasks (for pooling per-sample records)."""
        return {t: r["subtasks"] for t, r in self.results.items() if r.get("group")}

    def chance(self) -> dict[str, float]:
        limit = plain(self.ctx.cfg.eval.limit)
        return {t: chance_level(self.test_sets[t][: limit_for(limit, t)]) for t in self.selection.builtin}


def method_entry(ctx: Context, c: Candidate, done: Mapping[str, Entry], evaluator: Evaluator,
                 commit: str | None = None) -> dict[str, Any]:
    """One model's entry in summary.json: its cost (every run it needed, plus its selection's forward passes),
    its quality (validation perplexity, every lm-eval score), and the cache entries it reused that another commit
    than the run's (`commit`) built."""
    records = [done[k].record for k in c.runs]
    with stage(f"perplexity {c.label}"):
        selection = ctx.measure(c.model_key, c.open)  # the slice the arms selected on: shown, never tested
        ppl = ctx.measure_report(c.model_key, c.open)  # the held-out report slice: every reported perplexity
    evaluator.ppl_units[c.label] = ppl["examples"]
    scored = evaluator.wanted(c.label)
    train_flops = sum(r["train_flops"] for r in records)
    selection_flops = c.selection_flops if c.selection_flops is not None else cost.forward_flops(
        ctx.model_config, c.selection_forward_tokens, ctx.cfg.budget.seq_len)
    selection_flops += (c.merge_cost or {}).get("stats_flops", 0.0)  # a data-aware merge's statistics
    return {
        "train_tokens": sum(r["train_tokens"] for r in records),
        "train_flops": train_flops,
        "train_wall_s": sum(r["train_wall_s"] for r in records),
        "train_device_s": sum(r.get("train_device_s", r["train_wall_s"]) for r in records),
        "devices": sorted({r["device"] for r in records if "device" in r}),
        "runs": len(records),
        "selection_forward_tokens": c.selection_forward_tokens,  # search trials, grid validation, RegMix proxies
        "search_forward_tokens": c.selection_forward_tokens,  # the old name, kept one release as an alias
        "selection_flops": selection_flops,
        "total_flops": train_flops + selection_flops,
        "val_ppl": ppl["val_ppl"],  # the report slice
        "val_ppl_by_dist": ppl["val_ppl_by_dist"],
        "val_score": ctx.score(ppl),
        "selection_val_ppl": selection["val_ppl"],  # the selection slice (optimistic for the selected models)
        "selection_val_ppl_by_dist": selection["val_ppl_by_dist"],
        "selection_val_score": ctx.score(selection),
        "scores": evaluator.scores(c) if scored else {},
        "scored": scored,  # false: eval.score_models left it out (perplexity only; its scores read "not run")
        "selected": c.selected,
        **({"merge_cost": c.merge_cost} if c.merge_cost is not None else {}),
        "built_by_other_commit": provenance.other_code(
            [*records, selection, ppl, *evaluator.records.get(c.label, []), *ctx.cache.records_of(c.model_key)],
            commit),
    }


def cost_ratios(methods: Mapping[str, Any]) -> dict[str, float]:
    """DEM's cost ÷ data mixing's: `cost_ratio` counts training and selection compute (DEM's search passes,
    the mixing arm's validation passes and proxies); `cost_ratio_train` training alone (the paper's 11x)."""
    if "dem" not in methods or "data_mixing" not in methods:
        return {}
    dem, mix = methods["dem"], methods["data_mixing"]
    return {"cost_ratio": dem["total_flops"] / mix["total_flops"],
            "cost_ratio_train": dem["train_flops"] / mix["train_flops"]}
