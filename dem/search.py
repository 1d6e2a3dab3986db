"""Coefficient search: Optuna proposes merge weights (and any searched strategy parameter); each trial moves
one live model to that merge in place and runs one forward pass over the validation tokens.

Nothing is reloaded or written per trial. For strategies of the form θ₀ + Σ cᵢΔᵢ the model is moved by
θ ← θ + Σ (c′ᵢ − cᵢ) Δᵢ in one pass over θ (addmv over stacked vectors, see MergeSession) and no copy of θ₀ is
kept; other strategies (sign consensus) rebuild from a kept θ₀. What does not depend on the weights (trim masks,
random drops) is computed once per value of the parameters it reads. The study lives in a storage, so an
interrupted search resumes. LoRA fine-tunes under a linear strategy are searched without dense vectors by
dem.adapter_merge.AdapterSession, through the same `Session` interface.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import optuna
import torch

from dem.adapter_merge import AdapterSession
from dem.merge import MergeConfigError, Params, Stats, Strategy, get_strategy, load_strategy_file, tensor_generator
from dem.statistics import StatsFiles
from dem.vectors import load_vectors
from harness.data.builtin import stable_seed
from harness.evaluation.perplexity import nll, selection_score
from harness.models.loading import DTYPES, LoadOptions, Runtime, load_model

log = logging.getLogger(__name__)

SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, space: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed, space: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed, space: optuna.samplers.CmaEsSampler(seed=seed),
    "qmc": lambda seed, space: _quiet(optuna.samplers.QMCSampler, seed=seed),
    "gp": lambda seed, space: optuna.samplers.GPSampler(seed=seed),
    "grid": lambda seed, space: optuna.samplers.GridSampler(space, seed=seed),
}


def _quiet(cls: Callable[..., optuna.samplers.BaseSampler], **kwargs: Any) -> optuna.samplers.BaseSampler:
    """Build a sampler Optuna marks experimental without its warning (one would print per trial)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return cls(**kwargs)


def storage_for(spec: str, cache_folder: Path, output_dir: Path) -> optuna.storages.BaseStorage | str | None:
    """`journal` (default): a journal file in the cache, resumable, no server; `memory`; `sqlite`: study.db in
    the output folder; anything with `://` is an RDB URL, so several processes or machines can share a study."""
    where = storage_location(spec, cache_folder, output_dir)
    return None if where is None else open_storage(where, repair=True)


def storage_location(spec: str, cache_folder: Path, output_dir: Path) -> str | None:
    """Where `storage_for` keeps the study, as a string another process can open (`open_storage`): an RDB URL or
    a journal file path; None for `memory`, which no other process can see."""
    if "://" in spec:
        return spec
    if spec == "memory":
        return None
    if spec == "sqlite":
        output_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{output_dir / 'study.db'}"
    cache_folder.mkdir(parents=True, exist_ok=True)
    return str(cache_folder / "study.journal")


def open_storage(where: str, *, repair: bool) -> optuna.storages.BaseStorage | str:
    """An RDB URL as it is, anything else a journal file. Only a process that knows no other one is writing may
    `repair` the journal: a torn last line could be a record another worker is still appending."""
    if "://" in where:
        return where
    if repair:
        repair_journal(Path(where))
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(where))


VectorsOn = Literal["device", "cpu"]
Rows = torch.Tensor | list[torch.Tensor]  # one parameter's n vectors: an [n, numel] stack, or n flat tensors

# Elements per vector row that one staged block converts or copies: 3 rows × 128Ki fp32 (1.5 MiB) stay in a CPU
# core's L2 while addmv reads them (measured best of 32Ki–256Ki); on a GPU larger blocks mean fewer copies/launches.
STAGE_ELEMENTS = {"cpu": 1 << 17, "cuda": 1 << 22}


def stacked_rows(rows: list[torch.Tensor]) -> torch.Tensor | None:
    """The [n, numel] view of `rows` when they already sit at one stride in one storage (as `load_vectors` lays
    them out), else None."""
    first = rows[0]
    if not all(r.is_contiguous() and r.dtype == first.dtype and r.numel() == first.numel()
               and r.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() for r in rows):
        return None
    step = rows[1].storage_offset() - first.storage_offset() if len(rows) > 1 else first.numel()
    if step < first.numel() or any(r.storage_offset() != first.storage_offset() + i * step for i, r in enumerate(rows)):
        return None
    return first.as_strided((len(rows), first.numel()), (step, 1))


