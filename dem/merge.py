"""Merge strategies: small pure functions over tensors, registered by name with their parameters as data.

A strategy merges one parameter tensor: the base θ₀, the distribution vectors Δᵢ = θᵢ − θ₀ and one weight per
vector (mergekit's per-model `weight`; every strategy takes it, the search always tunes it). It may split into
two steps so a search can reuse work across trials:

* `prepare(deltas, params, generator)` — the part that does not depend on the weights (trimming, random drops);
* `combine(base, deltas, weights, params)` — the weighted merge.

Strategies that are θ₀ + Σ cᵢΔᵢ for coefficients cᵢ(weights, params) also give `coefficients`, which lets the
search update a live model in place: θ ← θ + Σ (c′ᵢ − cᵢ) Δᵢ.

A strategy that learns from data declares the per-model statistics it needs (`stats=("fisher_diag",)`, names in
dem.statistics' registry); its `prepare` then takes a fourth argument, that tensor's statistics: name → one tensor
per model (None where a model's statistic does not cover the tensor).

Parameter names and defaults follow mergekit 0.1.5 (`weight`, `lambda`, `normalize`, `rescale`, `density`,
`gamma`, `epsilon`), so the same numbers mean the same merge in both tools; tests/test_mergekit_parity.py checks
the tensors against mergekit itself.

Add a strategy: write one decorated function in a new file under dem/strategies/ (see the README).
"""

from __future__ import annotations

import difflib
import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.data.builtin import stable_seed
from harness.errors import HarnessError

Tensor = torch.Tensor
Params = dict[str, Any]
CombineFn = Callable[[Tensor, Sequence[Tensor], Sequence[float], Params], Tensor]
PrepareFn = Callable[..., list[Tensor]]  # (deltas, params, generator[, stats]) -> prepared deltas
Stats = Mapping[str, Sequence["Tensor | None"]]  # one tensor's statistics: name -> one per model
CoefficientsFn = Callable[[Sequence[float], Params], "list[float] | None"]


class MergeConfigError(HarnessError, ValueError):
    """A strategy, parameter or value the registry cannot use; the CLIs print it as one line."""


@dataclass(frozen=True)
class Param:
    """A declared parameter; the config checker, the CLI and the Optuna search read only these."""

    name: str
    default: float | bool | None = None  # None: the user must give it
    per_model: bool = False  # one value per distribution vector (mergekit's per-model `parameters:`)
    search: tuple[float, float] | None = None  # the range Optuna samples when the parameter is searched
    doc: str = ""
    low: float | None = None  # valid values: low < v (or low <= v with low_inclusive) ... v <= high
    high: float | None = None
    low_inclusive: bool = True

    @property
    def is_flag(self) -> bool:
        return isinstance(self.default, bool)

    def check(self, value: Any) -> str | None:
        """Why `value` is not valid for this parameter (type, then range), or None."""
        if self.is_flag:
            return None if isinstance(value, bool) else f"'{self.name}' must be true or false, not {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"'{self.name}' must be a finite number, not {value!r}"
        too_low = self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive))
        if too_low or (self.high is not None and value > self.high):
            return f"'{self.name}'={value} is outside {self.range_text()}"
        return None

    def range_text(self) -> str:
        low = "(-inf" if self.low is None else ("[" if self.low_inclusive else "(") + f"{self.low:g}"
        return f"{low}, " + ("inf)" if self.high is None else f"{self.high:g}]")


