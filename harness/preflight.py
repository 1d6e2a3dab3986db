"""Checks of the environment a valid config will meet — writable folders, the search's storage and its folder, the
scheduler's commands, the device and its index, the model (a causal LM whose tokenizer loads), the generation
parameters, and every row of every data file a run will read — run before Hydra creates any folder and before any
training, so a run that cannot succeed stops in seconds with one line (the config's own values are checked by
harness.validate.validate)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.config import did_you_mean, plain
from harness.errors import ConfigError


def writable_folder(key: str, path: str | os.PathLike) -> None:
    """`path` is, or can be created as, a folder this process can write: not a file, and under a writable
    folder. Nothing is created here."""
    p = Path(path).expanduser().resolve()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}={path}: is a file, not a folder")
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path}: {probe} is a file, so the folder cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {probe} is not writable")


def storage_reachable(url: str) -> None:
    """An RDB storage URL parses, its driver is installed, and (for servers) it accepts a connection; an sqlite
    file's folder exists. Opening it here, not after hours of training, is the point."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                sqlite_file(url, Path(parsed.database))
            return
        engine = create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except ImportError as err:
        raise ConfigError(f"dem.storage={url}: its database driver is not installed ({err})") from None
    except (ArgumentError, NoSuchModuleError) as err:
        detail = " ".join(str(err).split())[:120]
        raise ConfigError(f"dem.storage={url}: not a usable database URL ({detail})") from None
    except SQLAlchemyError as err:
        raise ConfigError(f"dem.storage={url}: cannot connect ({' '.join(str(err).split())[:120]})") from None


def sqlite_file(url: str, database: Path) -> None:
    """SQLite creates the database file but not its folder: the folder must exist, be writable, and the path
    must not be a folder itself."""
    path = database.expanduser()
    if path.is_dir():
        raise ConfigError(f"dem.storage={url}: {path} is a folder, not a database file")
    if not path.parent.is_dir():
        raise ConfigError(f"dem.storage={url}: folder {path.parent} does not exist (SQLite creates the database "
                          "file, not its folder); create it or use dem.storage=journal")
    writable_folder("dem.storage", path.parent)


def preflight(cfg: DictConfig) -> None:
    """Raise ConfigError (one line) for folders, storage, scheduler, device, dtype, model, generation parameters or
    data files this machine cannot use — everything a valid config can still fail on, before anything exists."""
    writable_folder("output_dir", cfg.output_dir)
    writable_folder("cache_dir", cfg.cache_dir)
    if "://" in cfg.dem.storage:
        storage_reachable(cfg.dem.storage)
    scheduler_present(cfg.executor.name)
    check_gen_kwargs(plain(cfg.eval.gen_kwargs))

    from harness.models.loading import (
        ModelSourceError,
        check_causal_lm,
        locate_hf,
        planned_config,
        resolve_runtime,
        smollm2_gguf,
    )
    from harness.runs.base import load_options  # heavy imports (torch, transformers) only after the schema passed

    folder = None
    try:
        resolve_runtime(cfg.model.device, cfg.model.dtype)
        if cfg.model.source == "hf" and cfg.plan_only and cfg.model.architecture is not None:
            planned_config(cfg.model.architecture)  # a plan costs the preset's architecture: no hub needed
        elif cfg.model.source == "hf":
            options = load_options(cfg.model)
            folder = locate_hf(cfg.model.name_or_path, cfg.model.revision, options)
            check_causal_lm(folder, cfg.model.name_or_path, options)
        elif cfg.model.source == "smollm2":
            smollm2_gguf()
    except ModelSourceError as err:
        raise ConfigError(str(err)) from None
    check_lora(cfg, folder)
    check_data_files(cfg)
    if not cfg.plan_only:  # a plan reads no evaluation data
        check_eval_datasets_reachable(cfg)
    check_generation_lengths(cfg, folder)


# ------------------------------------------------------------------------------------------------ LoRA


def check_lora(cfg: DictConfig, hf_folder: Path | None = None) -> None:
    """training.method=lora: every name in training.lora.target_modules adapts linear layers of the model, and of
    RegMix's proxy model, which trains adapters too (harness.models.lora.target_problem); read from the models' configs,
    no weights. peft would skip a name that matches nothing as long as another one matches."""
    if cfg.training.method != "lora":
        return
    from harness.config import model_preset
    from harness.models import lora
    from harness.models.loading import ModelSourceError
    from harness.runs.base import base_config

    models = [(f"model={cfg.model.preset}", cfg.model, hf_folder)]
    proxy = cfg.mixing.proxy_model
    if proxy and "regmix" in (cfg.mixing.method, *cfg.mixing.compare):
        models.append((f"mixing.proxy_model={proxy}", model_preset(proxy), None))
    for where, model, folder in models:
        try:
            config = base_config(model, folder, plan=cfg.plan_only)
        except ModelSourceError as err:
            raise ConfigError(f"{where}: {err}") from None
        problem = lora.target_problem(config, list(cfg.training.lora.target_modules), where)
        if problem:
            raise ConfigError(f"training.lora.target_modules: {problem}")


