"""Config schema and validation: every problem is found and reported together, before any expensive work.

The YAML tree under conf/ holds the values (one file per preset); this module holds their types and limits.
Fields marked MISSING must come from a preset; the others have a default that rarely needs changing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import HarnessError
from harness.sources import SourceConfig, check_source

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "data", "budget", "mixing", "dem", "eval", "tracking")
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "grid")
MODEL_SOURCES = ("tiny", "hf", "smollm2")
TINY_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_seq_len",
             "pretrain_tokens", "pretrain_lr", "pretrain_seq_len", "pretrain_batch_size", "generic_docs")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
TRACKING_MODES = ("offline", "online", "disabled")


class ConfigError(HarnessError, ValueError):
    """Bad user input; the CLI prints it as one line and exits with code 2."""


@dataclass
class ModelConfig:
    preset: str = MISSING
    source: str = MISSING  # tiny (built + pre-trained here) | hf (any causal LM) | smollm2 (offline, from a wheel)
    # hf: a hub id or a local folder, and the hub revision (branch, tag or commit)
    name_or_path: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False  # run a model's own Python code: only for models you trust
    use_safetensors: bool = True  # false also allows pickled *.bin weights: only for checkpoints you trust
    use_fast_tokenizer: bool = True
    device: str = "auto"  # auto (a GPU when visible) | cpu | cuda
    dtype: str = "auto"  # auto (bf16 on a GPU that has it, else fp32) | float32 | bfloat16
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1.3x the time
    # tiny: the architecture built from the config and its brief pre-training on the built-in corpus
    vocab_size: int | None = None
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    max_seq_len: int | None = None
    pretrain_tokens: int | None = None  # tokens of the generic corpus the base model is pre-trained on
    pretrain_lr: float | None = None
    pretrain_seq_len: int | None = None
    pretrain_batch_size: int | None = None
    generic_docs: int | None = None  # documents in the generic pre-training corpus


@dataclass
class DataConfig:
    distributions: list[str] = MISSING  # the distributions trained on (one DEM fine-tune each)
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # name -> where its rows come from;
    # a distribution without an entry is `builtin` (harness/sources.py documents formats and templates)
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
    grad_accum_steps: int = 1  # effective batch = batch_size x grad_accum_steps x processes (recorded per run)


@dataclass
class MixingConfig:
    grid_step: float = MISSING  # simplex grid spacing; 1/grid_step must be a whole number


@dataclass
class MergeSpec:
    merge: str = MISSING  # a strategy registered in dem/merge.py, dem/strategies/ or a dem.plugins file
    params: Any = None  # the strategy's parameters (mergekit names) as a dict; None = all defaults. Typed Any:
    # OmegaConf cannot merge an override dict into a None-valued Optional[Dict] node
    search_params: list[str] = field(default_factory=list)  # numeric parameters Optuna searches too


@dataclass
class DemConfig:
    merge: str = "dem"  # a strategy registered in dem/merge.py, dem/strategies/ or a dem.plugins file
    params: Any = None  # the strategy's parameters (mergekit names) as a dict; None = all defaults. Typed Any:
    # OmegaConf cannot merge an override dict into a None-valued Optional[Dict] node
    search_params: list[str] = field(default_factory=list)  # numeric parameters Optuna searches too
    compare: list[MergeSpec] = field(default_factory=list)  # more strategies, each a row `dem_<merge>`
    plugins: list[str] = field(default_factory=list)  # extra strategy files to import
    n_trials: int = MISSING
    sampler: str = "tpe"
    weight_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    grid_points: int = 5  # values per searched axis when sampler=grid
    prune_fraction: float = 0.0  # > 0: score this slice of the validation tokens first; the pruner may stop there
    storage: str = "journal"  # journal (cache_dir, resumable) | memory | sqlite (output folder) | an RDB URL
    vector_dtype: str = "auto"  # auto (the model's dtype) | float32 | bfloat16 — Δ is computed in fp32, then cast
    vectors_on: str = "device"  # device: vectors live beside the model | cpu: kept in host memory, streamed per tensor


@dataclass
class EvalConfig:
    tasks: list[str] = MISSING  # built-in tasks and/or any lm-eval task or group name (mmlu, bbh_fewshot, drop, …)
    num_fewshot: Any = None  # None = each task's default | an int for every task | {task or group: shots}
    limit: int | None = None  # docs per task; None = the whole test split
    batch_size: int = 32
    gen_kwargs: Any = None  # generation tasks: a dict passed to lm-eval, e.g. {max_gen_toks: 64}


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
    hub_mirror: str | None = None  # a folder serving every hub dataset (training sources and lm-eval tasks) offline


def register_schema() -> None:
    """Put the schema under the YAML tree (conf/config.yaml lists it first in `defaults`), so every key has its
    default and type from here and an override of an unknown key fails when Hydra composes."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="dem_bench_schema", node=Config)