@dataclass(frozen=True)
class Strategy:
    name: str
    combine: CombineFn
    params: tuple[Param, ...] = ()
    prepare: PrepareFn | None = None
    prepare_params: tuple[str, ...] = ()  # the parameters `prepare` reads; others leave prepared vectors valid
    coefficients: CoefficientsFn | None = None
    reference: str = ""
    mergekit: str | None = None  # the same merge's name in mergekit, parity-tested
    doc: str = field(default="", compare=False)
    constraint: Callable[[Params], str | None] | None = None  # a rule across parameters (resolved values)
    stats: tuple[str, ...] = ()  # per-model statistics `prepare` needs (dem.statistics)

    def resolve(self, given: Params, n_models: int) -> Params:
        """Fill defaults, reject unknown or missing parameters, broadcast per-model scalars to lists."""
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise MergeConfigError(f"merge '{self.name}' has no parameter {', '.join(map(repr, unknown))}; "
                                   f"it takes: {', '.join(declared) or 'none'}")
        out: Params = {}
        for p in self.params:
            value = given.get(p.name, p.default)
            if value is None:
                raise MergeConfigError(f"merge '{self.name}' needs parameter '{p.name}' ({p.doc})")
            if p.per_model:
                value = list(value) if isinstance(value, (list, tuple)) else [value] * n_models
                if len(value) != n_models:
                    raise MergeConfigError(f"merge '{self.name}': '{p.name}' needs {n_models} values, got {len(value)}")
            for v in value if p.per_model else [value]:
                if problem := p.check(v):
                    raise MergeConfigError(f"merge '{self.name}': {problem}")
            out[p.name] = value
        if self.constraint and (problem := self.constraint(out)):
            raise MergeConfigError(f"merge '{self.name}': {problem}")
        return out

    def merge(self, base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], params: Params,
              generator: torch.Generator | None = None, stats: Stats | None = None) -> Tensor:
        """The merged tensor; `params` must be resolved; `stats`: this tensor's statistics if the strategy needs
        any."""
        return self.combine(base, self.prepared(deltas, params, generator, stats), weights, params)

    def prepared(self, deltas: Sequence[Tensor], params: Params, generator: torch.Generator | None = None,
                 stats: Stats | None = None) -> list[Tensor]:
        """The vectors after the weight-independent step (the vectors themselves without one)."""
        if not self.prepare:
            return list(deltas)
        if not self.stats:
            return self.prepare(deltas, params, generator)
        missing = [s for s in self.stats if stats is None or s not in stats]
        if missing:
            raise MergeConfigError(f"merge '{self.name}' needs the statistic(s) {', '.join(missing)}")
        return self.prepare(deltas, params, generator, stats)


STRATEGIES: dict[str, Strategy] = {}


def register(name: str, *, params: Sequence[Param] = (), prepare: PrepareFn | None = None,
             prepare_params: Sequence[str] = (), coefficients: CoefficientsFn | None = None,
             reference: str = "", mergekit: str | None = None,
             constraint: Callable[[Params], str | None] | None = None,
             stats: Sequence[str] = ()) -> Callable[[CombineFn], CombineFn]:
    """Register `combine` as strategy `name`; names are unique, parameters and statistics declared up front."""
    from dem.statistics import STATISTICS

    unknown = [s for s in stats if s not in STATISTICS]
    if unknown:
        raise MergeConfigError(f"merge strategy '{name}' asks for unknown statistic(s) {', '.join(unknown)}; "
                               f"registered: {', '.join(sorted(STATISTICS))}")
    if stats and prepare is None:
        raise MergeConfigError(f"merge strategy '{name}' declares statistics but no prepare step to use them")

    def wrap(fn: CombineFn) -> CombineFn:
        if name in STRATEGIES:
            raise MergeConfigError(f"merge strategy '{name}' is already registered (pick another name)")
        STRATEGIES[name] = Strategy(name, fn, tuple(params), prepare, tuple(prepare_params), coefficients,
                                    reference, mergekit, (fn.__doc__ or "").strip(), constraint, tuple(stats))
        return fn

    return wrap


def _load_plugins() -> None:
    """Import every module in dem/strategies/, so a strategy added there registers itself."""
    from dem import strategies

    for info in pkgutil.iter_modules(strategies.__path__):
        importlib.import_module(f"{strategies.__name__}.{info.name}")