# ------------------------------------------------------------------------------------------------ scheduler

SLURM_COMMANDS = ("sbatch", "srun", "sacct", "scancel")  # submitit submits, probes, polls and cancels with these


def scheduler_present(executor: str, what: str = "executor=slurm") -> None:
    """executor=slurm needs SLURM's commands on PATH (submitit fails on a missing `srun` only once the output
    folder exists)."""
    if executor != "slurm":
        return
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise ConfigError(f"{what}: SLURM's {', '.join(missing)} not found on PATH (not a SLURM machine?); run it on "
                          "a SLURM login node, or use executor=submitit_local (jobs on this machine) or executor=local")


# ------------------------------------------------------------------------------------------------ generation

LM_EVAL_GEN_KEYS = ("until", "max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens", "do_sample",
                    "temperature")  # read by lm-eval itself (lm_eval.models.utils.normalize_gen_kwargs)
POSITIVE_INT = ("max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens", "num_beams")
NON_NEGATIVE_INT = ("top_k", "min_new_tokens", "no_repeat_ngram_size")
BOUNDS = {"temperature": (0.0, None, "a number >= 0 (0 = greedy)"), "top_p": (0.0, 1.0, "a number in (0, 1]"),
          "typical_p": (0.0, 1.0, "a number in (0, 1]"), "min_p": (0.0, 1.0, "a number in [0, 1]"),
          "repetition_penalty": (0.0, None, "a number > 0")}


def generation_keys() -> list[str]:
    """Every key eval.gen_kwargs may set: lm-eval's own, and the fields of transformers' GenerationConfig (what
    `model.generate` takes)."""
    from transformers import GenerationConfig

    fields = [k for k in GenerationConfig().to_dict() if not k.startswith("_") and k != "transformers_version"]
    return [*LM_EVAL_GEN_KEYS, *(k for k in fields if k not in LM_EVAL_GEN_KEYS)]