def _dtype(rows: Rows) -> torch.dtype:
    return rows.dtype if isinstance(rows, torch.Tensor) else functools.reduce(torch.promote_types,
                                                                              (r.dtype for r in rows))


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices as (start, stop): each run is one slice of a stack, one addmv."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


class Session(Protocol):
    """What a search needs from a session: `set(weights, params)` makes `model` that merge of the strategy;
    `replays`: whether a trial's model state depends on the trials before it (so a resumed search replays them)."""

    model: torch.nn.Module
    strategy: Strategy
    replays: bool

    def set(self, weights: list[float], params: Params) -> None: ...

    def held_bytes(self) -> int: ...


class MergeSession:
    """A live model plus distribution vectors; `set(weights, params)` makes the model that merge in place.

    A θ₀ + Σ cᵢΔᵢ trial is one `θ.addmv_(Δᵀ, c′ − c)` per parameter tensor, Δ being that tensor's vectors stacked
    [n, numel] (as `load_vectors` lays them out) and only the vectors whose coefficient changed: θ is read and
    written once and each changed vector read once, in the same pass.
    Why addmv: SmolLM2 fp32 ×3, disk step between trials: 0.090 s a set vs 0.138 (pass per vector), 0.13 (blocked).
    addmv cannot mix dtypes or devices, so vectors in another dtype (bf16 Δ into fp32 θ: 0.126 s against 0.22 s
    for per-vector passes) and streamed vectors are staged: each block of `stage_elements` per vector is copied
    and cast into a cache-sized buffer on θ's device in θ's dtype, then added by addmv. Vectors loaded one by one
    (`load_vector`) in θ's dtype are added a pass each, as before (0.12 s): stacking them here would cost n more
    models of memory, and gathering them block by block measured slower (0.18 s).

    `vectors_on="device"` moves the vectors to the model's device once. `vectors_on="cpu"` keeps them in host
    memory and streams every block through the staging buffers, so device memory holds the model plus those
    buffers; the copy carries the vectors' own dtype and is non-blocking (asynchronous from pinned memory,
    `load_vectors(pin_memory=True)`), ordered before the add by the stream. On a CPU model this staging is a
    cache-resident copy, kept so that the path a GPU runs is the path the CPU tests check.
    """

    def __init__(self, model: torch.nn.Module, vectors: list[dict[str, torch.Tensor]], strategy: Strategy,
                 params: Params, seed: int = 0, *, vectors_on: VectorsOn = "device",
                 stage_elements: int | None = None, stats: Callable[[str], Stats] | None = None) -> None:
        if vectors_on not in ("device", "cpu"):
            raise ValueError(f"vectors_on must be 'device' or 'cpu', not {vectors_on!r}")
        if not vectors:
            raise ValueError("MergeSession needs at least one distribution vector")
        self.model, self.strategy, self.seed, self.stream = model, strategy, seed, vectors_on == "cpu"
        if strategy.stats and stats is None:
            raise ValueError(f"merge '{strategy.name}' needs the statistics {', '.join(strategy.stats)}")
        self.stats = stats  # a tensor's statistics by name (dem.statistics.StatsFiles), for strategies that use data
        named = list(model.named_parameters())  # a tied tensor appears once here
        for _, p in named:
            if not p.data.is_contiguous():  # updated through a flat view; the same Parameter, so ties hold
                p.data = p.data.contiguous()
        self.names = [n for n, _ in named]
        self.tensors = [p.data for _, p in named]
        for i, v in enumerate(vectors):
            bad = [n for n, t in zip(self.names, self.tensors, strict=True) if n not in v or v[n].shape != t.shape]
            if bad:
                raise ValueError(f"vector {i} lacks or misshapes {len(bad)} of the model's parameters, e.g. {bad[0]!r}")
        self.raw = [self._home([v[n] for v in vectors], t) for n, t in zip(self.names, self.tensors, strict=True)]
        self.cache_key: str | None = None
        self.active = self.raw  # the vectors the current coefficients refer to
        self.coeffs = [0.0] * len(vectors)  # the model starts as θ₀: all coefficients zero
        linear = strategy.coefficients is not None and strategy.coefficients([1.0] * len(vectors), params) is not None
        # Only strategies that are not θ₀ + Σ cᵢΔᵢ rebuild from θ₀ each trial, so only they keep a copy of it.
        self.theta0 = None if linear else [t.clone() for t in self.tensors]
        self.replays = linear  # in place, a trial's state carries the rounding of the trials before it
        self.block = stage_elements or STAGE_ELEMENTS.get(self.tensors[0].device.type, STAGE_ELEMENTS["cuda"])
        self.buffers: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}

    def held_bytes(self) -> int:
        """Bytes of the tensors this session holds: the model, its vectors (and their prepared copies), θ₀'s copy
        and the staging buffers — what a merge strategy costs in memory beside the forward pass."""
        tensors = [*self.tensors, *self.buffers.values(), *(self.theta0 or [])]
        for rows in [*self.raw, *(getattr(self, "prepared", []) if self.strategy.prepare else [])]:
            tensors += [rows] if isinstance(rows, torch.Tensor) else list(rows)
        return sum(t.numel() * t.element_size() for t in tensors)

    def _home(self, rows: list[torch.Tensor], theta: torch.Tensor) -> Rows:
        """One parameter's vectors where they live (host memory when streamed, else θ's device; no copy when they
        are there already), as a stack when they are stacked, else as n flat tensors."""
        device = torch.device("cpu") if self.stream else theta.device
        stack = stacked_rows(rows)
        return stack.to(device) if stack is not None else [r.reshape(-1).to(device) for r in rows]

    def _vectors(self, params: Params) -> list[Rows]:
        """Δ after the strategy's weight-independent step, recomputed only when its parameters change.

        The sparsifiers draw their masks with CPU generators (dem.merge.tensor_generator), so they run on CPU
        wherever the vectors live; that also keeps a seed's masks the same on every device."""
        if not self.strategy.prepare:
            return self.raw
        key = json.dumps({k: params[k] for k in self.strategy.prepare_params}, sort_keys=True)
        if key != self.cache_key:
            self.cache_key, self.prepared = key, []
            for name, theta, rows in zip(self.names, self.tensors, self.raw, strict=True):
                out = self.strategy.prepared([r.view(theta.shape).cpu() for r in rows], params,
                                             tensor_generator(self.seed, name),
                                             self.stats(name) if self.strategy.stats and self.stats else None)
                self.prepared.append(self._home(list(torch.stack(out)), theta))
        return self.prepared

    def _buffer(self, role: str, device: torch.device, dtype: torch.dtype, rows: int, cols: int) -> torch.Tensor:
        """A reused [rows, cols] slice of one staging buffer per role, device and dtype."""
        key = (role, device, dtype)
        if key not in self.buffers:
            height = 1 if role == "acc" else len(self.coeffs)
            self.buffers[key] = torch.empty(height, self.block, dtype=dtype, device=device)
        return self.buffers[key][:rows, :cols]

    def _fill(self, role: str, device: torch.device, rows: Rows, dtype: torch.dtype | None = None,
              non_blocking: bool = False) -> torch.Tensor:
        """Copy a block of vectors into the staging buffer for (role, device, dtype); None: their own dtype.
        A stacked block is one copy; a streamed one goes row by row, as a contiguous row of pinned memory needs no
        pageable temporary for an asynchronous copy."""
        buffer = self._buffer(role, device, dtype or _dtype(rows), len(rows), rows[0].numel())
        if isinstance(rows, torch.Tensor) and not non_blocking:
            return buffer.copy_(rows)
        for dst, src in zip(buffer, rows, strict=True):
            dst.copy_(src, non_blocking=non_blocking)
        return buffer

    def _stage(self, rows: Rows, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """A block of vectors as one [r, w] matrix on `device` in `dtype`: a streamed copy carries the vectors' own
        dtype (half the bytes for bf16), the cast happens on the device."""
        if self.stream:
            rows = self._fill("stream", device, rows, non_blocking=True)
        if not isinstance(rows, torch.Tensor) or rows.dtype != dtype:
            rows = self._fill("matrix", device, rows, dtype)
        return rows

    def _add(self, stacks: list[Rows], dc: list[float]) -> None:
        """θ += Σ dcᵢΔᵢ in one pass over θ; vectors with dcᵢ = 0 are not read. The sum is formed in at least fp32
        (a bf16 θ is widened block by block), so a coefficient is never rounded to θ's dtype."""
        runs = _runs([i for i, d in enumerate(dc) if d])
        if not runs:
            return
        coeffs: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        for theta, rows in zip(self.tensors, stacks, strict=True):
            flat, compute = theta.view(-1), torch.promote_types(theta.dtype, torch.float32)
            if (theta.device, compute) not in coeffs:
                coeffs[theta.device, compute] = torch.tensor(dc, dtype=compute, device=theta.device)
            c = coeffs[theta.device, compute]
            native = not self.stream and theta.dtype == compute == _dtype(rows)
            if native and isinstance(rows, torch.Tensor):  # the common case: one pass, nothing staged
                for a, b in runs:
                    flat.addmv_(rows[a:b].t(), c[a:b])
                continue
            if native:  # separate vectors: a pass each, still faster than gathering them into a buffer (measured)
                for row, d in zip(rows, dc, strict=True):
                    if d:
                        flat.add_(row, alpha=d)
                continue
            for lo in range(0, flat.numel(), self.block):
                part = flat[lo : lo + self.block]
                hi = lo + part.numel()
                acc = part if theta.dtype == compute else self._buffer("acc", theta.device, compute, 1,
                                                                       part.numel())[0].copy_(part)
                for a, b in runs:
                    block = rows[a:b, lo:hi] if isinstance(rows, torch.Tensor) else [r[lo:hi] for r in rows[a:b]]
                    acc.addmv_(self._stage(block, theta.device, compute).t(), c[a:b])
                if acc is not part:
                    part.copy_(acc)

    @torch.no_grad()
    def set(self, weights: list[float], params: Params) -> None:
        stacks = self._vectors(params)
        if self.theta0 is not None:
            for j, theta in enumerate(self.tensors):  # streamed per tensor, in the model's dtype
                deltas = [r.view(theta.shape).to(theta.device, theta.dtype, non_blocking=True) for r in stacks[j]]
                theta.copy_(self.strategy.combine(self.theta0[j], deltas, weights, params))
            return
        coeffs = self.strategy.coefficients(weights, params)
        if stacks is not self.active:  # the prepared vectors changed: step back to θ₀ first
            self._add(self.active, [-c for c in self.coeffs])
            self.coeffs, self.active = [0.0] * len(self.coeffs), stacks
        self._add(stacks, [new - old for new, old in zip(coeffs, self.coeffs, strict=True)])
        self.coeffs = list(coeffs)


@dataclass(frozen=True)
class SearchSpace:
    """What a trial samples: a weight per distribution in `weight_range` and each `searched` strategy parameter in
    its range (one shared value for a per-model parameter); everything else comes from `fixed`, the strategy's
    resolved parameters. The single-process search and every worker sample through this one definition."""

    names: list[str]
    fixed: Params
    weight_range: list[float]
    searched: dict[str, tuple[float, float]]
    grid_points: int = 5

    def grid(self) -> dict[str, list[float]]:
        """The points GridSampler enumerates: `grid_points` evenly spaced values per searched dimension."""
        low, high, k = *self.weight_range, self.grid_points
        space = {f"w_{n}": [low + (high - low) * i / (k - 1) for i in range(k)] for n in self.names}
        return space | {f"p_{p}": [a + (b - a) * i / (k - 1) for i in range(k)] for p, (a, b) in self.searched.items()}

    def params(self, values: dict[str, float]) -> Params:
        """The strategy's parameters for a trial's `p_*` values."""
        p = dict(self.fixed)
        for key in self.searched:
            per_model = isinstance(p[key], list)
            p[key] = [values[f"p_{key}"]] * len(self.names) if per_model else values[f"p_{key}"]
        return p

    def suggest(self, trial: optuna.Trial) -> tuple[list[float], Params]:
        low, high = self.weight_range
        w = [trial.suggest_float(f"w_{n}", low, high) for n in self.names]
        return w, self.params({f"p_{k}": trial.suggest_float(f"p_{k}", a, b) for k, (a, b) in self.searched.items()})

    def of(self, trial: optuna.trial.FrozenTrial) -> tuple[list[float], Params]:
        """A finished trial's weights and parameters."""
        return [trial.params[f"w_{n}"] for n in self.names], self.params(
            {k: v for k, v in trial.params.items() if k.startswith("p_")})


def make_objective(session: Session, space: SearchSpace, val: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   prune_fraction: float, metric: str,
                   on_trial: Callable[[int, dict[str, float], float], None] | None = None
                   ) -> Callable[[optuna.Trial], float]:
    """One trial: move the session to the sampled merge, score the validation sets (the first `prune_fraction` of
    each, then the rest, so the pruner can stop it in between) and record the forward tokens it used."""
    heads = {n: max(1, math.ceil(len(x) * prune_fraction)) for n, (x, _) in val.items()}
    cuts = ([{n: (0, heads[n]) for n in val}, {n: (heads[n], len(val[n][0])) for n in val}] if prune_fraction
            else [{n: (0, len(val[n][0])) for n in val}])

    def objective(trial: optuna.Trial) -> float:
        w, params = space.suggest(trial)
        if session.strategy.constraint and (problem := session.strategy.constraint(params)):
            trial.set_user_attr("infeasible", problem)
            trial.set_user_attr("forward_tokens", 0)
            raise optuna.TrialPruned()
        session.set(w, params)
        sums = {n: [0.0, 0] for n in val}  # per distribution: summed nll, labelled tokens
        tokens = 0
        for part in range(len(cuts)):  # [first slice, rest] when pruning, else [everything]
            for n, (x, y) in val.items():
                a, b = cuts[part][n]
                s, c = nll(session.model, x[a:b], y[a:b])
                sums[n][0] += s
                sums[n][1] += c
                tokens += int(x[a:b].numel())
            trial.set_user_attr("forward_tokens", tokens)
            if part == 0 and len(cuts) > 1:
                trial.report(selection_score(sums, metric), step=0)
                if trial.should_prune():
                    raise optuna.TrialPruned()
        ppl = selection_score(sums, metric)
        if on_trial:
            on_trial(trial.number, dict(zip(space.names, w, strict=True)), ppl)
        return ppl

    return objective


def _pruner(prune_fraction: float) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=5) if prune_fraction else optuna.pruners.NopPruner()


