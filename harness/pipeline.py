"""The comparison, top to bottom: data mixing vs DEM under the same per-run token budget.

config → data → base model → plan runs → train (through the run cache) → mixing arm picks its best grid
point by validation perplexity → DEM arm builds vectors and searches merge weights by validation perplexity →
lm-eval on every model → cost + quality → report.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from baselines.grid import simplex_grid
from dem.merge import get_strategy, load_strategy_file
from dem.search import MergeSession, search_weights, storage_for
from dem.vectors import distribution_vector, load_vectors, save_vector
from harness import provenance
from harness.base import DATA_VERSION, load_options, prepare_base, runtime_spec
from harness.cache import Entry, RunCache, spec_key
from harness.config import plain, strategy_params
from harness.data import bbh_object_counting, generate_splits
from harness.evaluation import (
    TASK_VERSION,
    chance_level,
    check_eval,
    evaluate,
    flat_scores,
    headline_metric,
    mirror_fingerprint,
    write_tasks,
)
from harness.mirror import hub_mirror
from harness.models import DTYPES, Runtime, copy_params, load_model, load_tokenizer, resolve_runtime
from harness.perplexity import perplexity
from harness.plan import describe, resources
from harness.report import rows, write_atomic, write_report
from harness.sources import SourceConfig, load_distribution
from harness.tokens import encode, pack
from harness.tracking import Tracker
from harness.training import finetune

log = logging.getLogger(__name__)


def source_of(cfg: DictConfig, name: str) -> SourceConfig:
    """A distribution's source config; a name without an entry is built-in."""
    return OmegaConf.to_object(cfg.data.sources[name]) if name in cfg.data.sources else SourceConfig()


def run_comparison(cfg: DictConfig, output_dir: Path) -> Path:
    """Run both arms for a validated config; write summary.json, results.csv, report.md, cost_quality.png.

    With `hub_mirror` set, every hub dataset (training sources, lm-eval tasks) is read from that folder."""
    with hub_mirror(cfg.hub_mirror):
        return _compare(cfg, output_dir)