def check_gen_kwargs(gen_kwargs: Any) -> None:
    """`eval.gen_kwargs` keys are generation parameters and their values are in range (a misspelt key or a negative
    max_gen_toks otherwise fails inside generation, after all the training)."""
    if not gen_kwargs:
        return
    known = generation_keys()
    for key, value in gen_kwargs.items():
        where = f"eval.gen_kwargs.{key}={value}"
        if key not in known:
            raise ConfigError(f"eval.gen_kwargs: unknown generation parameter '{key}'.{did_you_mean(key, known)} "
                              f"Allowed: lm-eval's {', '.join(LM_EVAL_GEN_KEYS)} or any transformers "
                              "GenerationConfig field (top_p, top_k, num_beams, repetition_penalty, …)")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if key == "until" and not (isinstance(value, str) or
                                   (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"{where}: must be a string or a list of strings (stop sequences)")
        if key == "do_sample" and not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false")
        if key in POSITIVE_INT + NON_NEGATIVE_INT and not (number and value == int(value)
                                                           and value >= (key in POSITIVE_INT)):
            raise ConfigError(f"{where}: must be an integer >= {int(key in POSITIVE_INT)}")
        if key in BOUNDS:
            low, high, allowed = BOUNDS[key]
            strict = key != "temperature" and key != "min_p"
            if not number or value < low or (strict and value == low) or (high is not None and value > high):
                raise ConfigError(f"{where}: must be {allowed}")
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    rest = {k: v for k, v in gen_kwargs.items() if k not in LM_EVAL_GEN_KEYS or k in ("max_new_tokens", "do_sample")}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # validate() logs what it then raises: one line, not two
    try:
        GenerationConfig(**rest).validate(strict=True)
    except (ValueError, TypeError) as err:
        text = " ".join(str(err).split()).removeprefix("GenerationConfig is invalid: - ")
        raise ConfigError(f"eval.gen_kwargs: {text[:240]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)


# ------------------------------------------------------------------------------------------------ data files


def check_data_files(cfg: DictConfig) -> None:
    """Every row of every training file (local, or a hub id's files in the mirror) and every line of every mirrored
    file an evaluation task reads, before anything is created; passes are remembered by content hash."""
    from harness.config import SourceConfig
    from harness.data import mirror as hub
    from harness.data.filecheck import DataFileError, check_structure, layout_of
    from harness.data.sources import SourceError, check_source_file, get_format, is_local, local_files

    root = Path(cfg.hub_mirror).resolve() if cfg.hub_mirror else None
    for name in cfg.data.distributions:
        node = cfg.data.sources[name] if name in cfg.data.sources else None
        source = OmegaConf.to_object(node) if node is not None else SourceConfig()
        fmt = get_format(source.format)
        if fmt.format_row is None or not source.path:
            continue
        try:
            if is_local(source.path):
                files = local_files(source.path)
            elif root is not None and not source.data_files:
                splits = [source.split, *([source.val_split] if source.val_split else [])]
                files = [f for config in source.configs or [source.name] for s in splits
                         if (f := hub.split_file(root, source.path, config, s)) is not None]
            else:
                continue  # a hub id is not contacted before the run
            for file in files:
                check_source_file(file, fmt, source, cfg.cache_dir)
        except (DataFileError, SourceError) as err:
            raise ConfigError(f"data.sources.{name}: {err}") from None
    if root is None:
        return
    from harness.evaluation.checks import task_datasets
    from harness.evaluation.tasks import resolve_tasks

    for d in task_datasets(resolve_tasks(list(cfg.eval.tasks)).stock):
        files = hub.mirrored_splits(root, d.path, d.name)
        for split in d.splits or tuple(files):
            if (file := files.get(split)) is None:
                continue
            try:
                check_structure(file, layout_of(file), cfg.cache_dir)
            except DataFileError as err:
                more = f" and {len(d.tasks) - 1} more" if len(d.tasks) > 1 else ""
                raise ConfigError(f"hub_mirror: {err} (read by task {d.tasks[0]}{more})") from None


# ------------------------------------------------------------------------------------------------ evaluation


def check_eval_datasets_reachable(cfg: DictConfig) -> None:
    """Without `hub_mirror`, every hub dataset a stock task reads must come from the hub or the local HF cache;
    lm-eval would otherwise fail after training with a 150-line ConnectionError."""
    from harness.evaluation.checks import task_datasets
    from harness.evaluation.tasks import resolve_tasks

    if cfg.hub_mirror:
        return
    answered: dict[str, bool] = {}  # one probe per dataset path, however many configs and tasks read it
    for task in resolve_tasks(list(cfg.eval.tasks)).stock:
        for path in dict.fromkeys(d.path for d in task_datasets([task])):
            if path not in answered:
                answered[path] = _in_hf_cache(path) or _hub_answers(path)
            if not answered[path]:
                raise ConfigError(f"eval.tasks: {task} reads hub dataset '{path}', which is neither in the local HF "
                                  "cache nor reachable (no network?); point hub_mirror at a local mirror (README "
                                  "\"Hub mirror\") or run where the hub can be reached")


def _in_hf_cache(path: str) -> bool:
    """Whether `datasets` (or the hub client) already holds files of this dataset locally."""
    from datasets import config as ds_config
    from huggingface_hub import constants

    return ((Path(ds_config.HF_DATASETS_CACHE) / path.replace("/", "___")).is_dir()
            or (Path(constants.HF_HUB_CACHE) / f"datasets--{path.replace('/', '--')}").is_dir())


def _hub_answers(path: str) -> bool:
    """Whether the hub can be asked about this dataset (an answer of any kind: a missing or gated dataset is
    lm-eval's to report); False offline, or when the network fails."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        HfApi().dataset_info(path, timeout=10)
    except HfHubHTTPError as err:
        return getattr(err, "response", None) is not None
    except Exception:  # DNS, connection refused, timeout: whatever the HTTP client calls it
        return False
    return True


def check_generation_lengths(cfg: DictConfig, hf_folder: Path | None = None) -> None:
    """Each generation task's `max_gen_toks` (its YAML's, or eval.gen_kwargs') must be below the model's context
    length: lm-eval asserts it only when it reaches the task, after training."""
    from harness.evaluation.tasks import generation_limits, resolve_tasks

    stock = resolve_tasks(list(cfg.eval.tasks)).stock
    limits = generation_limits(stock, plain(cfg.eval.gen_kwargs)) if stock else {}
    if not limits:
        return
    context = model_context_length(cfg, hf_folder)
    too_long = {task: n for task, n in limits.items() if n >= context}
    if too_long:
        task, n = next(iter(too_long.items()))
        more = f" (and {len(too_long) - 1} more tasks)" if len(too_long) > 1 else ""
        raise ConfigError(f"eval.tasks: generation task {task}{more} may generate {n} tokens (max_gen_toks), not "
                          f"below the model's context length of {context}; set eval.gen_kwargs={{max_gen_toks: N}} "
                          f"with N < {context}")


def model_context_length(cfg: DictConfig, hf_folder: Path | None = None) -> int:
    """The context length lm-eval will assume for the model (its own rule, lm_eval.models.utils.resolve_max_length,
    on the model's config; 2048 where the config names none)."""
    from lm_eval.models.utils import resolve_max_length

    from harness.runs.base import base_config

    return int(resolve_max_length(base_config(cfg.model, hf_folder, plan=cfg.plan_only), None, default=2048))
