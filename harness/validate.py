"""Validation of a composed config: the schema's types and every value's range (harness/config.py), then the checks
that need a stage's own knowledge — training sources (data), the hub mirror, the registered arms and merge
strategies, lm-eval's task index (evaluation) — all problems found and reported together, before any expensive work.

The schema does not import the stages; this module is where they meet, and no stage imports it (only the CLI, the
pipeline and preflight do: tests/test_layout.py), so importing a stage never pulls in validation and no cycle forms.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harness.arm_registry import arm_names, make_arm, unknown_arm
from harness.config import (
    DEVICES,
    DTYPES,
    EXECUTORS,
    MODEL_SOURCES,
    SAMPLERS,
    TINY_KEYS,
    TRACKING_MODES,
    TRAINING_METHODS,
    Config,
    SourceConfig,
    did_you_mean,
    missing_folder,
    one_line,
    one_of,
    plain,
    presets,
    strategy_params,
)
from harness.data import mirror as hub
from harness.data.sources import check_source
from harness.errors import ConfigError
from harness.evaluation.checks import check_eval
from harness.evaluation.tasks import check_limit
from harness.runs.accelerators import ACCELERATORS


def validate(cfg: DictConfig) -> DictConfig:
    """Type-check `cfg` against the schema and check every value's range; return the typed config.

    Raises ConfigError naming each offending key and what is allowed, all problems in one message.
    """
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        resolved = OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
        c = OmegaConf.merge(OmegaConf.structured(Config), resolved)
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from None
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
        try:
            check_eval(list(c.eval.tasks), plain(c.eval.num_fewshot), c.hub_mirror,
                       perturbations=list(c.eval.helm.perturbations) if c.eval.helm.robustness else None)
        except ConfigError as err:
            problems.append(str(err))
    if c.eval.tasks and not problems:
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
    """Every name in `arms` is a shipped or registered arm (by name: the arms themselves are not imported)."""
    return [unknown_arm(arm) for arm in c.arms if arm not in arm_names()]


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





def _check_mirrored_source(name: str, source: SourceConfig, mirror: Path) -> list[str]:
    """A hub-id training source must be in the mirror, every split it reads (named before any training)."""
    if not hub.is_hub_id(source.path) or source.data_files:
        return []
    splits = [source.split] + ([source.val_split] if source.val_split else [])
    try:
        for config in source.configs or [source.name]:
            hub.check(mirror, source.path, config, splits, why=f"training source data.sources.{name}")
    except ConfigError as err:
        return [str(err)]
    return []








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
