"""Checks of the environment a valid config will meet — writable folders, the search's storage and its folder, the
scheduler's commands, the device and its index, the model (a causal LM whose tokenizer loads), and every row of
every data file a run will read — run before Hydra creates any folder and before any
training, so a run that cannot succeed stops in seconds with one line (the config's own values are checked by
harness.config.validate)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from harness.config import ConfigError


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
    """Raise ConfigError (one line) for folders, storage, scheduler, device, dtype, model or data files this machine
    cannot use — everything a valid config can still fail on, before anything exists."""
    writable_folder("output_dir", cfg.output_dir)
    writable_folder("cache_dir", cfg.cache_dir)
    if "://" in cfg.dem.storage:
        storage_reachable(cfg.dem.storage)
    scheduler_present(cfg.executor.name)

    from harness.base import load_options  # heavy imports (torch, transformers) only after the schema passed
    from harness.models import ModelSourceError, check_causal_lm, locate_hf, resolve_runtime, smollm2_gguf

    try:
        resolve_runtime(cfg.model.device, cfg.model.dtype)
        if cfg.model.source == "hf":
            options = load_options(cfg.model)
            folder = locate_hf(cfg.model.name_or_path, cfg.model.revision, options)
            check_causal_lm(folder, cfg.model.name_or_path, options)
        elif cfg.model.source == "smollm2":
            smollm2_gguf()
    except ModelSourceError as err:
        raise ConfigError(str(err)) from None
    check_data_files(cfg)


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


# ------------------------------------------------------------------------------------------------ data files


def check_data_files(cfg: DictConfig) -> None:
    """Every row of every training file (local, or a hub id's files in the mirror) and every line of every mirrored
    file an evaluation task reads, before anything is created; passes are remembered by content hash."""
    from harness import mirror as hub
    from harness.filecheck import DataFileError, check_source_file, check_structure, layout_of
    from harness.sources import SourceConfig, SourceError, get_format, is_local, local_files

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
    from harness.evaluation import resolve_tasks, task_datasets

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
