"""The comparison, top to bottom: data mixing vs DEM under the same per-run token budget.

config → data → base model → plan runs → train (through the run cache) → mixing arm picks its best grid
point by validation perplexity → DEM arm builds vectors and searches merge weights by validation perplexity →
lm-eval on every model → cost + quality → report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from baselines.grid import simplex_grid
from dem.merge import get_strategy, load_strategy_file
from dem.search import MergeSession, search_weights, storage_for
from dem.vectors import distribution_vector, load_vector, save_vector
from harness import provenance
from harness.cache import Entry, RunCache, spec_key
from harness.config import strategy_params
from harness.data import GENERATORS, bbh_object_counting, generate_splits, generic_corpus
from harness.evaluation import TASK_VERSION, chance_level, evaluate, write_tasks
from harness.models import copy_params, load_model, load_tokenizer
from harness.perplexity import perplexity
from harness.report import rows, write_atomic, write_report
from harness.tokens import encode, pack
from harness.tracking import Tracker
from harness.training import finetune, pretrain

log = logging.getLogger(__name__)

DATA_VERSION = 2  # bump when a generator's output changes (or one is added: the tokenizer sees them all)
TOKENIZER_SAMPLES = 500  # examples of every built-in generator the tokenizer also sees


def run_comparison(cfg: DictConfig, output_dir: Path) -> Path:
    """Run both arms for a validated config; write summary.json, results.csv, report.md, cost_quality.png."""
    started = time.perf_counter()
    out = output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = RunCache(cfg.cache_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    tracker = Tracker(cfg.tracking.mode, cfg.tracking.project, out, resolved)
    names = list(cfg.data.distributions)
    seed = cfg.seed

    # 1. Distributions: train/val/test splits, generated from the seed.
    splits = {n: generate_splits(n, seed, cfg.data.n_train, cfg.data.n_val, cfg.data.n_test) for n in names}
    data_spec = {"version": DATA_VERSION, "seed": seed, "n_train": cfg.data.n_train, "n_val": cfg.data.n_val}

    # 2. Base model + tokenizer, built once per (model config, seed) and cached. The tokenizer sees every
    #    built-in generator, not just the configured ones, so adding a distribution never changes the base.
    def build_base(folder: Path) -> dict[str, Any]:
        corpus = generic_corpus(seed, cfg.model.generic_docs)
        samples = [e.text for n in GENERATORS for e in generate_splits(n, seed + 1, TOKENIZER_SAMPLES, 1, 1).train]
        return pretrain(folder, cfg.model, corpus + samples, corpus, seed)

    base = cache.get_or_create("base", {"model": resolved["model"], "seed": seed, "data_version": DATA_VERSION},
                               build_base, "base")
    tok = load_tokenizer(base.path)
    pools = {n: [encode(tok, e) for e in s.train] for n, s in splits.items()}
    val = {n: pack([encode(tok, e) for e in s.val], cfg.budget.seq_len, tok.pad_token_id, drop_last=False)
           for n, s in splits.items()}

    # 3. Plan the runs: one per distribution (DEM) and one per grid point (mixing). A corner of the grid is
    #    the same run as a single-distribution fine-tune, so the cache trains it once (each arm is charged).
    singles = {n: {n: 1.0} for n in names}
    grid = simplex_grid(names, cfg.mixing.grid_step)

    # 4. Train every planned run through the cache.
    def train_run(weights: dict[str, float]) -> Entry:
        w = {k: v for k, v in sorted(weights.items()) if v > 0}
        spec = {"base": base.record["key"], "weights": w, "data": data_spec, "budget": resolved["budget"],
                "seed": seed}
        label = " ".join(f"{k}={v:.2f}" for k, v in w.items())
        entry = cache.get_or_create("train", spec, lambda d: finetune(d, base.path, pools, w, cfg.budget, seed,
                                                                      tok.pad_token_id), label)
        r = entry.record
        tracker.log({"run/label": label, "run/train_loss": r["train_loss"], "run/train_tokens": r["train_tokens"],
                     "run/train_flops": r["train_flops"], "run/train_wall_s": r["train_wall_s"],
                     "run/cached": entry.hit})
        return entry

    single_runs = {n: train_run(w) for n, w in singles.items()}
    grid_runs = [train_run(w) for w in grid]

    def measure(model_key: str, load: Any) -> dict[str, Any]:
        spec = {"model": model_key, "data": data_spec, "seq_len": cfg.budget.seq_len, "names": names}
        return cache.get_or_create("ppl", spec, lambda d: perplexity(load(), val)).record

    # 5. Mixing arm: the grid point with the lowest pooled validation perplexity.
    grid_ppl = [measure(r.record["key"], lambda r=r: load_model(r.path)) for r in grid_runs]
    best = min(range(len(grid)), key=lambda i: grid_ppl[i]["val_ppl"])
    log.info("mixing arm: best grid point %s (val ppl %.3f)", grid[best], grid_ppl[best]["val_ppl"])

    # 6. DEM arm: distribution vectors Δᵢ = θᵢ − θ₀ (safetensors), then an Optuna search over merge weights.
    base_model = load_model(base.path)
    base_params = {k: p.detach() for k, p in base_model.named_parameters()}  # views: the search edits them later

    def build_vector(n: str) -> Entry:
        def write(folder: Path) -> dict[str, Any]:
            delta = distribution_vector(base_params, copy_params(load_model(single_runs[n].path)))
            return {"distribution": n, "sha256": save_vector(delta, folder / "vector.safetensors")}

        return cache.get_or_create("vector", {"base": base.record["key"], "run": single_runs[n].record["key"]},
                                   write, f"Δ {n}")

    vector_entries = {n: build_vector(n) for n in names}
    manifest = {n: {"path": str(e.path / "vector.safetensors"), "sha256": e.record["sha256"]}
                for n, e in vector_entries.items()}
    vectors = [load_vector(Path(m["path"]), m["sha256"]) for m in manifest.values()]  # hash-checked, read-only
    for path in cfg.dem.plugins:
        load_strategy_file(path)

    def merge_arm(label: str, merge: str, given: dict[str, Any], search_params: list[str]) -> tuple[Any, Entry]:
        """Search one strategy's weights (and named parameters); return the merged model and the search entry."""
        model = base_model if label == "dem" else load_model(base.path)
        strategy = get_strategy(merge)
        fixed = strategy.resolve(given, len(names))
        searched = {p.name: p.search for p in strategy.params if p.name in search_params}
        study_spec = {"vectors": {n: m["sha256"] for n, m in manifest.items()}, "merge": merge, "params": fixed,
                      "search_params": sorted(searched), "sampler": cfg.dem.sampler,
                      "weight_range": list(cfg.dem.weight_range), "grid_points": cfg.dem.grid_points,
                      "prune_fraction": cfg.dem.prune_fraction, "seed": seed, "data": data_spec,
                      "seq_len": cfg.budget.seq_len}
        study = spec_key("study", study_spec)  # n_trials is not part of it: raising n_trials extends the study
        session = MergeSession(model, vectors, strategy, fixed, seed)

        def run_search(folder: Path) -> dict[str, Any]:
            return search_weights(
                session, names, fixed, val, n_trials=cfg.dem.n_trials, sampler=cfg.dem.sampler,
                weight_range=list(cfg.dem.weight_range), searched=searched, seed=seed,
                storage=storage_for(cfg.dem.storage, cache.root / "studies" / study, out), study_name=study,
                grid_points=cfg.dem.grid_points, prune_fraction=cfg.dem.prune_fraction,
                on_trial=lambda i, w, p: tracker.log({f"{label}/trial": i, f"{label}/val_ppl": p,
                                                      **{f"{label}/w_{k}": v for k, v in w.items()}}))

        search = cache.get_or_create("search", {**study_spec, "n_trials": cfg.dem.n_trials}, run_search,
                                     f"{label} search")
        if search.hit:  # the search leaves the best merge in the model; a cache hit has to build it
            session.set([search.record["weights"][n] for n in names], search.record["params"])
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
        n = task.removesuffix("_mc")
        return (splits[n] if n in splits else generate_splits(n, seed, cfg.data.n_train, cfg.data.n_val,
                                                              cfg.data.n_test)).test

    tasks = list(cfg.eval.tasks)
    test_sets = {t: test_split(t) for t in tasks}
    write_tasks(out / "tasks", test_sets)
    eval_spec = {"tasks": tasks, "limit": cfg.eval.limit, "data": {**data_spec, "n_test": cfg.data.n_test},
                 "task_version": TASK_VERSION}

    def scores(model_key: str, load: Any, label: str) -> dict[str, float]:
        entry = cache.get_or_create(
            "eval", {"model": model_key, **eval_spec},
            lambda d: evaluate(load(), tok, out / "tasks", tasks, cfg.eval.limit, cfg.eval.batch_size), label)
        return {f"{t}/{m}": entry.record[t][m] for t in tasks for m in ("acc", "acc_stderr")}

    def method(run_records: list[dict[str, Any]], model_key: str, load: Any, label: str, search_tokens: int,
               ppl: dict[str, Any], selected: dict[str, Any]) -> dict[str, Any]:
        """One model's entry in summary.json; an arm's cost is the sum over all the runs it needed."""
        return {
            "train_tokens": sum(r["train_tokens"] for r in run_records),
            "train_flops": sum(r["train_flops"] for r in run_records),
            "train_wall_s": sum(r["train_wall_s"] for r in run_records),
            "search_forward_tokens": search_tokens,
            "val_ppl": ppl["val_ppl"],
            "val_ppl_by_dist": ppl["val_ppl_by_dist"],
            "scores": scores(model_key, load, label),
            "selected": selected,
        }

    methods: dict[str, Any] = {}
    methods["base"] = method([], base.record["key"], lambda: load_model(base.path), "base", 0,
                             measure(base.record["key"], lambda: load_model(base.path)),
                             {"pretrain_tokens": base.record["train_tokens"]})
    for n, run in single_runs.items():
        methods[f"only_{n}"] = method([run.record], run.record["key"], lambda run=run: load_model(run.path),
                                      f"only_{n}", 0, measure(run.record["key"], lambda run=run: load_model(run.path)),
                                      {"weights": {n: 1.0}})
    best_run = grid_runs[best]
    methods["data_mixing"] = method(
        [r.record for r in grid_runs], best_run.record["key"], lambda: load_model(best_run.path), "data_mixing",
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
        "chance": {t: chance_level(test_sets[t][: cfg.eval.limit]) for t in tasks},
        "task_versions": {t: TASK_VERSION for t in tasks},
        "seed": seed,
        "config": resolved,
        "provenance": provenance.collect(),
        "wall_s": time.perf_counter() - started,
        "output_dir": str(out),
    }
    write_report(summary, out)
    tracker.finish(rows(summary), {"cost_ratio": summary["cost_ratio"], "dem/val_ppl": methods["dem"]["val_ppl"],
                                   "data_mixing/val_ppl": methods["data_mixing"]["val_ppl"]})
    return out