def search_weights(session: Session, names: list[str], fixed: Params,
                   val: dict[str, tuple[torch.Tensor, torch.Tensor]], *, n_trials: int, sampler: str,
                   weight_range: list[float], searched: dict[str, tuple[float, float]], seed: int,
                   storage: Any, study_name: str, grid_points: int = 5, prune_fraction: float = 0.0,
                   on_trial: Callable[[int, dict[str, float], float], None] | None = None,
                   label: str = "search", metric: str = "pooled_ppl") -> dict[str, Any]:
    """Minimise the selection metric (pooled validation perplexity, or the geometric mean of the distributions'
    perplexities: `metric`, see perplexity.selection_score) over weights ∈ weight_range (and `searched`
    parameters).

    `fixed` are the strategy's resolved parameters; a searched one is overwritten per trial (one shared value
    for per-model parameters). A sampled parameter combination the strategy rejects (e.g. DELLA's density ±
    epsilon outside (0, 1)) is recorded as a pruned trial without a forward pass.
    With prune_fraction > 0 each trial first scores that fraction of every validation set and Optuna's median
    pruner may stop it there. Returns the best weights and parameters, its perplexity, the trials completed and
    pruned, and the forward tokens all trials used.

    Resuming gives the same trials as an uninterrupted search (same machine): trial k's sampler is seeded from
    (seed, k) rather than carrying one RNG through the process; a trial left RUNNING by a killed process is marked
    failed (the caller holds the search's cache lock, so no live worker owns it) and ignored; and for in-place
    strategies the finished trials are replayed onto the session, so trial k runs on bitwise the model state it
    would have had (θ + Σ (c′ − c)Δ accumulates rounding in the order the trials ran).
    Several processes on one study: `search_parallel`.
    """
    space = SearchSpace(names, fixed, weight_range, searched, grid_points)
    objective = make_objective(session, space, val, prune_fraction, metric, on_trial)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=study_name, storage=storage,
                                sampler=trial_sampler(sampler, seed, 0, space.grid()), pruner=_pruner(prune_fraction),
                                direction="minimize", load_if_exists=True)
    fail_stale_trials(study)
    done = finished_trials(study)
    if done:
        if len(done) >= n_trials:  # a longer study of the same search: its first n_trials answer (study_result)
            log.info("%s: the study has %d finished trials; reporting the best of its first %d", label, len(done),
                     n_trials)
        else:
            log.info("%s: resuming, %d of %d trials already done", label, len(done), n_trials)
        if session.replays:  # in place: rebuild the exact state the finished trials left
            for t in done:
                if "infeasible" not in t.user_attrs:
                    session.set(*space.of(t))
    while len(done) < n_trials:
        study.sampler = trial_sampler(sampler, seed, len(done), space.grid())
        study.optimize(objective, n_trials=1)
        done = finished_trials(study)
        last = done[-1]
        log.info("%s: trial %d/%d %s", label, len(done), n_trials,
                 f"val ppl {last.value:.4g}" if last.value is not None else "pruned")
    return study_result(study, space, label, n_trials)


