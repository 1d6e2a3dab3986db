"""The DEM arm (Ram et al. 2024): one fine-tune per distribution from the same base, distribution vectors
Δᵢ = θᵢ − θ₀, and merge weights searched by Optuna on validation perplexity (one forward pass per trial, no
training). `dem.merge` is the reported row `dem`; each `dem.compare` strategy is a row `dem_<merge>` searched on the
same vectors, so it costs no training.

When the fine-tunes are LoRA adapters and a strategy is θ₀ + Σ cᵢΔᵢ (dem, task_arithmetic, linear with normalize),
no dense Δ is built for it: the search puts every adapter on one model as a single rank-Σr adapter and a trial
only rescales its B blocks (dem.adapter_merge); the merged model is saved dense and as that one adapter
(models/<label>/adapter). Other strategies densify each adapter into Δ, as for full fine-tunes."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import save_file

from dem.adapter_merge import WEIGHTS, AdapterSession, is_linear
from dem.merge import Params, Strategy, get_strategy, load_strategy_file
from dem.search import MergeSession, Session, WorkerSpec, search_parallel, search_weights, storage_for, storage_location
from dem.statistics import STATS_FILE, Statistic, StatsFiles, get_statistic, select_sequences, stored_bytes
from dem.vectors import distribution_vector, dtype_name, load_vectors, save_vector
from harness.arms import Candidate, Context, Planned, PlannedModel, register_arm
from harness.config import strategy_params
from harness.models import lora
from harness.models.loading import CPU_FP32, DTYPES, Runtime, copy_params, load_model
from harness.report.comparison import write_atomic
from harness.runs import cost
from harness.runs.base import runtime_spec
from harness.runs.cache import Entry, spec_key
from harness.runs.spec import read_pool
from harness.runs.stopwatch import stage


@dataclass(frozen=True)
class Inputs:
    """What one search merges: the dense vectors, or the LoRA adapters themselves (AdapterSession)."""

    spec: dict[str, Any]  # how they enter the study's key
    manifest: dict[str, dict[str, Any]]  # reported as selected.vectors and written beside the merged model
    session: Callable[[torch.nn.Module, Strategy, Params, int], Session]  # a session on a freshly loaded θ₀
    worker: dict[str, Any]  # their WorkerSpec fields (vectors, sha256, adapters)


@register_arm("dem")
class DemArm:
    name = "dem"

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg.dem
        self.labels = ["dem", *(f"dem_{s.merge}" for s in self.cfg.compare)]  # its report rows, in order

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        """One fine-tune per distribution: the same runs as the single-distribution reference models."""
        return [Planned(self.name, ctx.run_spec({n: 1.0}), f"fine-tune on {n}") for n in ctx.names]

    def planned_models(self, ctx: Context, done: Mapping[str, Entry]) -> list[PlannedModel]:
        """`dem` and each `dem.compare` row: the same fine-tunes, each its own search of n_trials passes."""
        runs = self.plan(ctx, done)
        return [PlannedModel(label, runs, self.cfg.n_trials) for label in self.labels]

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> list[Candidate]:
        singles = {n: done[ctx.run_spec({n: 1.0}).key] for n in ctx.names}
        for path in self.cfg.plugins:
            load_strategy_file(path)
        specs = self._specs()
        runs = [e.record["key"] for e in singles.values()]
        by_adapter = self._by_adapter(len(ctx.names), all(lora.is_adapter(e.path) for e in singles.values()))
        needed = sorted({s for _, merge, _, _ in specs for s in get_strategy(merge).stats})
        with stage("dem statistics"):
            stats = self._statistics(ctx, singles, needed)
        with stage("dem vectors"):
            adapters = self._adapters(ctx, singles) if any(by_adapter) else None
            dense = self._dense(ctx, singles, stats) if not all(by_adapter) else None  # Δ only if a search needs it
        return [self._merge(ctx, label, merge, given, searched, adapters if use else dense, runs, stats)
                for (label, merge, given, searched), use in zip(specs, by_adapter, strict=True)]

    def _specs(self) -> list[tuple[str, str, dict[str, Any], list[str]]]:
        """(label, merge, given parameters, searched parameters) of `dem` and each `dem.compare` row."""
        specs = [("dem", self.cfg.merge, strategy_params(self.cfg), list(self.cfg.search_params))]
        return specs + [(f"dem_{s.merge}", s.merge, strategy_params(s), list(s.search_params))
                        for s in self.cfg.compare]

    def _by_adapter(self, n: int, lora_runs: bool) -> list[bool]:
        """For each row of `_specs`, whether its search runs on the adapters themselves (no dense Δ)."""
        return [lora_runs and is_linear(get_strategy(m), get_strategy(m).resolve(given, n), n)
                for _, m, given, _ in self._specs()]

    def search_inputs(self, ctx: Context) -> str:
        """What the searches will hold, for the plan's memory and disk lines: "adapters" when every row searches
        LoRA adapters (no distribution vector is written), else "vectors"."""
        for path in self.cfg.plugins:
            load_strategy_file(path)
        return "adapters" if all(self._by_adapter(len(ctx.names), ctx.adapter_params is not None)) else "vectors"

    def _statistics(self, ctx: Context, singles: dict[str, Entry], needed: list[str]) -> dict[str, list[Entry]]:
        """Each statistic a searched strategy needs, for each fine-tune, through the cache (names order): computed
        on the fine-tuned model and dem.stats.n_tokens of its own training rows, drawn with seeds.search. Keyed by
        the run, its rows and the draw, so every strategy and every later comparison that needs it reuses it."""
        out: dict[str, list[Entry]] = {}
        for name in needed:
            statistic = get_statistic(name)
            out[name] = []
            for n, run in singles.items():
                pool = run.record["spec"]["pools"][n]
                spec = {"statistic": name, "version": statistic.version, "run": run.record["key"], "pool": pool,
                        "n_tokens": self.cfg.stats.n_tokens, "seq_len": ctx.cfg.budget.seq_len,
                        "seed": ctx.seeds.search, **runtime_spec(ctx.runtime)}

                def write(folder: Path, run: Entry = run, pool: str = pool, statistic: Statistic = statistic
                          ) -> dict[str, Any]:
                    entry = ctx.cache.get("pools", pool)
                    if entry is None:
                        raise RuntimeError(f"token pool pools/{pool} is missing or corrupt in {ctx.cache.root}")
                    rows = select_sequences(read_pool(entry.path / "pool.safetensors"), self.cfg.stats.n_tokens,
                                            ctx.cfg.budget.seq_len, ctx.seeds.search)
                    model = ctx.load(run.path)
                    start = time.perf_counter()
                    tensors = statistic.compute(model, rows)
                    wall = time.perf_counter() - start
                    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / STATS_FILE))
                    tokens = sum(len(ids) for ids, _ in rows)
                    passes = 3 if statistic.backward else 1  # a backward pass costs twice the forward
                    flops = (passes * cost.forward_flops(ctx.model_config, tokens, ctx.cfg.budget.seq_len)
                             + statistic.extra_flops_per_token(model) * tokens)
                    del model
                    return {"statistic": statistic.name, "tokens": tokens, "sequences": len(rows), "flops": flops,
                            "wall_s": wall, "bytes": sum(v.numel() * v.element_size() for v in tensors.values())}

                out[name].append(ctx.cache.get_or_create("stats", spec, write, f"{name} {n}"))
        return out

    def statistics_bytes(self, ctx: Context) -> int:
        """Bytes on disk of every statistic its rows need, one per fine-tune (the plan's disk line)."""
        for path in self.cfg.plugins:
            load_strategy_file(path)
        needed = {s for _, merge, _, _ in self._specs() for s in get_strategy(merge).stats}
        return len(ctx.names) * sum(stored_bytes(s, ctx.model_config) for s in needed)

    def _dense(self, ctx: Context, singles: dict[str, Entry], stats: dict[str, list[Entry]]) -> Inputs:
        """The distribution vectors Δᵢ (hash-checked, stacked) as a search's inputs, with the statistics
        data-aware strategies read tensor by tensor."""
        manifest = self._vectors(ctx, singles)
        streamed = self.cfg.vectors_on == "cpu"  # kept in host memory, streamed to the device block by block
        vectors = load_vectors([Path(m["path"]) for m in manifest.values()], [m["sha256"] for m in manifest.values()],
                               device="cpu" if streamed else ctx.runtime.device,
                               pin_memory=streamed and ctx.runtime.device.type == "cuda")  # hash-checked, stacked
        files = {s: [str(e.path / STATS_FILE) for e in entries] for s, entries in stats.items()}

        def session(model: torch.nn.Module, strategy: Strategy, fixed: Params, seed: int) -> Session:
            used = {s: [Path(f) for f in files[s]] for s in strategy.stats}
            return MergeSession(model, vectors, strategy, fixed, seed, vectors_on=self.cfg.vectors_on,
                                stats=StatsFiles(used) if used else None)

        return Inputs({"vectors": {n: m["sha256"] for n, m in manifest.items()}}, manifest, session,
                      {"vectors": [m["path"] for m in manifest.values()],
                       "sha256": [m["sha256"] for m in manifest.values()], "stats": files})

    def _adapters(self, ctx: Context, singles: dict[str, Entry]) -> Inputs:
        """The LoRA fine-tunes' adapters as a search's inputs: identified by their weights' hashes and the base
        (an adapter's bytes alone do not name the model it applies to), so these studies never share a key with
        a search over dense vectors."""
        manifest = {n: {"adapter": str(e.path), "sha256": e.record["files"][WEIGHTS], "run": e.record["key"]}
                    for n, e in singles.items()}
        paths, hashes = [Path(m["adapter"]) for m in manifest.values()], [m["sha256"] for m in manifest.values()]

        def session(model: torch.nn.Module, strategy: Strategy, fixed: Params, seed: int) -> Session:
            return AdapterSession(model, paths, strategy, fixed, seed, sha256=hashes)

        return Inputs({"adapters": {n: m["sha256"] for n, m in manifest.items()}, "base": ctx.base.key}, manifest,
                      session, {"vectors": [], "sha256": hashes, "adapters": [str(p) for p in paths]})

    def _vectors(self, ctx: Context, singles: dict[str, Entry]) -> dict[str, dict[str, Any]]:
        """Δᵢ per distribution through the cache: computed in fp32 on the host (the tuned model is opened there,
        not beside θ₀ on the device), stored in dem.vector_dtype with what that cast cost on one tensor."""
        dtype = ctx.runtime.dtype if self.cfg.vector_dtype == "auto" else DTYPES[self.cfg.vector_dtype]
        host = Runtime(torch.device("cpu"), ctx.runtime.dtype)
        manifest = {}
        for n, run in singles.items():
            def write(folder: Path, n: str = n, run: Entry = run) -> dict[str, Any]:
                if lora.is_adapter(run.path):  # Δ = scale·B·A on each adapted weight, exactly (no θ − θ₀ rounding)
                    delta = lora.dense_vector(load_model(ctx.base.path, CPU_FP32, ctx.options), run.path)
                else:
                    theta0 = copy_params(load_model(ctx.base.path, host, ctx.options))
                    delta = distribution_vector(theta0, copy_params(load_model(run.path, host, ctx.options)))
                return {"distribution": n, **save_vector(delta, folder / "vector.safetensors", dtype)}

            entry = ctx.cache.get_or_create("vector", {"base": ctx.base.key, "run": run.record["key"],
                                                       "dtype": str(dtype)}, write, f"Δ {n}")
            manifest[n] = {"path": str(entry.path / "vector.safetensors"), "sha256": entry.record["sha256"],
                           "dtype": entry.record["dtype"], "max_abs_error": entry.record["max_abs_error"],
                           "error_tensor": entry.record["error_tensor"]}
        return manifest

    def _merge(self, ctx: Context, label: str, merge: str, given: dict[str, Any], search_params: list[str],
               inputs: Inputs, runs: list[str], stats: dict[str, list[Entry]]) -> Candidate:
        """Search one strategy's weights (and named parameters) through the cache, then build the reported model
        in one step, θ₀ + merge(best weights), from a freshly loaded θ₀ — the same bits whether the search ran
        now, resumed, or came from the cache — and save it to models/<label> (an adapter search's merge also as
        one adapter, models/<label>/adapter)."""
        cfg, names, seed = self.cfg, ctx.names, ctx.seeds.search
        strategy = get_strategy(merge)
        fixed = strategy.resolve(given, len(names))
        searched = {p.name: p.search for p in strategy.params if p.name in search_params}
        metric = ctx.cfg.selection.metric
        study_spec = {**inputs.spec, "merge": merge, "params": fixed,
                      "search_params": sorted(searched), "sampler": cfg.sampler,
                      "weight_range": list(cfg.weight_range), "grid_points": cfg.grid_points,
                      "prune_fraction": cfg.prune_fraction, "seed": seed, "data": ctx.data_spec,
                      "seq_len": ctx.cfg.budget.seq_len, **runtime_spec(ctx.runtime)}
        if metric != "pooled_ppl":  # kept out of the default's spec, so its cached searches stay valid
            study_spec["metric"] = metric
        used = [e for s in strategy.stats for e in stats[s]]  # data-aware: the statistics' entries, in the key
        if used:
            study_spec["stats"] = {s: [e.record["key"] for e in stats[s]] for s in strategy.stats}
        if cfg.search_workers > 1:  # interleaved trials: never mixed into a bitwise-reproducible study
            study_spec["parallel"] = True
        # n_trials is not part of the study: raising it extends the study, and a search with n trials reports the
        # best of the study's first n (study_result), whatever a search with a larger budget added before it.
        study = spec_key("study", study_spec)

        def on_trial(i: int, w: dict[str, float], p: float) -> None:
            weights = {f"{label}/w_{k}": v for k, v in w.items()}
            ctx.tracker.log({f"{label}/trial": i, f"{label}/val_score": p, **weights})

        def run_search(folder: Path) -> dict[str, Any]:
            with ctx.cache.hold("studies", study, f"{label} study"):  # one lock per study, whatever its budget
                start = time.perf_counter()
                return {**searched_study(folder), "search_wall_s": time.perf_counter() - start}

        def searched_study(folder: Path) -> dict[str, Any]:
            if cfg.search_workers > 1:  # each process rebuilds the session from θ₀'s folder and the vector files
                spec = WorkerSpec(
                    base=str(ctx.base.path), **inputs.worker, merge=merge, fixed=fixed, names=names,
                    storage=storage_location(cfg.storage, ctx.cache.root / "studies" / study, ctx.out),
                    study_name=study, n_trials=cfg.n_trials, sampler=cfg.sampler,
                    weight_range=list(cfg.weight_range), searched=searched, seed=seed, grid_points=cfg.grid_points,
                    prune_fraction=cfg.prune_fraction, metric=metric, device=str(ctx.runtime.device),
                    dtype=dtype_name(ctx.runtime.dtype), options=dataclasses.asdict(ctx.options),
                    vectors_on=cfg.vectors_on, plugins=list(cfg.plugins), label=f"{label} search")
                return search_parallel(spec, ctx.val, cfg.search_workers, on_trial=on_trial)
            session = inputs.session(ctx.load(ctx.base.path), strategy, fixed, seed)
            return search_weights(
                session, names, fixed, ctx.val, n_trials=cfg.n_trials, sampler=cfg.sampler,
                weight_range=list(cfg.weight_range), searched=searched, seed=seed,
                storage=storage_for(cfg.storage, ctx.cache.root / "studies" / study, ctx.out), study_name=study,
                grid_points=cfg.grid_points, prune_fraction=cfg.prune_fraction, label=f"{label} search",
                metric=metric, on_trial=on_trial)

        with stage(f"search {label}"):
            search = ctx.cache.get_or_create("search", {**study_spec, "n_trials": cfg.n_trials}, run_search,
                                             f"{label} search")
        record = search.record
        session = inputs.session(ctx.load(ctx.base.path), strategy, fixed, seed)
        session.set([record["weights"][n] for n in names], record["params"])
        held = session.held_bytes()
        folder = ctx.out / "models" / label
        model = session.model
        if isinstance(session, AdapterSession):  # the merge as one adapter, then folded into θ₀ for the dense copy
            session.save_adapter(folder / "adapter")
            model = session.merged_model()
        model.save_pretrained(folder)
        ctx.tokenizer.save_pretrained(folder)
        write_atomic(folder / "vectors.json", json.dumps(inputs.manifest, indent=2))
        for s in strategy.stats:  # linked, not copied (a Gram matrix per layer is as large as the model), in the
            for n, entry in zip(names, stats[s], strict=True):  # layout `dem-bench-merge --stats` reads
                link = folder / "stats" / s / f"{n}.safetensors"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.unlink(missing_ok=True)
                link.symlink_to(entry.path / STATS_FILE)
        del model, session
        merge_cost = {"stats_flops": sum(e.record["flops"] for e in used),
                      "stats_wall_s": sum(e.record["wall_s"] for e in used),
                      "search_wall_s": record.get("search_wall_s"),  # as the search ran (cached with it)
                      "held_bytes": held}  # what the merge session holds: θ, vectors, prepared vectors, θ₀
        # wall times measured in this run stay out of summary.json (identical runs, identical summaries): building
        # the selected merge is timings.json's `select dem` stage
        return Candidate(label=label, model_key=record["key"], open=lambda: ctx.load(folder), runs=runs,
                         selection_forward_tokens=record["search_forward_tokens"], merge_cost=merge_cost,
                         selected={"weights": record["weights"], "merge": merge, "params": record["params"],
                                   "sampler": cfg.sampler, "n_trials": record["n_trials"],
                                   "search_score": record["val_ppl"],  # its best trial, on the selection slice
                                   "n_pruned": record["n_pruned"], "vectors": inputs.manifest})