def load_strategy_file(path: str) -> None:
    """Import a user's strategy file named in config (`dem.plugins`); its @register calls add the strategies."""
    import importlib.util
    import sys
    from pathlib import Path

    file = Path(path)
    if not file.is_file():
        raise MergeConfigError(f"plugin file '{path}': no such file")
    module = f"dem_plugin_{file.resolve().stem}_{abs(hash(str(file.resolve()))) % 10**8}"
    if module in sys.modules:
        return
    before = set(STRATEGIES)
    spec = importlib.util.spec_from_file_location(module, file)
    if spec is None or spec.loader is None:
        raise MergeConfigError(f"plugin file '{path}': not a Python file")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except MergeConfigError as err:
        _forget(before)
        raise MergeConfigError(f"plugin file '{path}': {err}") from None
    except BaseException as err:
        _forget(before)
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) else ""
        raise MergeConfigError(f"plugin file '{path}'{where}: {type(err).__name__}: "
                               f"{' '.join(str(err).split())[:200]}") from None
    sys.modules[module] = mod


def _forget(before: set[str]) -> None:
    """Drop what a plugin registered before it failed, so a broken file leaves the registry as it was."""
    for name in set(STRATEGIES) - before:
        del STRATEGIES[name]


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        close = difflib.get_close_matches(name, STRATEGIES, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise MergeConfigError(f"unknown merge strategy '{name}'.{hint} Available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name]


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A per-tensor RNG, so random drops do not depend on the order tensors are merged in."""
    return torch.Generator().manual_seed(stable_seed(seed, name))


def merge_state(base: dict[str, Tensor], vectors: Sequence[dict[str, Tensor]], weights: Sequence[float],
                method: str = "dem", params: Params | None = None, seed: int = 0,
                stats: Mapping[str, Sequence[Mapping[str, Tensor]]] | None = None) -> dict[str, Tensor]:
    """Apply a registered strategy to every tensor of a state dict; `stats`: statistic name → one {tensor name:
    statistic} per model, for strategies that need them."""
    strategy = get_strategy(method)
    resolved = strategy.resolve(params or {}, len(vectors))
    return {k: strategy.merge(t, [v[k] for v in vectors], weights, resolved, tensor_generator(seed, k),
                              tensor_stats(stats, k))
            for k, t in base.items()}


def tensor_stats(stats: Mapping[str, Sequence[Mapping[str, Tensor]]] | None, name: str) -> Stats | None:
    """One tensor's statistics out of whole-model ones (None where a model's statistic lacks the tensor)."""
    if stats is None:
        return None
    return {s: [per_model.get(name) for per_model in models] for s, models in stats.items()}


# ---------------------------------------------------------------------------------------------------------------
# Sparsification (the weight-independent `prepare` step) — semantics of mergekit.sparsify, one function each.


def _rescale_l1(delta: Tensor, mask: Tensor, rescale: bool) -> Tensor:
    """Drop masked entries; with `rescale`, scale the rest so the L1 norm is unchanged (mergekit's rescale)."""
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def trim_magnitude(delta: Tensor, density: float, rescale: bool) -> Tensor:
    """TIES trim: keep the `density` fraction of entries with the largest magnitude (at least one)."""
    if density >= 1:
        return delta
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return _rescale_l1(delta, mask.reshape_as(delta), rescale)


def drop_random(delta: Tensor, density: float, rescale: bool, generator: torch.Generator | None) -> Tensor:
    """DARE: keep each entry with probability `density`, then rescale."""
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full_like(delta, density, dtype=torch.float32), generator=generator)
    return _rescale_l1(delta.float(), mask, rescale).to(delta.dtype)


def trim_outliers(delta: Tensor, density: float, gamma: float, rescale: bool) -> Tensor:
    """Breadcrumbs: drop the `gamma` fraction of largest magnitudes, then the smallest down to `density`."""
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)  # fewer outliers dropped when needed to keep `density`
    order = torch.sort(delta.abs().reshape(-1).float()).indices
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[order[bottom : bottom + keep]] = 1
    return _rescale_l1(delta, mask.reshape_as(delta), rescale)