register_schema()


def presets(group: str) -> list[str]:
    """The preset names shipped for a config group (conf/<group>/*.yaml)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def did_you_mean(value: str, options: list[str] | tuple[str, ...]) -> str:
    """" Did you mean 'x'?" for the closest option, or "" (difflib, as lm-eval's registry does)."""
    close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def one_of(options: list[str] | tuple[str, ...], value: Any) -> str:
    """What a key allows, with the closest option to the value given."""
    return f"allowed: {', '.join(options)}.{did_you_mean(value, options)}"


def check_presets(overrides: list[str]) -> None:
    """Reject `group=name` overrides naming a preset that does not exist (Hydra's own error is a page long)."""
    for item in overrides:
        key, sep, values = item.lstrip("+~").partition("=")
        for value in values.split(","):  # `-m model=a,b` sweeps over presets
            if sep and key in GROUPS and value not in presets(key):
                raise ConfigError(f"{key}: unknown preset '{value}'.{did_you_mean(value, presets(key))} "
                                  f"Available: {', '.join(presets(key))}")


def known_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of a composed config (for "did you mean" on a misspelled override)."""
    keys = []
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, DictConfig):
            keys += known_keys(v, f"{key}.")
    return keys


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

    need(c.model.source in MODEL_SOURCES, "model.source", one_of(MODEL_SOURCES, c.model.source))
    if c.model.source == "tiny":
        for key in TINY_KEYS:
            need(c.model[key] is not None and c.model[key] > 0, f"model.{key}",
                 "must be a positive number (model=tiny)")
        if c.model.hidden_size and c.model.num_heads:
            need(c.model.hidden_size % c.model.num_heads == 0, "model.hidden_size",
                 f"must be divisible by model.num_heads={c.model.num_heads}")
        if c.model.max_seq_len:
            need(c.budget.seq_len <= c.model.max_seq_len, "budget.seq_len",
                 f"must be <= model.max_seq_len={c.model.max_seq_len}")
    if c.model.source == "hf":
        need(bool(c.model.name_or_path), "model.name_or_path", "a hub id (owner/name) or a local folder (model=hf)")
    need(c.model.device in DEVICES or c.model.device.startswith("cuda:"), "model.device",
         f"allowed: {', '.join(DEVICES)} (or cuda:N)")
    need(c.model.dtype in DTYPES, "model.dtype", one_of(DTYPES, c.model.dtype))

    names = list(c.data.distributions)
    need(len(names) > 0 and len(set(names)) == len(names), "data.distributions", "a non-empty list of distinct names")
    for name in names:
        source = OmegaConf.to_object(c.data.sources[name]) if name in c.data.sources else SourceConfig()
        problems += check_source(name, source)
        if c.hub_mirror and source.path and not problems:
            problems += _check_mirrored_source(name, source, Path(c.hub_mirror))
    for key in ("n_train", "n_val", "n_test"):
        need(c.data[key] > 0, f"data.{key}", "must be a positive integer")

    for key in ("train_tokens", "seq_len", "batch_size"):
        need(c.budget[key] > 0, f"budget.{key}", "must be a positive integer")
    if c.budget.train_tokens > 0 and c.budget.seq_len > 0 and c.budget.batch_size > 0:
        batch = c.budget.seq_len * c.budget.batch_size * max(c.budget.grad_accum_steps, 1)
        need(c.budget.train_tokens >= batch, "budget.train_tokens",
             f"must be at least one optimizer step (budget.seq_len * batch_size * grad_accum_steps = {batch})")
    need(c.budget.grad_accum_steps >= 1, "budget.grad_accum_steps", "must be >= 1")
    need(c.budget.lr > 0, "budget.lr", "must be > 0")
    need(0 <= c.budget.warmup_ratio < 1, "budget.warmup_ratio", "must be in [0, 1)")

    step = c.mixing.grid_step
    need(0 < step <= 1 and abs(1 / step - round(1 / step)) < 1e-9, "mixing.grid_step",
         "must divide 1 into a whole number of steps (e.g. 1, 0.5, 0.25, 0.2, 0.1)")

    problems += _check_strategy(c)
    need(c.dem.n_trials >= 1, "dem.n_trials", "must be >= 1")
    need(c.dem.sampler in SAMPLERS, "dem.sampler", one_of(SAMPLERS, c.dem.sampler))
    need(len(c.dem.weight_range) == 2 and c.dem.weight_range[0] < c.dem.weight_range[1], "dem.weight_range",
         "must be [low, high] with low < high")

    need(c.dem.grid_points >= 2, "dem.grid_points", "must be >= 2")
    need(0 <= c.dem.prune_fraction < 1, "dem.prune_fraction", "must be in [0, 1)")
    need(c.dem.storage in ("journal", "memory", "sqlite") or "://" in c.dem.storage, "dem.storage",
         "allowed: journal, memory, sqlite, or an RDB URL such as postgresql://host/db")
    need(c.dem.vector_dtype in DTYPES, "dem.vector_dtype", one_of(DTYPES, c.dem.vector_dtype))
    need(c.dem.vectors_on in ("device", "cpu"), "dem.vectors_on", one_of(("device", "cpu"), c.dem.vectors_on))
    need(len(c.eval.tasks) > 0, "eval.tasks", "a non-empty list of built-in or lm-eval task names")
    need(c.eval.gen_kwargs is None or isinstance(c.eval.gen_kwargs, DictConfig), "eval.gen_kwargs",
         "must be null or a mapping such as {max_gen_toks: 64}")
    if c.eval.tasks and not problems:  # stock task names need lm-eval's index (seconds): only for a sane config
        from harness.evaluation import check_eval  # local: evaluation imports this module

        try:
            check_eval(list(c.eval.tasks), plain(c.eval.num_fewshot), c.hub_mirror)
        except ConfigError as err:
            problems.append(str(err))
    need(c.eval.limit is None or c.eval.limit > 0, "eval.limit", "must be null or a positive integer")
    need(c.eval.batch_size > 0, "eval.batch_size", "must be a positive integer")
    need(c.tracking.mode in TRACKING_MODES, "tracking.mode", one_of(TRACKING_MODES, c.tracking.mode))

    if problems:
        raise ConfigError("; ".join(problems))
    return c


def _check_mirrored_source(name: str, source: SourceConfig, mirror: Path) -> list[str]:
    """A hub-id training source must be in the mirror, every split it reads (named before any training)."""
    from harness import mirror as hub  # local: mirror imports this module

    if not hub.is_hub_id(source.path) or source.data_files:
        return []
    splits = [source.split] + ([source.val_split] if source.val_split else [])
    try:
        for config in source.configs or [source.name]:
            hub.check(mirror, source.path, config, splits, why=f"training source data.sources.{name}")
    except ConfigError as err:
        return [str(err)]
    return []


def plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (dicts, lists, scalars); plain values pass through."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


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
