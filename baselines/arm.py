"""The data-mixing arm: one model trained on a weighted mixture of the distributions, the mixture chosen by one of
several methods. `mixing.method` is the reported row `data_mixing`; each `mixing.compare` method is a row
`mixing_<method>`. Every method is charged for every run it needs (grid points, RegMix's proxies).

* `grid`   — every point of the simplex grid (or `mixing.mixtures`), one full run each; the best by the selection
             metric wins (the paper's baseline).
* `regmix` — K short proxy runs on Dirichlet mixtures → a regression from mixture to validation loss → the
             predicted-best mixture → one full run (baselines/regmix.py).
* `uniform`, `proportional`, `temperature` — one full run on a fixed mixture (baselines/heuristics.py).

Budgets (`budget.mode`): `per_run` gives every full run `budget.train_tokens` (the paper's setting);
`matched_total` scales each method's full runs so its total training FLOPs equal the DEM arm's (n runs of
`budget.train_tokens`), proxies included, so the comparison is quality at equal compute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from baselines import heuristics, regmix
from baselines.grid import simplex_grid
from harness.arms import ArmError, Candidate, Context, Planned, PlannedModel, register_arm
from harness.runs import cost
from harness.runs.cache import Entry
from harness.runs.spec import RunSpec

METHODS = ("grid", "regmix", "uniform", "proportional", "temperature")


def full_run_tokens(ctx: Context, n_full_runs: int, proxy_flops: float = 0.0) -> int:
    """Tokens of each full run of a method under `budget.mode` (whole blocks of budget.seq_len): under
    matched_total, what is left of DEM's training FLOPs after the method's proxies, shared by its full runs."""
    budget = ctx.cfg.budget
    if budget.mode == "per_run":
        return int(budget.train_tokens)
    dem_flops = len(ctx.names) * ctx.train_flops(budget.train_tokens)  # the DEM arm: one run per distribution
    per_token = ctx.train_flops(budget.seq_len) / budget.seq_len
    tokens = (dem_flops - proxy_flops) / (n_full_runs * per_token)
    blocks = int(tokens // budget.seq_len)
    step = budget.batch_size * budget.grad_accum_steps
    if blocks < step:
        raise ArmError(f"budget.mode=matched_total: {n_full_runs} full run(s) leave {int(tokens)} tokens each, less "
                       f"than one optimizer step ({step * budget.seq_len}); use budget.mode=per_run or fewer runs")
    return blocks * budget.seq_len


def full(ctx: Context, weights: dict[str, float]) -> dict[str, float]:
    """A mixture over every distribution, zeros included, in the configured order (how reports show it)."""
    return {n: weights.get(n, 0.0) for n in ctx.names}


class Method:
    """One way to choose a mixture; `label` is its report row."""

    def __init__(self, label: str, cfg: DictConfig) -> None:
        self.label, self.cfg = label, cfg

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        raise NotImplementedError

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> Candidate:
        raise NotImplementedError

    def planned_model(self, ctx: Context, done: Mapping[str, Entry]) -> PlannedModel:
        """The reported row before training: its runs, and no selection passes (a fixed mixture)."""
        return PlannedModel(self.label, self.plan(ctx, done), 0)


class Grid(Method):
    def mixtures(self, ctx: Context) -> list[dict[str, float]]:
        given = self.cfg.mixing.mixtures
        if given:
            return [{n: float(m.get(n, 0.0)) for n in ctx.names} for m in given]
        return simplex_grid(ctx.names, self.cfg.mixing.grid_step)

    def specs(self, ctx: Context) -> list:
        mixtures = self.mixtures(ctx)
        tokens = full_run_tokens(ctx, len(mixtures))
        return [ctx.run_spec(m, train_tokens=tokens) for m in mixtures]

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        return [Planned(self.label, s, "grid point") for s in self.specs(ctx)]

    def planned_model(self, ctx: Context, done: Mapping[str, Entry]) -> PlannedModel:
        """Every grid point is trained and measured once on the selection slice."""
        runs = self.plan(ctx, done)
        return PlannedModel(self.label, runs, len(runs))

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> Candidate:
        specs = self.specs(ctx)
        runs = [done[s.key] for s in specs]
        ppl = [ctx.measure(r.record["key"], lambda r=r: ctx.load(r.path)) for r in runs]
        scores = [ctx.score(p) for p in ppl]
        best = min(range(len(specs)), key=lambda i: scores[i])
        grid = [{"weights": full(ctx, s.weights), "val_ppl": p["val_ppl"], "score": sc}
                for s, p, sc in zip(specs, ppl, scores, strict=True)]
        return Candidate(self.label, runs[best].record["key"], lambda: ctx.load(runs[best].path),
                         [r.record["key"] for r in runs], sum(p["forward_tokens"] for p in ppl),
                         {"method": "grid", "weights": full(ctx, specs[best].weights), "grid": grid})


class Fixed(Method):
    """uniform, proportional or temperature: one run, no search."""

    def __init__(self, label: str, cfg: DictConfig, method: str) -> None:
        super().__init__(label, cfg)
        self.method = method

    def mixture(self, ctx: Context) -> dict[str, float]:
        sizes = {n: ctx.rows_available[n] for n in ctx.names}
        if self.method == "temperature":
            return heuristics.temperature(sizes, self.cfg.mixing.temperature)
        return getattr(heuristics, self.method)(sizes)

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        return [Planned(self.label, ctx.run_spec(self.mixture(ctx), train_tokens=full_run_tokens(ctx, 1)),
                        f"{self.method} mixture")]

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> Candidate:
        spec = ctx.run_spec(self.mixture(ctx), train_tokens=full_run_tokens(ctx, 1))
        run = done[spec.key]
        selected = {"method": self.method, "weights": full(ctx, spec.weights)}
        if self.method == "temperature":
            selected["temperature"] = self.cfg.mixing.temperature
        return Candidate(self.label, run.record["key"], lambda: ctx.load(run.path), [run.record["key"]], 0, selected)


class RegMix(Method):
    """Proxies on the compared model, or on a smaller `mixing.proxy_model` preset (its own base, tokenizer and
    validation tokens); the full run on the compared model."""

    def __init__(self, label: str, cfg: DictConfig) -> None:
        super().__init__(label, cfg)
        self.fit: dict[str, Any] | None = None

    def proxy_ctx(self, ctx: Context) -> Context:
        preset = self.cfg.mixing.proxy_model
        return ctx.for_model(preset) if preset and ctx.for_model else ctx

    def proxies(self, ctx: Context) -> list:
        m = self.cfg.mixing
        mixtures = regmix.dirichlet_mixtures(ctx.names, m.proxies, ctx.seeds.search, m.dirichlet_alpha)
        return [self.proxy_ctx(ctx).run_spec(w, train_tokens=m.proxy_tokens) for w in mixtures]

    def proxy_flops(self, ctx: Context) -> float:
        m = self.cfg.mixing
        return m.proxies * self.proxy_ctx(ctx).train_flops(m.proxy_tokens)

    def final_tokens(self, ctx: Context) -> int:
        return full_run_tokens(ctx, 1, proxy_flops=self.proxy_flops(ctx))

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        proxies = self.proxies(ctx)
        flops = self.proxy_ctx(ctx).train_flops(self.cfg.mixing.proxy_tokens)
        on = f" on {self.cfg.mixing.proxy_model}" if self.cfg.mixing.proxy_model else ""
        planned = [Planned(self.label, s, f"proxy {i + 1}/{len(proxies)}{on}", flops=flops)
                   for i, s in enumerate(proxies)]
        if not all(s.key in done for s in proxies):
            return [*planned, Planned(self.label, None, "full run of the predicted-best mixture (after the proxies)",
                                      train_tokens=self.final_tokens(ctx))]
        return [*planned, Planned(self.label, self._final(ctx, done), "full run of the predicted-best mixture")]

    def planned_model(self, ctx: Context, done: Mapping[str, Entry]) -> PlannedModel:
        """Each proxy is measured once on the selection slice, on the proxy model."""
        return PlannedModel(self.label, self.plan(ctx, done), self.cfg.mixing.proxies, self.cfg.mixing.proxy_model)

    def _final(self, ctx: Context, done: Mapping[str, Entry]) -> RunSpec:
        """Measure the proxies, fit the regression, pick the mixture (once per comparison)."""
        if self.fit is None:
            m = self.cfg.mixing
            pctx = self.proxy_ctx(ctx)
            proxies = self.proxies(ctx)
            ppl = [pctx.measure(done[s.key].record["key"], lambda s=s: pctx.load(done[s.key].path)) for s in proxies]
            losses = [math.log(ctx.score(p)) for p in ppl]  # log of the metric: a validation loss
            self.fit = regmix.predict_best(ctx.names, [full(ctx, s.weights) for s in proxies], losses,
                                           ctx.seeds.search, m.candidates, m.top_k, m.dirichlet_alpha)
            self.fit["proxy_forward_tokens"] = sum(p["forward_tokens"] for p in ppl)
            self.fit["proxy_forward_flops"] = cost.forward_flops(pctx.model_config, self.fit["proxy_forward_tokens"],
                                                                 ctx.cfg.budget.seq_len)
            self.fit["proxy_losses"] = losses
            self.fit["proxy_model"] = m.proxy_model or ctx.cfg.model.preset
        return ctx.run_spec(self.fit["weights"], train_tokens=self.final_tokens(ctx))

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> Candidate:
        final = self._final(ctx, done)
        run = done[final.key]
        proxies = [done[s.key].record["key"] for s in self.proxies(ctx)]
        fit = self.fit or {}
        return Candidate(self.label, run.record["key"], lambda: ctx.load(run.path), [*proxies, run.record["key"]],
                         fit["proxy_forward_tokens"],
                         {"method": "regmix", "weights": full(ctx, final.weights),
                          "proxy_tokens": self.cfg.mixing.proxy_tokens,
                          **{k: v for k, v in fit.items() if k not in ("weights", "proxy_forward_tokens")}},
                         selection_flops=fit["proxy_forward_flops"])


def make_method(label: str, method: str, cfg: DictConfig) -> Method:
    if method == "grid":
        return Grid(label, cfg)
    if method == "regmix":
        return RegMix(label, cfg)
    if method in ("uniform", "proportional", "temperature"):
        return Fixed(label, cfg, method)
    raise ArmError(f"mixing.method: unknown method '{method}'; available: {', '.join(METHODS)}")


@register_arm("data_mixing")
class MixingArm:
    name = "data_mixing"

    def __init__(self, cfg: DictConfig) -> None:
        self.methods = [make_method("data_mixing", cfg.mixing.method, cfg)]
        self.methods += [make_method(f"mixing_{m}", m, cfg) for m in cfg.mixing.compare]
        self.labels = [m.label for m in self.methods]  # its report rows, in order

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        return [p for m in self.methods for p in m.plan(ctx, done)]

    def planned_models(self, ctx: Context, done: Mapping[str, Entry]) -> list[PlannedModel]:
        return [m.planned_model(ctx, done) for m in self.methods]

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> list[Candidate]:
        return [m.select(ctx, done) for m in self.methods]
