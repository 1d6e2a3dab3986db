"""The DEM arm (Ram et al. 2024): one fine-tune per distribution from the same base, distribution vectors
Δᵢ = θᵢ − θ₀, and merge weights searched by Optuna on validation perplexity (one forward pass per trial, no
training). `dem.merge` is the reported row `dem`; each `dem.compare` strategy is a row `dem_<merge>` searched on the
same vectors, so it costs no training."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from dem.merge import get_strategy, load_strategy_file
from dem.search import MergeSession, WorkerSpec, search_parallel, search_weights, storage_for, storage_location
from dem.vectors import distribution_vector, dtype_name, load_vectors, save_vector
from harness import lora
from harness.arms import Candidate, Context, Planned, PlannedModel, register_arm
from harness.base import runtime_spec
from harness.cache import Entry, spec_key
from harness.config import strategy_params
from harness.models import CPU_FP32, DTYPES, Runtime, copy_params, load_model
from harness.report import write_atomic


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
        manifest = self._vectors(ctx, singles)
        streamed = self.cfg.vectors_on == "cpu"  # kept in host memory, streamed to the device block by block
        vectors = load_vectors([Path(m["path"]) for m in manifest.values()], [m["sha256"] for m in manifest.values()],
                               device="cpu" if streamed else ctx.runtime.device,
                               pin_memory=streamed and ctx.runtime.device.type == "cuda")  # hash-checked, stacked
        for path in self.cfg.plugins:
            load_strategy_file(path)
        specs = [("dem", self.cfg.merge, strategy_params(self.cfg), list(self.cfg.search_params))]
        specs += [(f"dem_{s.merge}", s.merge, strategy_params(s), list(s.search_params)) for s in self.cfg.compare]
        runs = [e.record["key"] for e in singles.values()]
        return [self._merge(ctx, label, merge, given, searched, vectors, manifest, runs)
                for label, merge, given, searched in specs]

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
               vectors: list[dict[str, torch.Tensor]], manifest: dict[str, dict[str, Any]], runs: list[str]
               ) -> Candidate:
        """Search one strategy's weights (and named parameters) through the cache, then build the reported model
        in one step, θ₀ + merge(best weights), from a freshly loaded θ₀ — the same bits whether the search ran
        now, resumed, or came from the cache — and save it to models/<label>."""
        cfg, names, seed = self.cfg, ctx.names, ctx.seeds.search
        strategy = get_strategy(merge)
        fixed = strategy.resolve(given, len(names))
        searched = {p.name: p.search for p in strategy.params if p.name in search_params}
        metric = ctx.cfg.selection.metric
        study_spec = {"vectors": {n: m["sha256"] for n, m in manifest.items()}, "merge": merge, "params": fixed,
                      "search_params": sorted(searched), "sampler": cfg.sampler,
                      "weight_range": list(cfg.weight_range), "grid_points": cfg.grid_points,
                      "prune_fraction": cfg.prune_fraction, "seed": seed, "data": ctx.data_spec,
                      "seq_len": ctx.cfg.budget.seq_len, **runtime_spec(ctx.runtime)}
        if metric != "pooled_ppl":  # kept out of the default's spec, so its cached searches stay valid
            study_spec["metric"] = metric
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
                return searched_study(folder)

        def searched_study(folder: Path) -> dict[str, Any]:
            if cfg.search_workers > 1:  # each process rebuilds the session from θ₀'s folder and the vector files
                spec = WorkerSpec(
                    base=str(ctx.base.path), vectors=[m["path"] for m in manifest.values()],
                    sha256=[m["sha256"] for m in manifest.values()], merge=merge, fixed=fixed, names=names,
                    storage=storage_location(cfg.storage, ctx.cache.root / "studies" / study, ctx.out),
                    study_name=study, n_trials=cfg.n_trials, sampler=cfg.sampler,
                    weight_range=list(cfg.weight_range), searched=searched, seed=seed, grid_points=cfg.grid_points,
                    prune_fraction=cfg.prune_fraction, metric=metric, device=str(ctx.runtime.device),
                    dtype=dtype_name(ctx.runtime.dtype), options=dataclasses.asdict(ctx.options),
                    vectors_on=cfg.vectors_on, plugins=list(cfg.plugins), label=f"{label} search")
                return search_parallel(spec, ctx.val, cfg.search_workers, on_trial=on_trial)
            session = MergeSession(ctx.load(ctx.base.path), vectors, strategy, fixed, seed, vectors_on=cfg.vectors_on)
            return search_weights(
                session, names, fixed, ctx.val, n_trials=cfg.n_trials, sampler=cfg.sampler,
                weight_range=list(cfg.weight_range), searched=searched, seed=seed,
                storage=storage_for(cfg.storage, ctx.cache.root / "studies" / study, ctx.out), study_name=study,
                grid_points=cfg.grid_points, prune_fraction=cfg.prune_fraction, label=f"{label} search",
                metric=metric, on_trial=on_trial)

        search = ctx.cache.get_or_create("search", {**study_spec, "n_trials": cfg.n_trials}, run_search,
                                         f"{label} search")
        record = search.record
        model = ctx.load(ctx.base.path)
        MergeSession(model, vectors, strategy, fixed, seed, vectors_on=cfg.vectors_on).set(
            [record["weights"][n] for n in names], record["params"])
        folder = ctx.out / "models" / label
        model.save_pretrained(folder)
        ctx.tokenizer.save_pretrained(folder)
        write_atomic(folder / "vectors.json", json.dumps(manifest, indent=2))
        del model
        return Candidate(label=label, model_key=record["key"], open=lambda: ctx.load(folder), runs=runs,
                         selection_forward_tokens=record["search_forward_tokens"],
                         selected={"weights": record["weights"], "merge": merge, "params": record["params"],
                                   "sampler": cfg.sampler, "n_trials": record["n_trials"],
                                   "search_score": record["val_ppl"],  # its best trial, on the selection slice
                                   "n_pruned": record["n_pruned"], "vectors": manifest})
