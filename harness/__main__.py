"""`dem-bench` / `python -m harness`: the Hydra app that runs the comparison.

Bad input ends with exit code 2 and one line naming the key and what is allowed — checked before Hydra creates any
folder and before any training: a plain run's config, or every job of a `-m` sweep, is composed, validated and
preflighted (device, model, every data file in full, mirror, writable folders, storage, scheduler) first. Hydra's
own flags (--help, --cfg job, -m …) work as usual; `-m … plan_only=true` prints every job's plan and the sweep's
total and creates nothing. A new training source needs no `+`: `data.sources.NEW={format: …, path: …}`.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness.config import CONF_DIR, GROUPS, check_presets, did_you_mean, known_keys
from harness.errors import ConfigError, HarnessError
from harness.validate import validate

log = logging.getLogger("harness")
MULTIRUN = ("-m", "--multirun")
SWEPT_KEYS = "DEM_BENCH_SWEPT_KEYS"
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--version", "--shell-completion", "-sc")


def _fail(message: str) -> None:
    print(f"dem-bench: error: {message}", file=sys.stderr)
    sys.exit(2)


def compose_config(overrides: list[str]) -> DictConfig:
    """The config Hydra will compose for these overrides, or one ConfigError line (with "did you mean")."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_presets(overrides)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        message = " ".join(str(err).split())
        raise ConfigError(_suggest_key(message, overrides) or _from_cause(err, overrides) or message) from None
    except Exception as err:
        raise ConfigError(f"cannot compose the config from {' '.join(overrides)}: {type(err).__name__}: "
                          f"{' '.join(str(err).split())[:200]}") from None


def _suggest_key(message: str, overrides: list[str]) -> str:
    """"unknown key 'budget.train_tokns'. Did you mean 'budget.train_tokens'?" when Hydra rejected a key that is
    close to a known one, else "" (Hydra's own message, which suggests `+key=…`, then stands)."""
    from hydra import compose, initialize_config_dir

    bad = re.search(r"Could not override '([^']+)'|Key '([^']+)' (?:is )?not in", message)
    if not bad:
        return ""
    groups = [o for o in overrides if o.partition("=")[0].lstrip("+~") in GROUPS]  # the presets chosen
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            keys = known_keys(compose("config", overrides=groups))
    except Exception:
        return ""
    key = bad.group(1) or bad.group(2)
    hint = did_you_mean(key, keys)
    return f"unknown key '{key}'.{hint}" if hint else ""


def _from_cause(err: Exception, overrides: list[str]) -> str:
    """What Hydra's bare "Error merging override …" was about, from OmegaConf's error beneath it: the type a key
    wants ("eval.limit=1.5: must be an integer or null, not a decimal number") or an unknown key inside a mapping value
    ("unknown key 'data.sources.mine.pth'. Did you mean 'data.sources.mine.path'?"); "" when neither applies."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    cause = err.__cause__
    full_key = getattr(cause, "full_key", None)
    if not full_key:
        return ""
    key = re.sub(r"\[\d+\]$", "", full_key)
    if isinstance(cause, ConfigKeyError):
        parent = key.rpartition(".")[0]
        fields = [f"{parent}.{f}" for f in schema_fields(parent)]
        hint = did_you_mean(key, fields)
        return f"unknown key '{key}'.{hint or ' Allowed: ' + ', '.join(fields)}" if fields else ""
    if not isinstance(cause, ValidationError) or not (wanted := schema_type(key)):
        return ""
    given = next((o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+~") == key), None)
    value = getattr(cause, "value", None)
    got = {bool: "true/false", int: "an integer", float: "a decimal number", str: "a string", list: "a list",
           dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)
    item = f" (item {full_key[len(key):]} is {got})" if full_key != key else f", not {got}"
    return f"{key}={given if given is not None else value}: must be {wanted}{item}"


def _schema_at(key: str) -> Any:
    """The schema's annotation at a dotted key (harness/config.py), through dataclasses and typed mappings; None
    when the key is not a typed field."""
    import dataclasses
    import typing

    from harness.config import Config

    hint: Any = Config
    for part in key.split(".") if key else []:
        if dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(part)
        elif typing.get_origin(hint) is dict:
            hint = typing.get_args(hint)[1]
        else:
            return None
    return hint


def schema_fields(key: str) -> list[str]:
    """The field names of the dataclass at a dotted key ([] when it is not one)."""
    import dataclasses

    hint = _schema_at(key)
    return [f.name for f in dataclasses.fields(hint)] if dataclasses.is_dataclass(hint) else []


def schema_type(key: str) -> str:
    """What the schema wants at a dotted key, in words: "an integer or null", "a list of numbers", … ("" when the
    key is not a plain typed field)."""
    import types
    import typing

    def words(t: Any) -> str:
        origin, args = typing.get_origin(t), typing.get_args(t)
        if origin in (typing.Union, types.UnionType):
            inner = [words(a) for a in args if a is not type(None)]
            return " or ".join(inner) + (" or null" if type(None) in args else "") if all(inner) else ""
        if origin is list:
            item = words(args[0]) if args else ""
            return f"a list of {item.removeprefix('an ').removeprefix('a ')}s" if item else ""
        return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(t, "")

    return words(_schema_at(key))


SOURCES = "data.sources."


def add_source_names(overrides: list[str]) -> list[str]:
    """`data.sources.NEW={…}` and `data.sources.NEW.path=…` (with or without Hydra's `+`) for a name the chosen data
    preset lacks, rewritten as `++data.sources={NEW: …}`: OmegaConf cannot add a key to the typed sources mapping,
    not even with `+`, but force-merges a mapping into it (each entry typed and checked as a SourceConfig). Other
    overrides are returned as they are."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    def parse(text: str) -> Any:
        try:
            return parser.parse_override(text)
        except HydraException:
            return None  # not an override (`--cfg job`'s `job`), or a syntax error composing reports

    def source_key(o: Any) -> bool:
        return (o is not None and o.key_or_group.startswith(SOURCES) and not o.is_delete()
                and (not o.is_sweep_override() or o.is_discrete_sweep()))

    parsed = [parse(text) for text in overrides]

    if not any(source_key(o) for o in parsed):
        return overrides
    try:
        known = set(_preset_config(overrides).data.sources)
    except Exception:
        return overrides  # composing reports what is wrong with the presets
    out = []
    for text, o in zip(overrides, parsed, strict=True):
        name, *rest = o.key_or_group[len(SOURCES):].split(".") if source_key(o) else ("",)
        if not source_key(o) or name in known:
            out.append(text)
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        wrapped = []
        for value in values:
            for part in reversed(rest):
                value = f"{{{part}: {value}}}"
            wrapped.append(f"{{{name}: {value}}}")
        out.append(f"++data.sources={','.join(wrapped)}")
    return out


def _preset_config(overrides: list[str]) -> DictConfig:
    """The config of the presets chosen (`group=name` overrides only), for the keys they define."""
    from hydra import compose, initialize_config_dir

    groups = [o for o in overrides if o.partition("=")[0].lstrip("+~") in GROUPS]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=groups)


