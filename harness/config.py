"""Config schema and validation: every problem is found and reported together, before any expensive work.

The YAML tree under conf/ holds the values (one file per preset); this module holds their types and limits.
Fields marked MISSING must come from a preset; the others have a default that rarely needs changing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, SI, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.accelerators import ACCELERATORS
from harness.errors import HarnessError
from harness.sources import SourceConfig, check_source

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "data", "budget", "mixing", "dem", "eval", "tracking", "executor")
SAMPLERS = ("tpe", "random", "cmaes", "qmc", "gp", "grid")
MODEL_SOURCES = ("tiny", "hf", "smollm2")
EXECUTORS = ("local", "submitit_local", "slurm")
TINY_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "max_seq_len",
             "pretrain_tokens", "pretrain_lr", "pretrain_seq_len", "pretrain_batch_size", "generic_docs")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
TRACKING_MODES = ("offline", "online", "disabled")
TRAINING_METHODS = ("full", "lora")


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
    # hf: the checkpoint's config.json fields (model_type, hidden_size, …), so plan_only can cost the model
    # without the hub; the real config.json wins wherever the checkpoint can be found. Typed Any: a dict or null
    architecture: Any = None


@dataclass
class DataConfig:
    distributions: list[str] = MISSING  # the distributions trained on (one DEM fine-tune each)
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # name -> where its rows come from;
    # a distribution without an entry is `builtin` (harness/sources.py documents formats and templates)
    n_train: int = MISSING  # examples per distribution
    n_val: int = MISSING  # the selection slice: both arms select on it (DEM's search, the mixing grid)
    n_report: int | None = None  # the report slice, disjoint and never selected on: every reported perplexity,
    # its CI and paired test use it (None: as many as each distribution's n_val)
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
    mode: str = "per_run"  # per_run: every full run gets train_tokens | matched_total: each mixing method's runs
    # are scaled so its total training FLOPs equal the DEM arm's


@dataclass
class LoraSettings:
    """LoRA's settings (Hu et al. 2021, arXiv 2106.09685), passed to peft's LoraConfig unchanged."""

    r: int = 16  # rank of each adapter: trained parameters and adapter bytes grow linearly with it
    alpha: float = 32.0  # the update is scaled by alpha / r (peft's lora_alpha); 2r is the common choice
    dropout: float = 0.0  # dropout on the adapters' input (peft's lora_dropout); 0 keeps runs deterministic
    # the attention and MLP projections of Llama-style models (peft matches a module whose name ends in one)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainingConfig:
    """How every fine-tune of both arms trains: all weights, or LoRA adapters on a frozen base."""

    method: str = "full"  # full (every weight) | lora (peft adapters; each run stored as an adapter)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class MixingConfig:
    method: str = "grid"  # the `data_mixing` row: grid | regmix | uniform | proportional | temperature
    compare: list[str] = field(default_factory=list)  # more methods, each a row `mixing_<method>`
    grid_step: float = 0.5  # grid: simplex spacing; 1/grid_step must be a whole number
    mixtures: list[dict[str, float]] | None = None  # grid: an explicit list of mixtures instead of the simplex grid
    temperature: float = 2.0  # temperature: p_i ∝ size_i^(1/τ) (τ = 1 proportional, large τ uniform)
    proxies: int = 12  # regmix: K short proxy runs (at least one more than the number of distributions)
    proxy_tokens: int = 16384  # regmix: training tokens of each proxy run
    proxy_model: str | None = None  # regmix: a smaller `model` preset the proxies train (None: the compared model)
    dirichlet_alpha: float = 1.0  # regmix: proxies and candidates sample mixtures from Dirichlet(α)
    candidates: int = 100_000  # regmix: simulated mixtures scored by the regression
    top_k: int = 100  # regmix: the predicted-best mixtures averaged into the one trained


@dataclass
class MergeSpec:
    merge: str = MISSING  # a strategy registered in dem/merge.py, dem/strategies/ or a dem.plugins file
    params: Any = None  # the strategy's parameters (mergekit names) as a dict; None = all defaults. Typed Any:
    # OmegaConf cannot merge an override dict into a None-valued Optional[Dict] node
    search_params: list[str] = field(default_factory=list)  # numeric parameters Optuna searches too


@dataclass
class StatsConfig:
    """The statistics data-aware strategies (fisher, regmean) compute per fine-tune (dem/statistics.py)."""

    n_tokens: int = 4096  # training tokens of the fine-tune's own distribution each statistic is computed on


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
    search_workers: int = 1  # > 1: processes sharing the study (not storage=memory): faster, not bitwise reproducible
    vector_dtype: str = "auto"  # auto (the model's dtype) | float32 | bfloat16 — Δ is computed in fp32, then cast
    vectors_on: str = "device"  # device: vectors live beside the model | cpu: kept in host memory, streamed per tensor
    stats: StatsConfig = field(default_factory=lambda: StatsConfig())  # data-aware strategies' statistics


@dataclass
class HelmConfig:
    """HELM-style metrics beside accuracy for multiple-choice tasks; calibration (ECE, 10 bins) is always on."""

    robustness: bool = True  # a second MC pass on perturbed prompts: acc_robust, robustness_drop (~2x MC scoring)
    perturbations: list[str] = field(default_factory=lambda: ["typos", "case", "whitespace"])
    seed: int = 0  # fixed, not ${seed}: every run of a sweep sees the same perturbed prompts


@dataclass
class TaskCost:
    """What scoring one lm-eval task costs per model, stated in the eval preset for plan_only's estimate."""

    n_items: int = MISSING  # documents scored with eval.limit=null (a group: all its subtasks together)
    prompt_tokens: int = MISSING  # mean tokens one request feeds: few-shot exemplars, the item, the continuation
    requests: float = 1.0  # mean forward passes per item (lm-eval: one per choice unless all are one token long)
    generated_tokens: int = 0  # generation tasks: mean tokens generated per item
    subtasks: int = 1  # a group's subtasks (eval.limit applies to each)
    perturbed: bool = False  # scored a second time when eval.helm.robustness (single-prompt multiple choice)