def study_result(study: optuna.Study, space: SearchSpace, label: str = "search",
                 n_trials: int | None = None) -> dict[str, Any]:
    """The search's record from the study's first `n_trials` finished trials (all when None): a study run longer
    by an earlier search with a larger budget still answers for this budget exactly — its best trial among those
    (the first of equal values, as `study.best_trial`), the trials completed, pruned and infeasible, and the
    forward tokens they used."""
    done = finished_trials(study)[:n_trials]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise MergeConfigError(f"{label}: no trial completed (every sampled parameter combination was pruned or "
                               "infeasible); widen the search or fix the parameters")
    best = min(complete, key=lambda t: t.value)
    weights, best_params = space.of(best)
    return {
        "weights": dict(zip(space.names, weights, strict=True)),
        "params": best_params,
        "val_ppl": best.value,
        "best_trial": best.number,
        "n_trials": sum(t.state == optuna.trial.TrialState.COMPLETE for t in done),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        "n_infeasible": sum("infeasible" in t.user_attrs for t in done),
        "search_forward_tokens": sum(t.user_attrs.get("forward_tokens", 0) for t in done),
    }


# ---------------------------------------------------------------------------------------------------------------
# Several processes on one study.


@dataclass
class WorkerSpec:
    """Everything a search worker needs to rebuild its session from files and join the study: plain data, so
    it pickles into a spawned process and round-trips through JSON for a separate job (`python -m dem.search
    SPEC.json`)."""

    base: str  # θ₀'s checkpoint folder
    vectors: list[str]  # the distribution vectors' safetensors files, in `names` order
    sha256: list[str]  # their hashes: a worker merges only the bytes the manifest recorded
    merge: str  # strategy name
    fixed: Params  # the strategy's resolved parameters
    names: list[str]
    storage: str | None  # a journal file path or an RDB URL (storage_location); None (memory) cannot be shared
    study_name: str
    n_trials: int  # the study's whole budget
    sampler: str
    weight_range: list[float]
    searched: dict[str, tuple[float, float]]
    seed: int
    grid_points: int = 5
    prune_fraction: float = 0.0
    metric: str = "pooled_ppl"
    val: str = ""  # a torch.save file of {name: (x, y)}; needed only when run_worker is not handed the tensors
    device: str = "cpu"
    dtype: str = "float32"
    options: dict[str, bool] = field(default_factory=dict)  # harness.models.loading.LoadOptions fields
    vectors_on: VectorsOn = "device"
    plugins: list[str] = field(default_factory=list)  # strategy files (dem.plugins): a fresh process lacks them
    adapters: list[str] = field(default_factory=list)  # LoRA adapter folders searched as one adapter (AdapterSession)
    # instead of `vectors` (then empty); `sha256` holds their adapter_model.safetensors hashes
    stats: dict[str, list[str]] = field(default_factory=dict)  # statistic -> its files, `names` order (data-aware)
    label: str = "search"
    trials: int = 0  # how many trials this worker runs (worker_specs splits n_trials)
    threads: int = 0  # torch threads for this worker; 0: torch's default
    worker: int = 0  # this worker's index, for logs

    def space(self) -> SearchSpace:
        return SearchSpace(self.names, self.fixed, list(self.weight_range), dict(self.searched), self.grid_points)

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> WorkerSpec:
        return cls(**json.loads(Path(path).read_text()))


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """`trial_sampler(name, seed, trial.number)`, built afresh for every trial: Optuna numbers trials atomically in
    the storage, so workers sharing a study never seed two trials alike, and no RNG state crosses processes."""

    def __init__(self, name: str, seed: int, grid: dict[str, list[float]]) -> None:
        self.name, self.seed, self.grid = name, seed, grid
        self.inner = trial_sampler(name, seed, 0, grid)

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.inner = trial_sampler(self.name, self.seed, trial.number, self.grid)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, Any]) -> dict[str, Any]:
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)


