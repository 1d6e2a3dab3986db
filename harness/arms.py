"""Arms: the ways of getting one model for several distributions that a comparison pits against each other.

An arm plans the training runs it needs and selects its model(s) from their results; the pipeline trains what
every arm plans (through the shared, locked cache), charges each arm for every run it needed, evaluates what each
selects, and reports the rows in `arms` order. Adding a baseline is one module with one `@register_arm` class
and one config preset — no edit to the pipeline (the shipped arms are imported by harness/arm_registry.py).

The contract (both methods are called with `done`, the finished training runs so far, by RunSpec key):

* `plan(ctx, done) -> list[Planned]` — every run the arm needs that it can name now (a run already in `done` may
  be listed again; the pipeline trains only what is missing), plus placeholders (`spec=None`) for runs it will
  only be able to name later (e.g. RegMix's full run, chosen after its proxies). The pipeline calls it again
  after each round of training until it names nothing new; the first call's answer is the printed plan.
* `select(ctx, done) -> list[Candidate]` — once every planned run is done: the arm's reported model(s), each with
  every run it is charged for and the forward tokens its selection used.
* `planned_models(ctx, done) -> list[PlannedModel]` (optional) — before any training: the model(s) `select` will
  report, each with the runs it will be charged for and the passes its selection will make over the selection
  slice, so the plan can cost training, search and evaluation per arm. An arm without it is costed as one model,
  its planned runs, and no selection passes (the plan says so).
* `search_inputs(ctx) -> str` (optional) — "vectors" if its selection writes and holds dense distribution
  vectors, "adapters" if it searches LoRA adapters only; the plan's memory and disk lines count them.
* `statistics_bytes(ctx) -> int` (optional) — the bytes of the per-model statistics its merges will store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import DictConfig

from harness.errors import HarnessError

if TYPE_CHECKING:  # annotations only: the protocol stays importable without torch (`dem-bench --help`, validate)
    from harness.runs.cache import Entry, RunCache
    from harness.runs.spec import RunSpec


class ArmError(HarnessError, ValueError):
    """An unknown arm or an arm config it cannot use; one line."""


@dataclass(frozen=True)
class Planned:
    """A run an arm needs; `spec` is None for a run it can only name after earlier ones finish."""

    arm: str
    spec: RunSpec | None
    note: str = ""  # what the run is for (e.g. "grid point", "proxy 3/12", "full run of the predicted mixture")
    train_tokens: int = 0  # for a placeholder: the tokens it will train on (so the plan can cost it)
    flops: float | None = None  # its training FLOPs when not the compared model's (a RegMix proxy model's)


@dataclass(frozen=True)
class PlannedModel:
    """A model an arm will report, as the plan sees it before training: its row label, every run it will be charged
    for, and the forward passes its selection makes over the selection slice (DEM: one per search trial, an upper
    bound where trials are pruned; a grid: one per point; RegMix: one per proxy, on `selection_model`)."""

    label: str
    runs: list[Planned]
    selection_passes: int
    selection_model: str | None = None  # the `model` preset those passes run on; None: the compared model


@dataclass
class Candidate:
    """A model an arm reports: one row of summary.json and report.md."""

    label: str  # the row name: data_mixing, dem, dem_ties, mixing_regmix, …
    model_key: str  # its identity for perplexity and evaluation cache keys
    open: Callable[[], Any]  # loads the model (on the comparison's device)
    runs: list[str]  # keys of every training run charged to it (proxies and grid points included)
    selection_forward_tokens: int  # forward tokens its selection used (search trials, candidates' validation)
    selected: dict[str, Any] = field(default_factory=dict)  # what was chosen, and how
    selection_flops: float | None = None  # when its selection ran on another model (proxies); else from tokens
    merge_cost: dict[str, Any] | None = None  # a merge's own cost: stats_flops (added to its selection FLOPs),
    # stats_wall_s, search_wall_s (as cached), held_bytes (dem.arm)


@dataclass
class Context:
    """What arms share: the config, the cache, the data, the base, and the means to name runs and measure models.
    Fields an arm needs only after training (tokenizer, val) are filled by then."""

    cfg: DictConfig
    cache: RunCache
    names: list[str]  # the distributions trained on
    rows_available: dict[str, int]  # training rows per distribution (for size-proportional mixtures)
    out: Path
    base: Any  # harness.runs.base.Base
    runtime: Any  # harness.models.loading.Runtime
    options: Any  # harness.models.loading.LoadOptions
    seeds: DictConfig
    data_spec: dict[str, Any]  # the selection slice's identity (seed, fingerprints, tokenizer): ppl/search keys
    report_spec: dict[str, Any]  # the report slice's identity: the reported perplexities' keys
    run_spec: Callable[..., RunSpec]  # run_spec(weights, train_tokens=None) -> RunSpec
    score: Callable[[Mapping[str, Any]], float]  # the selection metric of a perplexity record (lower is better)
    train_flops: Callable[[int], float]  # training FLOPs of `tokens` tokens at the budget's sequence length
    model_config: Any = None  # the base's transformers config (cost estimates)
    adapter_params: int | None = None  # training.method=lora: parameters of one run's adapters (None: full)
    tracker: Any = None  # harness.report.tracking.Tracker
    tokenizer: Any = None
    val: dict[str, Any] = field(default_factory=dict)  # the selection slice's packed blocks per distribution
    report: dict[str, Any] = field(default_factory=dict)  # the report slice's blocks and example owners
    measure: Callable[[str, Callable[[], Any]], dict[str, Any]] | None = None  # perplexity on the selection slice
    measure_report: Callable[[str, Callable[[], Any]], dict[str, Any]] | None = None  # on the report slice only
    load: Callable[[Path], Any] | None = None  # open a saved model on the comparison's device
    for_model: Callable[[str], Context] | None = None  # the same context for another `model` preset (proxies)
    slice_tokens: dict[str, int] = field(default_factory=dict)  # a plan before tokenising: estimated forward
    # tokens of one pass over the selection and the report slice ({"selection": n, "report": n})


class Arm(Protocol):
    name: str
    labels: list[str]  # the rows `select` will return (eval.score_models checks names against them before training)

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]: ...

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> list[Candidate]: ...


ARMS: dict[str, Callable[[DictConfig], Arm]] = {}


def register_arm(name: str) -> Callable[[type], type]:
    """Register an arm class under `name` (what `arms: [...]` lists); its constructor takes the whole config."""

    def wrap(cls: type) -> type:
        if name in ARMS:
            raise ArmError(f"arm '{name}' is already registered")
        ARMS[name] = cls
        return cls

    return wrap