@dataclass
class EvalConfig:
    tasks: list[str] = MISSING  # built-in tasks and/or any lm-eval task or group name (mmlu, bbh_fewshot, drop, …)
    num_fewshot: Any = None  # None = each task's default | an int for every task | {task or group: shots}
    limit: Any = None  # docs per task (per subtask of a group); None = all; {task: int} per listed task
    batch_size: int = 32
    gen_kwargs: Any = None  # generation tasks: a dict passed to lm-eval, e.g. {max_gen_toks: 64}
    cost: dict[str, TaskCost] = field(default_factory=dict)  # per task: items and prompt lengths (plan_only)
    helm: HelmConfig = field(default_factory=HelmConfig)
    allow_contamination: bool = False  # true: train even when a source holds scored test documents (flagged)
    score_models: list[str] | None = None  # models scored on eval.tasks; None = every model (base, only_*, arms)


@dataclass
class TrackingConfig:
    mode: str = "offline"
    project: str = "dem-bench"


@dataclass
class SelectionConfig:
    metric: str = "pooled_ppl"  # pooled_ppl (token-weighted) | mean_log_ppl (each distribution counts equally)


@dataclass
class SeedsConfig:
    """What each seed controls; all default to the top-level `seed`, so `seed=1` changes everything, `seeds.train=1`
    the fine-tuning randomness (and a tiny base's build) and `seeds.search=1` every arm's selection randomness."""

    data: int = SI("${seed}")  # built-in generators, train/val draws from real sources, built-in eval items
    train: int = SI("${seed}")  # fine-tuning (mixture order, Trainer init/shuffle) and the tiny base model's build
    search: int = SI("${seed}")  # selection: Optuna's samplers, DARE/DELLA drops, RegMix's mixtures, the bootstrap