def _join(spec: WorkerSpec, *, repair: bool) -> optuna.Study:
    """Create or load the spec's study (concurrent creators are fine: the loser loads the winner's study)."""
    if spec.storage is None:
        raise MergeConfigError(f"{spec.label}: dem.storage=memory lives in one process, so search workers cannot "
                               "share it; use journal, sqlite or an RDB URL, or dem.search_workers=1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=spec.study_name, storage=open_storage(spec.storage, repair=repair),
                               sampler=TrialSeededSampler(spec.sampler, spec.seed, spec.space().grid()),
                               pruner=_pruner(spec.prune_fraction), direction="minimize", load_if_exists=True)


def worker_specs(spec: WorkerSpec, workers: int) -> list[WorkerSpec]:
    """Ready the study for `workers` workers and split what is left of its budget among them (shares differ by at
    most one and sum to exactly what is left); each worker gets the parent's torch threads divided by `workers`,
    so together they use the cores the parent would have. A job on another machine may override `threads`.

    Call it only while no worker of this study is alive (the search's cache lock guarantees it): it repairs a
    torn journal and fails the trials a killed search left RUNNING, which no live process could finish."""
    if workers < 1:
        raise MergeConfigError(f"{spec.label}: search workers must be at least 1, not {workers}")
    study = _join(spec, repair=True)
    fail_stale_trials(study)
    left = max(0, spec.n_trials - len(finished_trials(study)))
    threads = max(1, torch.get_num_threads() // workers)
    shares = [left // workers + (i < left % workers) for i in range(workers)]
    return [dataclasses.replace(spec, trials=n, threads=threads, worker=i) for i, n in enumerate(shares) if n]


def run_worker(spec: WorkerSpec, val: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> list[int]:
    """One search worker: rebuild the session (θ₀ from its folder, the hash-checked vectors or adapters), join the
    study and finish `spec.trials` trials (pruned ones count; a trial that fails, e.g. on a NaN score, is run
    again). Returns the numbers of the trials it finished. It never touches trials it did not start: other workers may
    be running them. `val`: the validation blocks, else loaded from `spec.val`."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    for path in spec.plugins:
        load_strategy_file(path)
    runtime = Runtime(torch.device(spec.device), DTYPES[spec.dtype])
    strategy = get_strategy(spec.merge)
    session: Session
    if spec.adapters:
        model = load_model(Path(spec.base), runtime, LoadOptions(**spec.options))
        session = AdapterSession(model, [Path(a) for a in spec.adapters], strategy, spec.fixed, spec.seed,
                                 sha256=spec.sha256)
    else:
        streamed = spec.vectors_on == "cpu"
        vectors = load_vectors([Path(p) for p in spec.vectors], spec.sha256,
                               device="cpu" if streamed else runtime.device,
                               pin_memory=streamed and runtime.device.type == "cuda")
        model = load_model(Path(spec.base), runtime, LoadOptions(**spec.options))
        stats = StatsFiles({k: [Path(f) for f in v] for k, v in spec.stats.items()}) if spec.stats else None
        session = MergeSession(model, vectors, strategy, spec.fixed, spec.seed, vectors_on=spec.vectors_on,
                               stats=stats)
    val = val if val is not None else torch.load(spec.val, weights_only=True)
    objective = make_objective(session, spec.space(), val, spec.prune_fraction, spec.metric)
    study = _join(spec, repair=False)  # never repair here: another worker may be appending the last record
    finished: list[int] = []

    def note(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state in FINISHED:
            finished.append(trial.number)
            log.info("%s worker %d: trial #%d %s (%d/%d)", spec.label, spec.worker, trial.number,
                     "pruned" if trial.state == optuna.trial.TrialState.PRUNED else f"val ppl {trial.value:.4g}",
                     len(finished), spec.trials)

    while len(finished) < spec.trials:
        study.optimize(objective, n_trials=spec.trials - len(finished), callbacks=[note])
    return finished


def search_parallel(spec: WorkerSpec, val: dict[str, tuple[torch.Tensor, torch.Tensor]], workers: int,
                    on_trial: Callable[[int, dict[str, float], float], None] | None = None) -> dict[str, Any]:
    """`search_weights` with `workers` processes on one study: the same record, its best exactly the study's
    `best_trial`. Each worker rebuilds its own session from `spec` (spawned, so no torch thread pool is forked)
    and runs its share of the budget (`worker_specs`).

    Not bitwise reproducible: which worker asks for the next trial, and so what each proposal sees of the
    finished trials and which model state it starts from, depends on timing. A killed parallel search resumes
    like a single one: its workers die with it (`die_with_parent`), so the rerun, under the search's lock, fails
    the trials they left RUNNING and runs what is left of the budget.
    `on_trial` is called afterwards, in trial-number order, for the trials this call completed."""
    specs = worker_specs(spec, workers)
    study = _join(spec, repair=False)
    before = {t.number for t in finished_trials(study)}
    if specs:
        log.info("%s: %d workers, %d torch threads each, trials %s", spec.label, len(specs), specs[0].threads,
                 "+".join(str(s.trials) for s in specs))
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(specs), mp_context=context) as pool:
            for future in [pool.submit(_spawned, s, val, os.getpid()) for s in specs]:
                future.result()
    space = spec.space()
    for t in finished_trials(study):
        if on_trial and t.number not in before and t.state == optuna.trial.TrialState.COMPLETE:
            on_trial(t.number, dict(zip(space.names, space.of(t)[0], strict=True)), t.value)
    return study_result(study, space, spec.label, spec.n_trials)


def _spawned(spec: WorkerSpec, val: dict[str, tuple[torch.Tensor, torch.Tensor]], parent: int) -> list[int]:
    """run_worker in a process search_parallel spawned: tied to the parent's life, logging set up (the parent's
    configuration does not reach a fresh interpreter)."""
    die_with_parent(parent)
    _log_to_stderr()
    return run_worker(spec, val)


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when `parent` dies. A killed search then leaves no worker
    writing to its study, which is what lets the rerun (under the search's lock) fail every RUNNING trial.
    Elsewhere a worker outlives a killed parent by its current share: wait for it before rerunning."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before that took effect
            os._exit(1)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    """`python -m dem.search WORKER_SPEC.json`: one worker as its own job (specs from `worker_specs`, written with
    `WorkerSpec.save`, `val` saved with torch.save); prints the numbers of the trials it finished."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m dem.search WORKER_SPEC.json")
    _log_to_stderr()
    print(json.dumps({"finished": run_worker(WorkerSpec.load(Path(args[0])))}))


def trial_sampler(name: str, seed: int, k: int, space: dict[str, list[float]]) -> optuna.samplers.BaseSampler:
    """The sampler that proposes the k-th finished trial, seeded from (seed, k): proposals depend only on the
    study's finished trials and k, never on how many processes the search took."""
    return SAMPLERS[name](stable_seed(seed, "trial", str(k)) % 2**31, space)


FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # what counts toward n_trials


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)


def fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed process: marked FAIL, so no sampler waits on them or counts them."""
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        log.warning("search %s: trial %d was interrupted; marking it failed", study.study_name, t.number)
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)


def repair_journal(path: Path) -> None:
    """Drop a torn last line (a process killed mid-write) so the journal stays readable; optuna would otherwise
    glue the next record onto it and fail on every later read."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    keep = data if data.endswith(b"\n") else data[: data.rfind(b"\n") + 1]
    lines = keep.splitlines(keepends=True)
    while lines:
        try:
            json.loads(lines[-1])
            break
        except json.JSONDecodeError:
            lines.pop()
    repaired = b"".join(lines)
    if repaired != data:
        log.warning("search journal %s: dropping a torn last record (%d bytes) left by an interrupted run", path,
                    len(data) - len(repaired))
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(repaired)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
