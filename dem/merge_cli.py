"""`dem-bench-merge`: merge saved checkpoints or LoRA adapters with a registered strategy, mergekit-style.

    dem-bench-merge --base BASE --model math=DIR --model sni=DIR --method ties \\
        --weight math=0.6 --param density=0.5 --out MERGED [--export-mergekit merge.yaml]
    dem-bench-merge --base BASE --model math=ADAPTER --model sni=ADAPTER --weight math=0.6 \\
        --out MERGED --out-adapter MERGED_ADAPTER

A --model folder is a full checkpoint (config.json + *.safetensors) or a peft LoRA adapter trained on BASE
(adapter_config.json + adapter_model.safetensors). --out writes a dense checkpoint that loads with plain
`transformers` `from_pretrained` (an adapter enters it as its dense update Δ = (alpha/r)·B·A). --out-adapter writes
the merge as ONE peft adapter, `PeftModel.from_pretrained(base, DIR)`: every input an adapter on the same modules,
and a strategy that is θ₀ + Σ cᵢΔᵢ (dem, task_arithmetic, linear with normalize), whose merge of adapters of
ranks rᵢ is one adapter of rank Σrᵢ. Give --out, --out-adapter or both. Every input is checked before any merging;
bad input ends with exit code 2 and one line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from dem.adapter_merge import AdapterMergeError, AdapterSession, adapter_config, is_linear, load_problem
from dem.merge import MergeConfigError, Strategy, get_strategy, load_strategy_file, tensor_generator
from dem.statistics import StatisticError, StatsFiles, check_stats_files, meta_model
from harness.errors import HarnessError
from harness.models import lora
from harness.models.loading import load_model


class MergeInputError(HarnessError, ValueError):
    """Bad command-line input; printed as one line, exit code 2."""


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise MergeInputError(f"{flag} {item!r}: expected NAME=VALUE")
        out.append((key, value))
    return out


def _number(text: str, flag: str) -> float | bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        raise MergeInputError(f"{flag}: {text!r} is not a number or true/false") from None


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and every *.safetensors tensor of a saved model (safetensors only: no pickle, no remote code)."""
    if not folder.is_dir():
        raise MergeInputError(f"{folder}: no such directory")
    config_file, files = folder / "config.json", sorted(folder.glob("*.safetensors"))
    if not config_file.exists() or not files:
        raise MergeInputError(f"{folder}: not a saved model (needs config.json and *.safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MergeInputError(f"{config_file}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise MergeInputError(f"{config_file}: not a JSON object")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors |= load_file(str(f))
        except Exception as err:
            raise MergeInputError(f"{f}: unreadable safetensors file ({' '.join(str(err).split())[:120]})") from None
    return config, tensors


ARCH_KEYS = ("architectures", "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings")


def check_compatible(base: tuple[dict, dict], models: dict[str, tuple[dict, dict]]) -> None:
    """Same architecture, same tensor names and shapes, and only finite numbers — or a one-line error."""
    for name, (_, tensors) in {"base": base, **models}.items():
        for key, t in tensors.items():
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise MergeInputError(f"{name}: tensor '{key}' contains NaN or Inf")
    base_cfg, base_t = base
    for name, (cfg, tensors) in models.items():
        for key in ARCH_KEYS:
            if cfg.get(key) != base_cfg.get(key):
                raise MergeInputError(f"{name}: architecture mismatch with base: {key} = {cfg.get(key)!r} "
                                      f"vs {base_cfg.get(key)!r}")
        if tensors.keys() != base_t.keys():
            missing = sorted(base_t.keys() ^ tensors.keys())[:3]
            raise MergeInputError(f"{name}: tensor names differ from base (e.g. {', '.join(missing)})")
        for key, t in tensors.items():
            if t.shape != base_t[key].shape:
                raise MergeInputError(f"{name}: shape mismatch for '{key}': {tuple(t.shape)} vs base "
                                      f"{tuple(base_t[key].shape)}")


def adapter_delta(base_dir: Path, name: str, folder: Path, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dense update Δ an adapter applies to every tensor of the base checkpoint (zero where it adapts nothing),
    fp32 — or a one-line error when it does not fit the base or holds NaN/Inf."""
    try:
        delta = lora.dense_vector(load_model(base_dir), folder)
    except (RuntimeError, ValueError, KeyError) as err:
        raise MergeInputError(f"{name}: adapter {folder} does not fit the base ({load_problem(err)})") from None
    stray = sorted(set(delta) - set(base))
    if stray:
        raise MergeInputError(f"{name}: adapter {folder} updates '{stray[0]}', which the base checkpoint lacks")
    for key, t in delta.items():
        if not torch.isfinite(t).all():
            raise MergeInputError(f"{name}: adapter {folder} puts NaN or Inf into '{key}'")
    return {k: delta[k] if k in delta else torch.zeros(b.shape) for k, b in base.items() if b.is_floating_point()}


def merge_checkpoints(base: dict[str, torch.Tensor], models: dict[str, dict[str, torch.Tensor]],
                      strategy: Strategy, weights: list[float], params: dict[str, Any],
                      seed: int, as_delta: frozenset[str] = frozenset(),
                      stats: StatsFiles | None = None) -> dict[str, torch.Tensor]:
    """Merge tensor by tensor in fp32; non-float tensors are copied from the base. `models[name]` holds θᵢ's
    tensors, or for a name in `as_delta` its Δᵢ (an adapter's dense update, fp32); `stats`: a data-aware
    strategy's statistics, read tensor by tensor."""
    out = {}
    for key, b in base.items():
        if not b.is_floating_point():
            out[key] = b
            continue
        base32 = b.float()
        deltas = [m[key] if name in as_delta else m[key].float() - base32 for name, m in models.items()]
        out[key] = strategy.merge(base32, deltas, weights, params, tensor_generator(seed, key),
                                  stats(key) if stats is not None else None).to(b.dtype)
    return out


def mergekit_yaml(strategy: Strategy, base_dir: Path, model_dirs: dict[str, Path], weights: list[float],
                  params: dict[str, Any]) -> str:
    """The same merge as a mergekit configuration (`mergekit-yaml FILE OUT` reproduces it)."""
    if not strategy.mergekit:
        raise MergeInputError(f"--export-mergekit: merge '{strategy.name}' has no mergekit equivalent")
    declared = {p.name: p for p in strategy.params}
    shared = {k: v for k, v in params.items() if not declared[k].per_model}
    if strategy.name == "dem":  # θ₀ + Σ wᵢΔᵢ is mergekit's task_arithmetic at λ = 1, unnormalised
        shared = {"lambda": 1.0, "normalize": False}
    models = []
    for i, folder in enumerate(model_dirs.values()):
        per = {"weight": weights[i]} | {k: v[i] for k, v in params.items() if declared[k].per_model}
        models.append({"model": str(folder.resolve()), "parameters": per})
    config: dict[str, Any] = {"merge_method": strategy.mergekit}
    if strategy.name != "linear":  # linear averages whole models; mergekit takes no base for it
        config["base_model"] = str(base_dir.resolve())
    config |= {"models": models, "parameters": shared, "dtype": "float32"}
    header = f"# dem-bench-merge --method {strategy.name}, as mergekit 0.1.5 config: mergekit-yaml THIS_FILE OUT_DIR\n"
    return header + yaml.safe_dump(config, sort_keys=False)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dem-bench-merge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Strategies: dem (default), linear, task_arithmetic, ties, dare_linear, "
                                       "dare_ties, breadcrumbs, della; fisher and regmean (with --stats); plus any in "
                                       "dem/strategies/ or --plugin.")
    p.add_argument("--base", type=Path, required=True, help="the base model θ₀ (a saved model folder)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR", required=True,
                   help="a fine-tuned model θᵢ or a LoRA adapter trained on --base; repeat for each")
    p.add_argument("--method", default="dem", help="merge strategy (default: dem, θ₀ + Σ wᵢΔᵢ)")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=W",
                   help="weight of model NAME (default 1.0)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=V",
                   help="strategy parameter, mergekit names (density=0.5); KEY.NAME=V for one model")
    p.add_argument("--seed", type=int, default=0, help="seed of random drops (dare_*, della)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="a file of extra strategies")
    p.add_argument("--out", type=Path, help="dense output checkpoint folder (written atomically)")
    p.add_argument("--out-adapter", type=Path, metavar="DIR",
                   help="the merge as one LoRA adapter (adapter inputs, a θ₀ + Σ cᵢΔᵢ strategy; written atomically)")
    p.add_argument("--export-mergekit", type=Path, metavar="FILE", help="also write the equivalent mergekit YAML")
    p.add_argument("--stats", type=Path, metavar="DIR",
                   help="saved statistics for a strategy that learns from data (fisher, regmean): "
                        "DIR/<statistic>/<NAME>.safetensors for each --model NAME, as dem-bench links them in "
                        "models/<row>/stats/")
    return p.parse_args(argv)


def _inside(a: Path, b: Path) -> bool:
    """Whether a is b or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_output(outs: dict[str, Path], inputs: list[Path], export: Path | None) -> None:
    """Before any merging: each output folder (`outs`: flag → folder) is not an input, does not contain one, is not
    inside one or another output, is not a file, and its folder is writable; --export-mergekit goes to a
    writable, existing folder."""
    resolved = {flag: out.resolve() for flag, out in outs.items()}
    for flag, out in resolved.items():
        others = [(f"the input {f.resolve()}", f.resolve()) for f in inputs]
        others += [(f"{f} {o}", o) for f, o in resolved.items() if f != flag]
        for what, src in others:
            if _inside(out, src) or _inside(src, out):
                raise MergeInputError(f"{flag} {out}: is, contains or lies inside {what}; pick another folder")
        if out.exists() and not out.is_dir():
            raise MergeInputError(f"{flag} {out}: is a file")
        if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
            raise MergeInputError(f"{flag} {out}: its folder {out.parent} does not exist or is not writable")
    if export is not None:
        target = export.resolve()
        if target.is_dir():
            raise MergeInputError(f"--export-mergekit {target}: is a folder; give a file name")
        if not target.parent.is_dir() or not os.access(target.parent, os.W_OK):
            raise MergeInputError(f"--export-mergekit {target}: its folder {target.parent} does not exist or is not "
                                  "writable")
        if any(_inside(target, folder.resolve()) for folder in inputs):
            raise MergeInputError(f"--export-mergekit {target}: lies inside an input model folder")


def check_adapter_output(strategy: Strategy, params: dict[str, Any], model_dirs: dict[str, Path],
                         adapters: set[str]) -> None:
    """--out-adapter needs adapter inputs only and a merge that is θ₀ + Σ cᵢΔᵢ (one adapter of rank Σrᵢ)."""
    full = [name for name in model_dirs if name not in adapters]
    if full:
        raise MergeInputError(f"--out-adapter: --model {full[0]}={model_dirs[full[0]]} is a full checkpoint, not a "
                              "LoRA adapter; only adapters merge into an adapter (use --out)")
    if not is_linear(strategy, params, len(model_dirs)):
        raise MergeInputError(f"--out-adapter: merge '{strategy.name}' is not θ₀ + Σ cᵢΔᵢ, so its result is not "
                              "one LoRA adapter (dem, task_arithmetic and linear with normalize are); use --out")


def stats_files(strategy: Strategy, folder: Path | None, names: list[str]) -> dict[str, list[Path]]:
    """The statistic files a data-aware strategy needs, DIR/<statistic>/<NAME>.safetensors per --model NAME;
    none for a data-free one (then --stats is refused, not ignored)."""
    if not strategy.stats:
        if folder is not None:
            raise MergeInputError(f"--stats: merge '{strategy.name}' uses no statistics (fisher and regmean do)")
        return {}
    if folder is None:
        raise MergeInputError(f"merge '{strategy.name}' learns from data: give --stats DIR holding "
                              f"{', '.join(f'{s}/<NAME>.safetensors' for s in strategy.stats)} for each --model")
    files = {s: [folder / s / f"{name}.safetensors" for name in names] for s in strategy.stats}
    for s, paths in files.items():
        for name, path in zip(names, paths, strict=True):
            if not path.is_file():
                raise MergeInputError(f"--stats {folder}: no {s}/{name}.safetensors for --model {name}")
    return files


def _write_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder beside `out` with `fill(tmp)`, then put it in place of `out` in one rename."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fill(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> list[Path]:
    for path in args.plugin:
        load_strategy_file(path)
    strategy = get_strategy(args.method)
    model_dirs = dict(_pairs(args.model, "--model"))
    if len(model_dirs) != len(args.model):
        raise MergeInputError("--model: each NAME must be given once")
    model_dirs = {k: Path(v) for k, v in model_dirs.items()}
    outs = {flag: path for flag, path in (("--out", args.out), ("--out-adapter", args.out_adapter)) if path}
    if not outs:
        raise MergeInputError("no output: give --out DIR (a dense checkpoint), --out-adapter DIR (one LoRA adapter) "
                              "or both")
    check_output(outs, [args.base, *model_dirs.values()], args.export_mergekit)
    weights = dict.fromkeys(model_dirs, 1.0)
    for name, value in _pairs(args.weight, "--weight"):
        if name not in weights:
            raise MergeInputError(f"--weight {name}: no --model named {name!r}")
        weights[name] = float(_number(value, "--weight"))
    declared = {p.name: p for p in strategy.params}
    given: dict[str, Any] = {}
    for key, value in _pairs(args.param, "--param"):
        pname, _, model = key.partition(".")
        if pname not in declared:
            raise MergeConfigError(f"merge '{strategy.name}' has no parameter '{pname}'; it takes: "
                                   f"{', '.join(declared) or 'none'}")
        if model:
            if not declared[pname].per_model or model not in model_dirs:
                raise MergeInputError(f"--param {key}: '{pname}' is not per-model or no --model named {model!r}")
            current = given.get(pname, declared[pname].default)
            values = current if isinstance(current, list) else [current] * len(model_dirs)
            values[list(model_dirs).index(model)] = _number(value, "--param")
            given[pname] = values
        else:
            given[pname] = _number(value, "--param")
    params = strategy.resolve(given, len(model_dirs))
    adapters = {name for name, folder in model_dirs.items() if lora.is_adapter(folder)}
    for name in adapters:
        adapter_config(model_dirs[name])  # a plain LoRA adapter stored as safetensors, or one line saying why
    if "--out-adapter" in outs:
        check_adapter_output(strategy, params, model_dirs, adapters)
    if args.export_mergekit and adapters:
        raise MergeInputError("--export-mergekit: adapter inputs are not exported (mergekit would need each "
                              "adapter applied to the base first); merge them with --out and export full checkpoints")
    exported = (mergekit_yaml(strategy, args.base, model_dirs, list(weights.values()), params)
                if args.export_mergekit else None)  # before writing anything: it can refuse a strategy
    stat_files = stats_files(strategy, args.stats, list(model_dirs))

    base = load_checkpoint(args.base)
    models = {name: load_checkpoint(folder) for name, folder in model_dirs.items() if name not in adapters}
    check_compatible(base, models)  # the base and the full checkpoints (an adapter is checked as it is opened)
    stats = None
    if stat_files:
        try:
            from transformers import AutoConfig

            check_stats_files(stat_files, list(model_dirs), meta_model(AutoConfig.from_pretrained(args.base)))
        except StatisticError as err:
            raise MergeInputError(f"--stats: {err}") from None
        stats = StatsFiles(stat_files)
    session = None
    if "--out-adapter" in outs:  # checks that the adapters fit the base and adapt the same modules
        try:
            session = AdapterSession(load_model(args.base), list(model_dirs.values()), strategy, params)
        except AdapterMergeError as err:
            raise MergeInputError(f"--out-adapter: {err}") from None
        session.set(list(weights.values()), params)
    merged = None
    if "--out" in outs:
        tensors = {name: adapter_delta(args.base, name, folder, base[1]) if name in adapters else models[name][1]
                   for name, folder in model_dirs.items()}
        merged = merge_checkpoints(base[1], tensors, strategy, list(weights.values()), params, args.seed,
                                   frozenset(adapters), stats)

    record = {"method": strategy.name, "base": str(args.base.resolve()), "weights": weights, "params": params,
              "seed": args.seed, "models": {k: str(v.resolve()) for k, v in model_dirs.items()},
              "adapters": sorted(adapters),
              "stats": {s: [str(f.resolve()) for f in fs] for s, fs in stat_files.items()}}

    def dense(tmp: Path) -> None:
        shutil.copytree(args.base, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
        save_file(merged, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "dem_bench_merge.json").write_text(json.dumps(record, indent=2))

    def adapter(tmp: Path) -> None:
        session.save_adapter(tmp, base=str(args.base.resolve()))
        (tmp / "dem_bench_merge.json").write_text(json.dumps(record, indent=2))

    written = []
    for flag, fill in (("--out", dense), ("--out-adapter", adapter)):
        if flag in outs:
            _write_folder(outs[flag].resolve(), fill)
            written.append(outs[flag].resolve())
    if exported is not None:
        target = args.export_mergekit.resolve()
        part = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        part.write_text(exported)
        os.replace(part, target)
    return written


def main(argv: list[str] | None = None) -> None:
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    hf_logging.disable_progress_bar()  # opening the base for adapters must not print bars around a one-line error
    try:
        written = run(args)
    except HarnessError as err:
        print(f"dem-bench-merge: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"dem-bench-merge: merged {len(args.model)} models with '{args.method}' into "
          f"{' and '.join(map(str, written))}")


if __name__ == "__main__":
    main()