@dataclass
class ExecutorConfig:
    name: str = "local"  # local (this process) | submitit_local (jobs on this machine) | slurm (submitit jobs)
    max_parallel: int = 1  # runs at once (submitit executors)
    threads_per_run: int | None = None  # torch threads per run; None = the cores / max_parallel
    nproc_per_node: int = 1  # > 1: each run data-parallel over this many processes (torchrun, DDP via Trainer)
    folder: str = "${cache_dir}/submitit"  # submitit's job logs
    timeout_min: int = 240
    cpus_per_task: int = 2
    poll_s: float = 1.0
    partition: str | None = None  # SLURM only from here on
    gpus_per_node: int = 0
    mem_gb: int = 16
    account: str | None = None
    qos: str | None = None
    additional_parameters: Any = None  # a dict of any other sbatch option; Any: an override dict replaces None


@dataclass
class PlanConfig:
    """What the plan's device-hours assume: FLOPs ÷ (the accelerator's peak × mfu)."""

    accelerator: str = "h100"  # h100 | h100_pcie | h200 | a100 (harness/accelerators.py: data-sheet peaks)
    # Model FLOP utilisation: the Llama 3 paper reports 38-43% BF16 MFU training on H100s (Dubey et al. 2024,
    # arXiv 2407.21783, Table 4); PaLM 46.2% on TPU v4 (Chowdhery et al. 2022, Table 3)
    mfu: float = 0.4


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    dem: DemConfig = field(default_factory=DemConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    arms: list[str] = field(default_factory=lambda: ["data_mixing", "dem"])  # compared, in report order
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    plan_only: bool = False  # print the plan (every run, cached or not, estimated cost) and exit: writes nothing
    plan: PlanConfig = field(default_factory=PlanConfig)
    seed: int = 0
    seeds: SeedsConfig = field(default_factory=SeedsConfig)
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


def model_preset(name: str) -> DictConfig:
    """A `model` preset (conf/model/<name>.yaml) typed by the schema, as a comparison composes it."""
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(CONF_DIR / "model" / f"{name}.yaml"))


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
    need(c.model.architecture is None or (isinstance(c.model.architecture, DictConfig)
         and "model_type" in c.model.architecture), "model.architecture",
         "must be null or a mapping of config.json fields with model_type (e.g. {model_type: llama, …})")
    need(c.plan.accelerator in ACCELERATORS, "plan.accelerator", one_of(tuple(ACCELERATORS), c.plan.accelerator))
    need(0 < c.plan.mfu <= 1, "plan.mfu", "must be in (0, 1]: the fraction of the accelerator's peak FLOP/s reached")

    if c.hub_mirror and not Path(c.hub_mirror).expanduser().is_dir():  # before any file under it is looked for
        problems.append(missing_folder("hub_mirror", c.hub_mirror))
    names = list(c.data.distributions)
    need(len(names) > 0 and len(set(names)) == len(names), "data.distributions", "a non-empty list of distinct names")
    for name in names:
        source = OmegaConf.to_object(c.data.sources[name]) if name in c.data.sources else SourceConfig()
        problems += check_source(name, source)
        if c.hub_mirror and source.path and not problems:
            problems += _check_mirrored_source(name, source, Path(c.hub_mirror))
    for key in ("n_train", "n_val", "n_test"):
        need(c.data[key] > 0, f"data.{key}", "must be a positive integer")
    need(c.data.n_report is None or c.data.n_report > 0, "data.n_report",
         "must be a positive integer (or null: as many as data.n_val)")

    for key in ("train_tokens", "seq_len", "batch_size"):
        need(c.budget[key] > 0, f"budget.{key}", "must be a positive integer")
    if c.budget.train_tokens > 0 and c.budget.seq_len > 0 and c.budget.batch_size > 0:
        batch = c.budget.seq_len * c.budget.batch_size * max(c.budget.grad_accum_steps, 1)
        need(c.budget.train_tokens >= batch, "budget.train_tokens",
             f"must be at least one optimizer step (budget.seq_len * batch_size * grad_accum_steps = {batch})")
    need(c.budget.grad_accum_steps >= 1, "budget.grad_accum_steps", "must be >= 1")
    need(c.budget.lr > 0, "budget.lr", "must be > 0")
    need(0 <= c.budget.warmup_ratio < 1, "budget.warmup_ratio", "must be in [0, 1)")

    problems += _check_training(c.training)
    problems += _check_mixing(c)
    e = c.executor
    need(e.name in EXECUTORS, "executor.name", one_of(EXECUTORS, e.name))
    need(e.max_parallel >= 1, "executor.max_parallel", "must be >= 1")
    need(e.nproc_per_node >= 1, "executor.nproc_per_node", "must be >= 1")
    need(e.threads_per_run is None or e.threads_per_run >= 1, "executor.threads_per_run", "must be null or >= 1")
    if e.nproc_per_node > 1:
        need(c.budget.batch_size % e.nproc_per_node == 0, "budget.batch_size",
             f"must divide over executor.nproc_per_node={e.nproc_per_node} processes (the global batch is kept)")
    if e.name == "slurm":
        need(bool(e.partition), "executor.partition", "the SLURM partition to submit to (executor=slurm)")

    need(c.dem.n_trials >= 1, "dem.n_trials", "must be >= 1")
    need(c.dem.sampler in SAMPLERS, "dem.sampler", one_of(SAMPLERS, c.dem.sampler))
    need(len(c.dem.weight_range) == 2 and c.dem.weight_range[0] < c.dem.weight_range[1], "dem.weight_range",
         "must be [low, high] with low < high")

    need(c.dem.grid_points >= 2, "dem.grid_points", "must be >= 2")
    need(0 <= c.dem.prune_fraction < 1, "dem.prune_fraction", "must be in [0, 1)")
    need(c.dem.storage in ("journal", "memory", "sqlite") or "://" in c.dem.storage, "dem.storage",
         "allowed: journal, memory, sqlite, or an RDB URL such as postgresql://host/db")
    need(c.dem.search_workers >= 1, "dem.search_workers", "must be >= 1")
    need(c.dem.search_workers == 1 or c.dem.storage != "memory", "dem.search_workers",
         "workers cannot share dem.storage=memory; use journal, sqlite or an RDB URL")
    need(c.dem.vector_dtype in DTYPES, "dem.vector_dtype", one_of(DTYPES, c.dem.vector_dtype))
    need(c.dem.vectors_on in ("device", "cpu"), "dem.vectors_on", one_of(("device", "cpu"), c.dem.vectors_on))
    need(c.dem.stats.n_tokens > 0, "dem.stats.n_tokens", "must be a positive integer")
    need(len(c.eval.tasks) > 0, "eval.tasks", "a non-empty list of built-in or lm-eval task names")
    need(c.eval.gen_kwargs is None or isinstance(c.eval.gen_kwargs, DictConfig), "eval.gen_kwargs",
         "must be null or a mapping such as {max_gen_toks: 64}")
    need(c.eval.batch_size > 0, "eval.batch_size", "must be a positive integer")
    need(c.tracking.mode in TRACKING_MODES, "tracking.mode", one_of(TRACKING_MODES, c.tracking.mode))
    for task, tc in c.eval.cost.items():
        need(tc.n_items > 0 and tc.prompt_tokens > 0 and tc.requests >= 1 and tc.subtasks >= 1
             and tc.generated_tokens >= 0, f"eval.cost.{task}",
             "n_items, prompt_tokens, requests and subtasks must be positive, generated_tokens >= 0")
    if problems:  # a value out of range is answered before the checks below import torch and lm-eval (seconds)
        raise ConfigError("; ".join(problems))

    problems += _check_arms(c)  # the arms' registry, the merge strategies, lm-eval's task index
    if c.eval.score_models is not None and not problems:
        problems += _check_score_models(c)
    problems += _check_strategy(c)
    if c.eval.tasks and not problems:  # stock task names need lm-eval's index (seconds): only for a sane config
        from harness.evaluation import check_eval  # local: evaluation imports this module

        try:
            check_eval(list(c.eval.tasks), plain(c.eval.num_fewshot), c.hub_mirror,
                       perturbations=list(c.eval.helm.perturbations) if c.eval.helm.robustness else None)
        except ConfigError as err:
            problems.append(str(err))
    if c.eval.tasks and not problems:
        from harness.evaluation import check_limit

        try:
            check_limit(plain(c.eval.limit), list(c.eval.tasks))
        except ConfigError as err:
            problems.append(str(err))
    if problems:
        raise ConfigError("; ".join(problems))
    return c