def precheck(overrides: list[str]) -> DictConfig:
    """Compose, validate and preflight one job's config, so bad input fails in a second, not after training."""
    from harness.data.filecheck import look_in
    from harness.preflight import preflight

    composed = compose_config(overrides)
    try:
        look_in(OmegaConf.select(composed, "cache_dir", throw_on_resolution_failure=False) or ".")  # earlier passes
    except Exception:  # a cache_dir that does not resolve: validate says so
        pass
    cfg = validate(composed)
    preflight(cfg)
    return cfg


def print_plan(cfg: DictConfig) -> None:
    """`plan_only=true`: the plan — every run each arm needs, cached or not, with its estimated cost — printed
    before Hydra creates any folder; nothing is written to the cache or the output folder."""
    from harness.arm_registry import make_arm
    from harness.data.mirror import hub_mirror
    from harness.pipeline import make_context, plan_text
    from harness.plan import plan_splits, slice_tokens
    from harness.runs.cache import RunCache

    with hub_mirror(cfg.hub_mirror):
        splits, unread = plan_splits(cfg)  # data that cannot be read is planned from the config's row counts
        if unread:
            print(unread)
        ctx = make_context(cfg, RunCache(cfg.cache_dir), Path(cfg.output_dir), splits, build=False)
        ctx.slice_tokens = slice_tokens(splits, cfg.budget.seq_len)
        print(plan_text(ctx, [make_arm(name, cfg) for name in cfg.arms], done={}))


def sweep_plan_only(configs: list[DictConfig]) -> bool:
    """Whether a sweep only prints plans: plan_only is one setting for the whole sweep, not a swept value."""
    flags = {bool(c.plan_only) for c in configs}
    if len(flags) > 1:
        raise ConfigError("plan_only: set it for the whole sweep (plan_only=true), not per job")
    return flags == {True}


