"""Config schema: the types and defaults of every config section, and the small helpers every stage's checks share.

The YAML tree under conf/ holds the values (one file per preset); this module holds their types. Checking values
(ranges, files, names a stage knows) is harness/validate.py's job, so this module imports no stage.
Fields marked MISSING must come from a preset; the others have a default that rarely needs changing.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, SI, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.errors import ConfigError

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


@dataclass
class SourceConfig:
    """One distribution's training data (`data.sources.<name>`). Defaults are what a hub copy usually needs."""

    format: str = "builtin"  # builtin | mathqa | sni | flan_cot | text (see FORMATS)
    path: str | None = None  # hub id, local file (.jsonl .json .parquet .csv .tsv) or folder; builtin: none
    name: str | None = None  # hub config name; builtin: the generator to use (default: the distribution's name)
    configs: list[str] | None = None  # several hub configs read as one source, rows pooled (replaces `name`)
    split: str = "train"  # hub split rows are drawn from (a local file's rows are always its one split)
    val_split: str | None = None  # hub split validation rows come from; None = carve them out of `split`
    revision: str | None = None  # hub commit or tag, to pin the data a result was measured on
    data_files: list[str] | None = None  # hub repos: only these files of the repo (bypasses a hub mirror)
    streaming: bool = False  # hub ids: read rows as a stream instead of downloading every file first
    shuffle_buffer: int = 10_000  # streaming: rows in the shuffle buffer (bigger = closer to a full shuffle)
    n_train: int | None = None  # rows to train on; None = data.n_train
    n_val: int | None = None  # validation rows; None = data.n_val
    n_report: int | None = None  # report-slice rows; None = data.n_report
    fields: dict[str, str] = field(default_factory=dict)  # format field -> this dataset's column, if renamed
    columns: list[str] | None = None  # .csv/.tsv without a header row: its column names, in order
    prompt_field: str = "prompt"  # text: the column holding the prompt
    response_field: str = "response"  # text: the column holding the response (the loss is on it)
    response_prefix: str = " "  # text: put between prompt and response (part of the response, so of the loss)
    n_positive_examples: int = 2  # sni: task demonstrations in the prompt (Tk-Instruct's default, def + pos 2)
    tokens_per_row: int | None = None  # plan_only: mean tokens of a formatted row, assumed when the rows cannot be read


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
    # a distribution without an entry is `builtin` (harness/data/sources.py documents formats and templates)
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

    accelerator: str = "h100"  # h100 | h100_pcie | h200 | a100 (harness/runs/accelerators.py: data-sheet peaks)
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


def one_line(err: OmegaConfBaseException) -> str:
    """OmegaConf errors span several lines (full_key, object_type…): name the key, keep the first line."""
    first = str(err).strip().splitlines()[0]
    key = getattr(err, "full_key", None)
    return f"{key}: {first}" if key and key not in first else first


def plain(value: Any) -> Any:
    """An OmegaConf node as plain Python (dicts, lists, scalars); plain values pass through."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def strategy_params(spec: DictConfig) -> dict[str, Any]:
    """A merge's `params` as a plain dict (None in YAML means: every parameter at its default)."""
    return OmegaConf.to_container(spec.params) if spec.params is not None else {}


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