def model_labels(c: DictConfig) -> list[str]:
    """Every row a comparison reports: the base, one fine-tune per distribution, and each arm's models (an arm
    says which with a `labels` attribute; one without it reports one row under its name)."""
    from harness.arms import make_arm

    arms = [make_arm(name, c) for name in c.arms]
    return ["base", *(f"only_{n}" for n in c.data.distributions),
            *(label for arm in arms for label in getattr(arm, "labels", [arm.name]))]


def _check_score_models(c: DictConfig) -> list[str]:
    """`eval.score_models` names models this comparison produces, each once."""
    known = model_labels(c)
    wanted = list(c.eval.score_models)
    problems = [f"eval.score_models: no arm produces '{m}'.{did_you_mean(m, known)} Models: {', '.join(known)}"
                for m in wanted if m not in known]
    if not wanted:
        problems.append("eval.score_models=[]: name at least one model, or null for every model")
    if len(set(wanted)) != len(wanted):
        problems.append(f"eval.score_models={wanted}: each model at most once")
    return problems


def _check_training(t: DictConfig) -> list[str]:
    """training.method and, for LoRA, settings peft would reject only once a run starts."""
    if t.method not in TRAINING_METHODS:
        return [f"training.method={t.method}: {one_of(TRAINING_METHODS, t.method)}"]
    if t.method != "lora":
        return []
    lora, problems = t.lora, []
    if lora.r < 1:
        problems.append(f"training.lora.r={lora.r}: must be a positive integer (the adapters' rank)")
    if lora.alpha <= 0:
        problems.append(f"training.lora.alpha={lora.alpha}: must be > 0 (the update is scaled by alpha / r)")
    if not 0 <= lora.dropout < 1:
        problems.append(f"training.lora.dropout={lora.dropout}: must be in [0, 1)")
    if not lora.target_modules:
        problems.append("training.lora.target_modules=[]: name at least one module, e.g. [q_proj, v_proj]")
    return problems