def _compare(cfg: DictConfig, output_dir: Path) -> Path:
    started = time.perf_counter()
    out = output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = RunCache(cfg.cache_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.tracking.mode, cfg.tracking.project, out, resolved)
    names = list(cfg.data.distributions)
    seed = cfg.seed

    # 1. Distributions: train/val(/test) rows from each one's source — built-in generators, local files or the
    #    hub — with a fingerprint of the rows used, which every cache key that depends on them includes.
    splits = {n: load_distribution(n, source_of(cfg, n), seed=seed, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
                                   n_test=cfg.data.n_test) for n in names}
    fingerprints = {n: d.fingerprint for n, d in splits.items()}
    data_spec = {"version": DATA_VERSION, "seed": seed, "fingerprints": fingerprints}

    # 2. Base model + tokenizer from the model source (built, converted or located once), on the configured
    #    device and in its dtype — training, perplexity, search and lm-eval all run there.
    runtime = resolve_runtime(cfg.model.device, cfg.model.dtype)
    options = load_options(cfg.model)
    base = prepare_base(cfg, cache, runtime)
    log.info("base model %s from %s on %s (%s)", base.key, base.path, runtime.name, runtime.dtype)
    tok = load_tokenizer(base.path, options)
    pad_id = tok.pad_token_id

    def load(path: Path) -> Any:
        return load_model(path, runtime, options)

    pools = {n: [encode(tok, e) for e in s.train] for n, s in splits.items()}
    val = {n: pack([encode(tok, e) for e in s.val], cfg.budget.seq_len, pad_id, drop_last=False)
           for n, s in splits.items()}

    # 3. Plan the runs: one per distribution (DEM) and one per grid point (mixing). A corner of the grid is
    #    the same run as a single-distribution fine-tune, so the cache trains it once (each arm is charged).
    singles = {n: {n: 1.0} for n in names}
    grid = simplex_grid(names, cfg.mixing.grid_step)

    def run_spec(weights: dict[str, float]) -> dict[str, Any]:
        w = {k: v for k, v in sorted(weights.items()) if v > 0}
        data = {"version": DATA_VERSION, "fingerprints": {n: fingerprints[n] for n in w}}  # only the rows it reads
        return {"base": base.key, "weights": w, "data": data, "budget": resolved["budget"], "seed": seed,
                **runtime_spec(runtime)}

    # Before any training: the plan's peak memory and disk (stop here if the disk cannot hold it).
    new_runs = {spec_key("train", run_spec(w)) for w in [*singles.values(), *grid]
                if not cache.has("train", run_spec(w))}
    vector_dtype = runtime.dtype if cfg.dem.vector_dtype == "auto" else DTYPES[cfg.dem.vector_dtype]
    plan = resources(AutoConfig.from_pretrained(base.path, trust_remote_code=options.trust_remote_code),
                     dtype=runtime.dtype, batch_size=cfg.budget.batch_size,
                     seq_len=cfg.budget.seq_len, gradient_checkpointing=cfg.model.gradient_checkpointing,
                     n_vectors=len(names), vector_dtype=vector_dtype, vectors_on=cfg.dem.vectors_on,
                     n_new_checkpoints=len(new_runs), n_new_vectors=len(names), cache_root=cache.root)
    log.info(describe(plan, runtime.name))

    # 4. Train every planned run through the cache.
    def train_run(weights: dict[str, float]) -> Entry:
        spec = run_spec(weights)
        w = spec["weights"]
        label = " ".join(f"{k}={v:.2f}" for k, v in w.items())
        entry = cache.get_or_create("train", spec, lambda d: finetune(
            d, base.path, pools, w, cfg.budget, seed, pad_id, runtime, options, cfg.model.gradient_checkpointing),
            label)
        r = entry.record
        tracker.log({"run/label": label, "run/train_loss": r["train_loss"], "run/train_tokens": r["train_tokens"],
                     "run/train_flops": r["train_flops"], "run/train_wall_s": r["train_wall_s"],
                     "run/cached": entry.hit})
        return entry

    single_runs = {n: train_run(w) for n, w in singles.items()}
    grid_runs = [train_run(w) for w in grid]

    def measure(model_key: str, open_model: Any) -> dict[str, Any]:
        spec = {"model": model_key, "data": data_spec, "seq_len": cfg.budget.seq_len, "names": names,
                **runtime_spec(runtime)}
        return cache.get_or_create("ppl", spec, lambda d: perplexity(open_model(), val)).record

    # 5. Mixing arm: the grid point with the lowest pooled validation perplexity.
    grid_ppl = [measure(r.record["key"], lambda r=r: load(r.path)) for r in grid_runs]
    best = min(range(len(grid)), key=lambda i: grid_ppl[i]["val_ppl"])
    log.info("mixing arm: best grid point %s (val ppl %.3f)", grid[best], grid_ppl[best]["val_ppl"])

    # 6. DEM arm: distribution vectors Δᵢ = θᵢ − θ₀ (safetensors), then an Optuna search over merge weights.
    host = Runtime(torch.device("cpu"), runtime.dtype)

    def build_vector(n: str) -> Entry:
        def write(folder: Path) -> dict[str, Any]:
            # Δ in fp32 on the host (the tuned model is opened there, not beside θ₀ on the device), then cast
            # to dem.vector_dtype; the record keeps what that cast cost on one tensor.
            theta0 = copy_params(load_model(base.path, host, options))
            delta = distribution_vector(theta0, copy_params(load_model(single_runs[n].path, host, options)))
            return {"distribution": n, **save_vector(delta, folder / "vector.safetensors", vector_dtype)}

        spec = {"base": base.key, "run": single_runs[n].record["key"], "dtype": str(vector_dtype)}
        return cache.get_or_create("vector", spec, write, f"Δ {n}")

    vector_entries = {n: build_vector(n) for n in names}
    manifest = {n: {"path": str(e.path / "vector.safetensors"), "sha256": e.record["sha256"],
                    "dtype": e.record["dtype"], "max_abs_error": e.record["max_abs_error"],
                    "error_tensor": e.record["error_tensor"]} for n, e in vector_entries.items()}
    streamed = cfg.dem.vectors_on == "cpu"  # kept in host memory, streamed to the device block by block
    vectors = load_vectors([Path(m["path"]) for m in manifest.values()], [m["sha256"] for m in manifest.values()],
                           device="cpu" if streamed else runtime.device,
                           pin_memory=streamed and runtime.device.type == "cuda")  # hash-checked, stacked, read-only
    for path in cfg.dem.plugins:
        load_strategy_file(path)

    def merge_arm(label: str, merge: str, given: dict[str, Any], search_params: list[str]) -> tuple[Any, Entry]:
        """Search one strategy's weights (and named parameters); return the merged model and the search entry.

        The reported model is always built in one step, θ₀ + merge(best weights), from a freshly loaded θ₀ —
        the same bits whether the search ran now, resumed, or came from the cache."""
        strategy = get_strategy(merge)
        fixed = strategy.resolve(given, len(names))
        searched = {p.name: p.search for p in strategy.params if p.name in search_params}
        study_spec = {"vectors": {n: m["sha256"] for n, m in manifest.items()}, "merge": merge, "params": fixed,
                      "search_params": sorted(searched), "sampler": cfg.dem.sampler,
                      "weight_range": list(cfg.dem.weight_range), "grid_points": cfg.dem.grid_points,
                      "prune_fraction": cfg.dem.prune_fraction, "seed": seed, "data": data_spec,
                      "seq_len": cfg.budget.seq_len, **runtime_spec(runtime)}
        study = spec_key("study", study_spec)  # n_trials is not part of it: raising n_trials extends the study

        def run_search(folder: Path) -> dict[str, Any]:
            session = MergeSession(load(base.path), vectors, strategy, fixed, seed, vectors_on=cfg.dem.vectors_on)
            return search_weights(
                session, names, fixed, val, n_trials=cfg.dem.n_trials, sampler=cfg.dem.sampler,
                weight_range=list(cfg.dem.weight_range), searched=searched, seed=seed,
                storage=storage_for(cfg.dem.storage, cache.root / "studies" / study, out), study_name=study,
                grid_points=cfg.dem.grid_points, prune_fraction=cfg.dem.prune_fraction, label=f"{label} search",
                on_trial=lambda i, w, p: tracker.log({f"{label}/trial": i, f"{label}/val_ppl": p,
                                                      **{f"{label}/w_{k}": v for k, v in w.items()}}))

        search = cache.get_or_create("search", {**study_spec, "n_trials": cfg.dem.n_trials}, run_search,
                                     f"{label} search")
        model = load(base.path)
        MergeSession(model, vectors, strategy, fixed, seed, vectors_on=cfg.dem.vectors_on).set(
            [search.record["weights"][n] for n in names], search.record["params"])
        model.save_pretrained(out / "models" / label)
        tok.save_pretrained(out / "models" / label)
        write_atomic(out / "models" / label / "vectors.json", json.dumps(manifest, indent=2))
        return model, search

    merges = {"dem": merge_arm("dem", cfg.dem.merge, strategy_params(cfg.dem), list(cfg.dem.search_params))}
    for spec in cfg.dem.compare:  # more strategies, reported beside the paper's merge and the baselines
        merges[f"dem_{spec.merge}"] = merge_arm(f"dem_{spec.merge}", spec.merge, strategy_params(spec),
                                                list(spec.search_params))

    # 7. Evaluate with lm-eval: the base, each single-distribution model, the best mixture and DEM.
    #    A distribution's task is scored even when it is not trained on (as the paper scores DROP).
    def test_split(task: str) -> list:
        if task == "bbh_object_counting":
            return bbh_object_counting(seed, cfg.data.n_test)
        n = task.removesuffix("_mc")  # built-in tasks score the seeded generator's held-out items
        return (splits[n] if n in splits and splits[n].test else
                generate_splits(n, seed, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test)).test

    tasks = list(cfg.eval.tasks)
    selection = check_eval(tasks, plain(cfg.eval.num_fewshot), cfg.hub_mirror)
    test_sets = {t: test_split(t) for t in selection.builtin}
    write_tasks(out / "tasks", test_sets)
    eval_spec = {"tasks": tasks, "limit": cfg.eval.limit, "num_fewshot": plain(cfg.eval.num_fewshot),
                 "gen_kwargs": plain(cfg.eval.gen_kwargs), "lm_eval": provenance.version("lm_eval"),
                 "data": {"version": DATA_VERSION, "seed": seed, "n_train": cfg.data.n_train, "n_val": cfg.data.n_val,
                          "n_test": cfg.data.n_test},
                 "mirror": mirror_fingerprint(tasks, cfg.hub_mirror) if cfg.hub_mirror else None,
                 "task_version": TASK_VERSION, "format": 2}
    results: dict[str, dict[str, Any]] = {}  # one model's full lm-eval results, for versions and headline metrics

    def scores(model_key: str, open_model: Any, label: str) -> dict[str, float]:
        def run_eval(folder: Path) -> dict[str, Any]:
            return {"results": evaluate(open_model(), tok, tasks=tasks, task_dir=out / "tasks",
                                        num_fewshot=plain(cfg.eval.num_fewshot), limit=cfg.eval.limit,
                                        batch_size=cfg.eval.batch_size, gen_kwargs=plain(cfg.eval.gen_kwargs),
                                        samples_dir=folder / "samples", mirror=cfg.hub_mirror)}

        entry = cache.get_or_create("eval", {"model": model_key, **eval_spec, **runtime_spec(runtime)}, run_eval,
                                    label)
        shutil.copytree(entry.path / "samples", out / "samples" / label, dirs_exist_ok=True)  # per-sample outputs
        results.update(entry.record["results"])
        return flat_scores(entry.record["results"])

    def method(run_records: list[dict[str, Any]], model_key: str, open_model: Any, label: str, search_tokens: int,
               ppl: dict[str, Any], selected: dict[str, Any]) -> dict[str, Any]:
        """One model's entry in summary.json; an arm's cost is the sum over all the runs it needed."""
        return {
            "train_tokens": sum(r["train_tokens"] for r in run_records),
            "train_flops": sum(r["train_flops"] for r in run_records),
            "train_wall_s": sum(r["train_wall_s"] for r in run_records),
            "train_device_s": sum(r.get("train_device_s", r["train_wall_s"]) for r in run_records),
            "devices": sorted({r["device"] for r in run_records if "device" in r}),
            "search_forward_tokens": search_tokens,
            "val_ppl": ppl["val_ppl"],
            "val_ppl_by_dist": ppl["val_ppl_by_dist"],
            "scores": scores(model_key, open_model, label),
            "selected": selected,
        }

    methods: dict[str, Any] = {}
    methods["base"] = method([], base.key, lambda: load(base.path), "base", 0,
                             measure(base.key, lambda: load(base.path)),
                             {"source": base.record["source"], "pretrain_tokens": base.record["train_tokens"]})
    for n, run in single_runs.items():
        methods[f"only_{n}"] = method([run.record], run.record["key"], lambda run=run: load(run.path),
                                      f"only_{n}", 0, measure(run.record["key"], lambda run=run: load(run.path)),
                                      {"weights": {n: 1.0}})
    best_run = grid_runs[best]
    methods["data_mixing"] = method(
        [r.record for r in grid_runs], best_run.record["key"], lambda: load(best_run.path), "data_mixing",
        sum(p["forward_tokens"] for p in grid_ppl), grid_ppl[best],
        {"weights": grid[best], "grid": [{"weights": g, "val_ppl": p["val_ppl"]} for g, p in zip(grid, grid_ppl,
                                                                                                  strict=True)]})
    for label, (model, search) in merges.items():
        r = search.record
        methods[label] = method(
            [run.record for run in single_runs.values()], r["key"], lambda model=model: model, label,
            r["search_forward_tokens"], measure(r["key"], lambda model=model: model),
            {"weights": r["weights"], "merge": r["spec"]["merge"], "params": r["params"], "sampler": cfg.dem.sampler,
             "n_trials": r["n_trials"], "n_pruned": r["n_pruned"], "vectors": manifest})

    # 8. Record cost + quality; write the report (summary.json last, marking it complete).
    summary = {
        "methods": methods,
        "cost_ratio": methods["dem"]["train_flops"] / methods["data_mixing"]["train_flops"],
        "chance": {t: chance_level(test_sets[t][: cfg.eval.limit]) for t in selection.builtin},
        "task_versions": {t: r["version"] for t, r in results.items()},
        "headline_metrics": {t: headline_metric(results[t]) for t in tasks},
        "seed": seed,
        "data": {n: {"fingerprint": d.fingerprint, **d.info} for n, d in splits.items()},
        "runtime": {"device": runtime.name, "dtype": str(runtime.dtype).removeprefix("torch.")},
        "config": resolved,
        "provenance": provenance.collect(),
        "wall_s": time.perf_counter() - started,
        "output_dir": str(out),
    }
    write_report(summary, out)
    tracker.finish(rows(summary), {"cost_ratio": summary["cost_ratio"], "dem/val_ppl": methods["dem"]["val_ppl"],
                                   "data_mixing/val_ppl": methods["data_mixing"]["val_ppl"]})
    return out