def drop_magnitude_ranked(delta: Tensor, density: float, epsilon: float, rescale: bool,
                          generator: torch.Generator | None) -> Tensor:
    """DELLA MagPrune: per row, keep probability rises linearly with magnitude rank in density ± epsilon."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    if not (0 < density - epsilon and density + epsilon < 1):
        raise MergeConfigError(f"della: density ± epsilon must lie inside (0, 1), got {density} ± {epsilon}")
    rows = delta.unsqueeze(0) if delta.dim() < 2 else delta
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).float() + 1
    low, high = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    spread = ((ranks - low) / (high - low)).clamp(0, 1)
    mask = torch.bernoulli((density - epsilon) + spread * 2 * epsilon, generator=generator)
    return _rescale_l1(rows.float(), mask, rescale).to(delta.dtype).reshape(delta.shape)


# ---------------------------------------------------------------------------------------------------------------
# The generalised task-arithmetic combine: weighted deltas, optional sign consensus, optional normalisation.


def task_arithmetic_combine(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], params: Params,
                            consensus: bool) -> Tensor:
    """θ₀ + λ · Σ wᵢΔᵢ [÷ Σ wᵢ]; with `consensus`, only entries agreeing with the elected sign count (TIES)."""
    stacked = torch.stack(list(deltas))
    w = torch.tensor(list(weights), dtype=stacked.dtype).reshape(-1, *([1] * base.dim()))
    stacked = stacked * w
    if consensus:
        elected = (stacked.sum(dim=0) >= 0).to(stacked.dtype) * 2 - 1
        agree = stacked.sign() == elected
        mixed = (stacked * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = stacked.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if params.get("normalize", False):
        mixed = mixed / divisor
    if params.get("lambda", 1.0) != 1:
        mixed = mixed * params["lambda"]
    return (base + mixed).to(base.dtype)


def linear_coefficients(weights: Sequence[float], params: Params) -> list[float]:
    """cᵢ for merges that are θ₀ + λ Σ wᵢΔᵢ [÷ Σ wᵢ] (no consensus)."""
    scale = params.get("lambda", 1.0)
    total = sum(weights)
    if params.get("normalize", False) and abs(total) >= 1e-8:
        scale = scale / total
    return [scale * w for w in weights]


LAMBDA = Param("lambda", default=1.0, search=(0.0, 2.0), doc="scale of the summed vectors")
DENSITY = Param("density", default=1.0, per_model=True, search=(0.1, 1.0), doc="fraction of each vector kept",
                low=0.0, high=1.0, low_inclusive=False)
GAMMA = Param("gamma", default=0.01, per_model=True, search=(0.0, 0.1), doc="fraction of largest entries dropped",
              low=0.0, high=1.0)
EPSILON = Param("epsilon", default=0.15, per_model=True, search=(0.01, 0.2), doc="spread of keep probabilities",
                low=0.0, high=0.5)


def della_constraint(p: Params) -> str | None:
    """DELLA keeps entries with probability density ± epsilon: both ends must be probabilities (mergekit's rule);
    a density of 1 drops nothing, so any epsilon goes."""
    for d, e in zip(p["density"], p["epsilon"], strict=True):
        if d < 1 and not (0 < d - e and d + e < 1):
            return f"density ± epsilon must lie inside (0, 1), got {d} ± {e}"
    return None



def _flag(name: str, default: bool, doc: str) -> Param:
    return Param(name, default=default, doc=doc)


def _gta(name: str, *, consensus: bool, sparsify: str | None, normalize: bool, rescale: bool, reference: str,
         doc: str) -> None:
    """Register one setting of the generalised task-arithmetic merge (mergekit registers the same family)."""
    params = [LAMBDA, _flag("normalize", normalize, "divide by the sum of weights"),
              _flag("rescale", rescale, "keep each vector's L1 norm after dropping"), DENSITY]
    params += [GAMMA] if sparsify == "outliers" else [EPSILON] if sparsify == "della" else []

    def prepare(deltas: Sequence[Tensor], p: Params, g: torch.Generator | None) -> list[Tensor]:
        out = []
        for i, d in enumerate(deltas):
            if sparsify == "magnitude":
                d = trim_magnitude(d, p["density"][i], p["rescale"])
            elif sparsify == "random":
                d = drop_random(d, p["density"][i], p["rescale"], g)
            elif sparsify == "outliers":
                d = trim_outliers(d, p["density"][i], p["gamma"][i], p["rescale"])
            elif sparsify == "della":
                d = drop_magnitude_ranked(d, p["density"][i], p["epsilon"][i], p["rescale"], g)
            out.append(d)
        return out

    def combine(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], p: Params) -> Tensor:
        return task_arithmetic_combine(base, deltas, weights, p, consensus)

    combine.__doc__ = doc
    constraint = della_constraint if sparsify == "della" else None
    register(name, params=params, prepare=prepare if sparsify else None,
             prepare_params=[p.name for p in params if p.name not in ("lambda", "normalize")] if sparsify else (),
             coefficients=None if consensus else linear_coefficients, reference=reference, mergekit=name,
             constraint=constraint)(combine)


# ---------------------------------------------------------------------------------------------------------------
# The registered strategies.


@register("dem", coefficients=lambda w, p: list(w), reference="https://arxiv.org/abs/2406.15570",
          mergekit="task_arithmetic")
def dem_merge(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], params: Params) -> Tensor:
    """The paper's Distribution Edited Model: θ₀ + Σ wᵢΔᵢ (= mergekit task_arithmetic with λ = 1)."""
    out = base.clone()
    for delta, w in zip(deltas, weights, strict=True):
        out.add_(delta, alpha=w)
    return out


def _linear_coefficients(weights: Sequence[float], params: Params) -> list[float] | None:
    if not params["normalize"]:
        return None  # Σ wᵢθᵢ scales θ₀ by Σ wᵢ: not θ₀ + Σ cᵢΔᵢ
    total = sum(weights)
    return [w / total for w in weights] if total != 0 else [0.0] * len(weights)


@register("linear", params=[_flag("normalize", True, "divide by the sum of weights")],
          coefficients=_linear_coefficients, reference="https://arxiv.org/abs/2203.05482", mergekit="linear")
def linear_merge(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], params: Params) -> Tensor:
    """Model soup: Σ wᵢθᵢ [÷ Σ wᵢ] over the fine-tuned models θᵢ = θ₀ + Δᵢ (the base itself gets no weight).

    Normalised weights that sum to 0 give the base (mergekit divides by zero there)."""
    if params["normalize"] and sum(weights) == 0:
        return base.clone()
    out = torch.zeros_like(base)
    for delta, w in zip(deltas, weights, strict=True):
        out.add_(base + delta, alpha=w)
    if params["normalize"]:
        out = out / sum(weights)
    return out