MIXING_METHODS = ("grid", "regmix", "uniform", "proportional", "temperature")


def _check_arms(c: DictConfig) -> list[str]:
    """Every name in `arms` is a registered arm (importing the arms: torch, seconds)."""
    from harness.arms import ARMS as registered
    from harness.arms import _load_builtin_arms

    _load_builtin_arms()
    return [f"arms: unknown arm '{arm}'.{did_you_mean(arm, sorted(registered))} "
            f"Available: {', '.join(sorted(registered))}" for arm in c.arms if arm not in registered]


def _check_mixing(c: DictConfig) -> list[str]:
    """Mixing methods and budget mode: everything a baseline needs, before any training."""
    problems = []
    m, names = c.mixing, list(c.data.distributions)
    if len(set(c.arms)) != len(c.arms) or not {"data_mixing", "dem"} <= set(c.arms):
        problems.append(f"arms={list(c.arms)}: distinct arms, including data_mixing and dem (the comparison every "
                        "report and cost ratio is about); add others beside them")
    methods = [m.method, *m.compare]
    for method in methods:
        if method not in MIXING_METHODS:
            problems.append(f"mixing.method: unknown method '{method}'.{did_you_mean(method, MIXING_METHODS)} "
                            f"Available: {', '.join(MIXING_METHODS)}")
    if len(set(methods)) != len(methods):
        problems.append("mixing.compare: each method at most once, and not the main mixing.method again")
    step = m.grid_step
    if not (0 < step <= 1 and abs(1 / step - round(1 / step)) < 1e-9):
        problems.append(f"mixing.grid_step={step}: must divide 1 into a whole number of steps (e.g. 1, 0.5, 0.25, "
                        "0.2, 0.1)")
    for i, mixture in enumerate(m.mixtures or []):
        if set(mixture) - set(names) or not any(v > 0 for v in mixture.values()) or min(mixture.values()) < 0:
            problems.append(f"mixing.mixtures[{i}]={dict(mixture)}: non-negative weights over "
                            f"{', '.join(names)}, at least one positive")
    if m.temperature <= 0:
        problems.append(f"mixing.temperature={m.temperature}: must be > 0")
    if "regmix" in methods:
        if m.proxies < len(names) + 1:
            problems.append(f"mixing.proxies={m.proxies}: RegMix needs at least one more proxy run than there are "
                            f"distributions ({len(names) + 1})")
        if m.proxy_tokens < c.budget.seq_len * c.budget.batch_size * c.budget.grad_accum_steps:
            problems.append(f"mixing.proxy_tokens={m.proxy_tokens}: must be at least one optimizer step")
        if m.proxy_tokens > c.budget.train_tokens:
            problems.append(f"mixing.proxy_tokens={m.proxy_tokens}: a proxy run must not be larger than a full run "
                            f"(budget.train_tokens={c.budget.train_tokens})")
        if c.budget.mode == "matched_total" and m.proxies * m.proxy_tokens >= len(names) * c.budget.train_tokens:
            problems.append(f"mixing.proxies x proxy_tokens = {m.proxies * m.proxy_tokens}: leaves no budget for "
                            "RegMix's full run under budget.mode=matched_total")
        if m.proxy_model is not None and m.proxy_model not in presets("model"):
            problems.append(f"mixing.proxy_model: unknown model preset '{m.proxy_model}'."
                            f"{did_you_mean(m.proxy_model, presets('model'))} Available: {', '.join(presets('model'))}")
        if m.candidates < m.top_k or m.top_k < 1:
            problems.append(f"mixing.top_k={m.top_k}: must be in [1, mixing.candidates={m.candidates}]")
    if m.dirichlet_alpha <= 0:
        problems.append(f"mixing.dirichlet_alpha={m.dirichlet_alpha}: must be > 0")
    if c.budget.mode not in ("per_run", "matched_total"):
        problems.append(f"budget.mode={c.budget.mode}: {one_of(('per_run', 'matched_total'), c.budget.mode)}")
    if c.selection.metric not in ("pooled_ppl", "mean_log_ppl"):
        problems.append(f"selection.metric={c.selection.metric}: "
                        f"{one_of(('pooled_ppl', 'mean_log_ppl'), c.selection.metric)}")
    return problems


def missing_folder(key: str, path: str) -> str:
    """"key=path: no such folder", with the closest folder beside it when one is close (a misspelt root)."""
    p = Path(path).expanduser()
    if p.exists():
        return f"{key}={path}: is a file, not a folder"
    if not p.parent.is_dir():
        return f"{key}={path}: no such folder (nor {p.parent})"
    try:
        hint = did_you_mean(str(p), [str(q) for q in p.parent.iterdir() if q.is_dir()])
    except OSError:
        hint = ""
    return f"{key}={path}: no such folder.{hint}" if hint else f"{key}={path}: no such folder"


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
