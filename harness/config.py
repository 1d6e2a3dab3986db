"""Config schema and validation: every problem is found and reported together, before any expensive work.

The YAML tree under conf/ holds the values (one file per preset); this module holds their types and limits.
Fields marked MISSING must come from a preset; the others have a default that rarely needs changing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "data", "budget", "mixing", "dem", "eval", "tracking")
DISTRIBUTIONS = ("mathqa", "sni", "cot", "drop")
EVAL_TASKS = ("mathqa_mc", "sni_mc", "cot_mc", "drop_mc", "bbh_object_counting")
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "grid")
TRACKING_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """Bad user input; the CLI prints it as one line and exits with code 2."""


@dataclass
class ModelConfig:
    preset: str = MISSING
    vocab_size: int = MISSING
    hidden_size: int = MISSING
    intermediate_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    max_seq_len: int = MISSING
    pretrain_tokens: int = MISSING  # tokens of the generic corpus the base model is pre-trained on
    pretrain_lr: float = MISSING
    pretrain_seq_len: int = MISSING
    pretrain_batch_size: int = MISSING
    generic_docs: int = MISSING  # documents in the generic pre-training corpus


@dataclass
class DataConfig:
    source: str = "builtin"
    distributions: list[str] = MISSING
    n_train: int = MISSING  # examples per distribution
    n_val: int = MISSING
    n_test: int = MISSING


@dataclass
class BudgetConfig:
    train_tokens: int = MISSING  # tokens per training run, the same for every run of both arms
    seq_len: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0


@dataclass
class MixingConfig:
    grid_step: float = MISSING  # simplex grid spacing; 1/grid_step must be a whole number


@dataclass
class MergeSpec:
    merge: str = MISSING  # a strategy registered in dem/merge.py, dem/strategies/ or a dem.plugins file
    params: dict[str, Any] | None = None  # the strategy's parameters, mergekit names; None = all defaults
    search_params: list[str] = field(default_factory=list)  # numeric parameters Optuna searches too


@dataclass
class DemConfig:
    merge: str = "dem"  # a strategy registered in dem/merge.py, dem/strategies/ or a dem.plugins file
    params: dict[str, Any] | None = None  # the strategy's parameters, mergekit names; None = all defaults
    search_params: list[str] = field(default_factory=list)  # numeric parameters Optuna searches too
    compare: list[MergeSpec] = field(default_factory=list)  # more strategies, each a row `dem_<merge>`
    plugins: list[str] = field(default_factory=list)  # extra strategy files to import
    n_trials: int = MISSING
    sampler: str = "tpe"
    weight_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    grid_points: int = 5  # values per searched axis when sampler=grid
    prune_fraction: float = 0.0  # > 0: score this slice of the validation tokens first; the pruner may stop there
    storage: str = "journal"  # journal (cache_dir, resumable) | memory | sqlite (output folder) | an RDB URL


@dataclass
class EvalConfig:
    tasks: list[str] = MISSING
    limit: int | None = None  # docs per task; None = the whole test split
    batch_size: int = 32


@dataclass
class TrackingConfig:
    mode: str = "offline"
    project: str = "dem-bench"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    dem: DemConfig = field(default_factory=DemConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    output_dir: str = MISSING
    cache_dir: str = MISSING


def presets(group: str) -> list[str]:
    """The preset names shipped for a config group (conf/<group>/*.yaml)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_presets(overrides: list[str]) -> None:
    """Reject `group=name` overrides naming a preset that does not exist (Hydra's own error is a page long)."""
    for item in overrides:
        key, sep, values = item.lstrip("+~").partition("=")
        for value in values.split(","):  # `-m model=a,b` sweeps over presets
            if sep and key in GROUPS and value not in presets(key):
                raise ConfigError(f"{key}: unknown preset '{value}'; available: {', '.join(presets(key))}")


def _one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines (full_key, object_type…): name the key, keep the first line."""
    first = str(err).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {first}" if key and key not in first else first


def validate(cfg: DictConfig) -> DictConfig:
    """Type-check `cfg` against the schema and check every value's range; return the typed config.

    Raises ConfigError naming each offending key and what is allowed, all problems in one message.
    """
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        resolved = OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
        c = OmegaConf.merge(OmegaConf.structured(Config), resolved)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err)) from None
    problems: list[str] = []

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            problems.append(f"{key}={OmegaConf.select(c, key)}: {allowed}")

    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_seq_len",
                "pretrain_tokens", "pretrain_seq_len", "pretrain_batch_size", "generic_docs"):
        need(c.model[key] > 0, f"model.{key}", "must be a positive integer")
    need(c.model.hidden_size % max(c.model.num_heads, 1) == 0, "model.hidden_size",
         f"must be divisible by model.num_heads={c.model.num_heads}")
    need(c.model.pretrain_lr > 0, "model.pretrain_lr", "must be > 0")

    need(c.data.source == "builtin", "data.source", "allowed: builtin")
    need(len(c.data.distributions) > 0 and set(c.data.distributions) <= set(DISTRIBUTIONS)
         and len(set(c.data.distributions)) == len(c.data.distributions),
         "data.distributions", f"a non-empty list of distinct names from: {', '.join(DISTRIBUTIONS)}")
    for key in ("n_train", "n_val", "n_test"):
        need(c.data[key] > 0, f"data.{key}", "must be a positive integer")

    for key in ("train_tokens", "seq_len", "batch_size"):
        need(c.budget[key] > 0, f"budget.{key}", "must be a positive integer")
    if c.budget.train_tokens > 0 and c.budget.seq_len > 0 and c.budget.batch_size > 0:
        need(c.budget.train_tokens >= c.budget.seq_len * c.budget.batch_size, "budget.train_tokens",
             f"must be at least one batch (budget.seq_len * budget.batch_size = "
             f"{c.budget.seq_len * c.budget.batch_size})")
    need(c.budget.seq_len <= c.model.max_seq_len, "budget.seq_len",
         f"must be <= model.max_seq_len={c.model.max_seq_len}")
    need(c.budget.lr > 0, "budget.lr", "must be > 0")
    need(0 <= c.budget.warmup_ratio < 1, "budget.warmup_ratio", "must be in [0, 1)")

    step = c.mixing.grid_step
    need(0 < step <= 1 and abs(1 / step - round(1 / step)) < 1e-9, "mixing.grid_step",
         "must divide 1 into a whole number of steps (e.g. 1, 0.5, 0.25, 0.2, 0.1)")

    problems += _check_strategy(c)
    need(c.dem.n_trials >= 1, "dem.n_trials", "must be >= 1")
    need(c.dem.sampler in SAMPLERS, "dem.sampler", f"allowed: {', '.join(SAMPLERS)}")
    need(len(c.dem.weight_range) == 2 and c.dem.weight_range[0] < c.dem.weight_range[1], "dem.weight_range",
         "must be [low, high] with low < high")

    need(c.dem.grid_points >= 2, "dem.grid_points", "must be >= 2")
    need(0 <= c.dem.prune_fraction < 1, "dem.prune_fraction", "must be in [0, 1)")
    need(c.dem.storage in ("journal", "memory", "sqlite") or "://" in c.dem.storage, "dem.storage",
         "allowed: journal, memory, sqlite, or an RDB URL such as postgresql://host/db")
    need(len(c.eval.tasks) > 0 and set(c.eval.tasks) <= set(EVAL_TASKS), "eval.tasks",
         f"a non-empty list from: {', '.join(EVAL_TASKS)}")
    need(c.eval.limit is None or c.eval.limit > 0, "eval.limit", "must be null or a positive integer")
    need(c.eval.batch_size > 0, "eval.batch_size", "must be a positive integer")
    need(c.tracking.mode in TRACKING_MODES, "tracking.mode", f"allowed: {', '.join(TRACKING_MODES)}")

    if problems:
        raise ConfigError("; ".join(problems))
    return c


def strategy_params(spec: DictConfig) -> dict[str, Any]:
    """A merge's `params` as a plain dict (None in YAML means: every parameter at its default)."""
    return OmegaConf.to_container(spec.params) if spec.params is not None else {}


def _check_strategy(c: DictConfig) -> list[str]:
    """Each merge strategy exists, its parameters are declared, searched ones are numeric with a range."""
    from dem.merge import MergeConfigError, get_strategy, load_strategy_file  # local: --help stays light

    try:
        for path in c.dem.plugins:
            load_strategy_file(path)
    except MergeConfigError as err:
        return [str(err)]
    problems = []
    specs = [("dem", c.dem)] + [(f"dem.compare[{i}]", s) for i, s in enumerate(c.dem.compare)]
    labels = [s.merge for _, s in specs[1:]]
    if len(set(labels)) != len(labels):
        problems.append("dem.compare: each strategy at most once (rows are named dem_<merge>)")
    for key, spec in specs:
        try:
            strategy = get_strategy(spec.merge)
            strategy.resolve(strategy_params(spec), len(c.data.distributions))
        except MergeConfigError as err:
            problems.append(f"{key}.merge={spec.merge}: {err}")
            continue
        searchable = sorted(p.name for p in strategy.params if p.search)
        problems += [f"{key}.search_params: '{name}' cannot be searched for merge '{strategy.name}'; searchable: "
                     f"{', '.join(searchable) or 'none'}" for name in spec.search_params if name not in searchable]
    return problems