_gta("task_arithmetic", consensus=False, sparsify=None, normalize=False, rescale=False,
     reference="https://arxiv.org/abs/2212.04089", doc="θ₀ + λ Σ wᵢΔᵢ (Ilharco et al.).")
_gta("ties", consensus=True, sparsify="magnitude", normalize=True, rescale=False,
     reference="https://arxiv.org/abs/2306.01708", doc="TIES: trim to density, elect sign, disjoint mean.")
_gta("dare_linear", consensus=False, sparsify="random", normalize=False, rescale=True,
     reference="https://arxiv.org/abs/2311.03099", doc="DARE: random drop at density, rescale, weighted sum.")
_gta("dare_ties", consensus=True, sparsify="random", normalize=False, rescale=True,
     reference="https://arxiv.org/abs/2311.03099", doc="DARE drop + TIES sign consensus.")
_gta("breadcrumbs", consensus=False, sparsify="outliers", normalize=False, rescale=False,
     reference="https://arxiv.org/abs/2312.06795", doc="Model Breadcrumbs: drop largest and smallest magnitudes.")
_gta("della", consensus=True, sparsify="della", normalize=True, rescale=True,
     reference="https://arxiv.org/abs/2406.11617", doc="DELLA: magnitude-ranked random drop + sign consensus.")

_load_plugins()