def print_sweep_plan(configs: list[DictConfig], swept: list[str]) -> None:
    """`-m … plan_only=true`: each job's plan, then the sweep's total — runs several jobs share (the same training
    run in the same cache) are counted once. Nothing is created: no sweep folder, nothing in the cache."""
    from harness.arm_registry import make_arm
    from harness.data.mirror import hub_mirror
    from harness.pipeline import all_planned, make_context, plan_text
    from harness.plan import (
        _duration,
        measured_flops_per_second,
        model_costs,
        plan_splits,
        slice_tokens,
        sweep_hours_text,
    )
    from harness.runs.cache import RunCache

    todo: dict[tuple[str, str], tuple[int, float]] = {}  # (cache, run key) -> (tokens, FLOPs) of runs to train
    costs = []  # per job: its config, cache and every reported model's compute (device-hours)
    rate, how, device = 0.0, "", ""
    for k, (cfg, values) in enumerate(zip(configs, swept, strict=True), 1):
        with hub_mirror(cfg.hub_mirror):
            cache = RunCache(cfg.cache_dir)
            splits, unread = plan_splits(cfg)
            ctx = make_context(cfg, cache, Path(cfg.output_dir), splits, build=False)
            ctx.slice_tokens = slice_tokens(splits, cfg.budget.seq_len)
            arms = [make_arm(name, cfg) for name in cfg.arms]
            print(f"sweep job {k} of {len(configs)} ({values or 'no swept values'}):")
            if unread:
                print(unread)
            print(plan_text(ctx, arms, done={}))
            costs.append((cfg, str(cache.root), model_costs(ctx, arms, {})[0]))
            for i, p in enumerate(all_planned(ctx, arms, {})):
                if p.spec is not None and cache.has("train", p.spec.cache_spec()):
                    continue
                tokens = p.spec.train_tokens if p.spec else p.train_tokens  # no spec: a run chosen later (RegMix)
                flops = p.flops if p.flops is not None else ctx.train_flops(tokens)
                todo[(str(cache.root), p.spec.key if p.spec else f"job{k}-{i}")] = (tokens, flops)
            if not rate:
                dtype = str(ctx.runtime.dtype).removeprefix("torch.")
                rate, how = measured_flops_per_second(cache.root, ctx.runtime.device.type, dtype)
                device = ctx.runtime.name
    tokens = sum(t for t, _ in todo.values())
    flops = sum(f for _, f in todo.values())
    print(f"sweep: {len(configs)} job(s), {len(todo)} distinct training run(s) to train (a run several jobs share "
          f"counted once): {tokens:,} tokens, {flops:.3g} FLOPs, ≈ {_duration(flops / rate)} at {rate:.3g} FLOP/s "
          f"on {device} ({how}); nothing was created (plan_only=true)")
    print(sweep_hours_text(costs))


def sweep_jobs(overrides: list[str]) -> list[tuple[list[str], str]]:
    """Every job of a `-m` sweep, as Hydra's basic sweeper expands it (the cartesian product of `k=a,b` lists,
    `range(…)`, `choice(…)`, `glob(…)`): (its plain overrides, its swept values for messages)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(" ".join(str(err).split())) from None
    axes, swept = [], []
    for o in parsed:
        if not o.is_sweep_override():
            axes.append([o.input_line])
        elif o.is_discrete_sweep():
            axes.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
            swept.append(len(axes) - 1)
        else:
            raise ConfigError(f"{o.input_line}: interval sweeps need a sweeper plugin; list the values instead")
    return [(list(job), " ".join(job[i] for i in swept)) for job in itertools.product(*axes)]


def swept_keys(overrides: list[str]) -> set[str]:
    """The keys a `-m` sweep varies (`seed=0,1,2` → {"seed"})."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    try:
        cfg = validate(cfg)
    except ConfigError as err:
        _fail(str(err))
    from harness.pipeline import run_comparison  # heavy imports (torch, transformers) only past validation

    hydra_cfg = HydraConfig.get()
    sweep = None
    if hydra_cfg.mode == RunMode.MULTIRUN:  # one W&B group per sweep; the job type names its swept values
        swept = set(os.environ.get(SWEPT_KEYS, "").split(","))
        values = [o for o in hydra_cfg.overrides.task if o.partition("=")[0].lstrip("+~") in swept]
        sweep = {"group": Path(hydra_cfg.sweep.dir).name, "job_type": ",".join(values) or f"job{hydra_cfg.job.num}"}
    try:
        out = run_comparison(cfg, Path(hydra_cfg.runtime.output_dir), sweep)
    except HarnessError as err:
        _fail(str(err))
    log.info("report: %s", out / "report.md")
    print(f"dem-bench: done; results in {out}")


def main() -> None:
    args = sys.argv[1:]
    overrides = [a for a in args if not a.startswith("-") and not a.startswith("hydra")]  # hydra.*: launcher etc.
    info = any(a.split("=")[0] in INFO_FLAGS for a in args)
    try:
        renamed = dict(zip(overrides, add_source_names(overrides), strict=True))
        sys.argv[1:] = args = [renamed.get(a, a) for a in args]  # what the Hydra app composes from
        overrides = [renamed[o] for o in overrides]
        if info:
            check_presets(overrides)  # --help, --cfg …: nothing runs
        elif any(a in MULTIRUN for a in args):
            if "hydra/launcher=submitit_slurm" in args:
                from harness.preflight import scheduler_present

                scheduler_present("slurm", "hydra/launcher=submitit_slurm")
            jobs = sweep_jobs(overrides)
            os.environ[SWEPT_KEYS] = ",".join(sorted(swept_keys(overrides)))  # read by each job (W&B job type)
            configs = []
            for k, (job, swept) in enumerate(jobs):  # every job, before the first starts or any folder exists
                try:
                    configs.append(precheck(job))
                except ConfigError as err:
                    raise ConfigError(f"sweep job {k + 1} of {len(jobs)} ({swept}): {err}") from None
            if sweep_plan_only(configs):
                print_sweep_plan(configs, [swept for _, swept in jobs])
                return
        else:
            cfg = precheck(overrides)
            if cfg.plan_only:
                print_plan(cfg)
                return
    except HarnessError as err:
        _fail(str(err))
    if not info:
        from harness.data.filecheck import save_passed

        save_passed()  # every check passed and the run goes ahead: a rerun only hashes the data files
    app()


if __name__ == "__main__":
    main()
