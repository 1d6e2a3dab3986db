"""Aggregate report over a sweep: mean ± 95% CI across seeds per (sweep values, model), DEM vs mixing W/T/L.

`dem-bench-report runs/multirun/<date>` (or several run folders) reads every job's summary.json and writes
aggregate.md, aggregate.csv, aggregate.tex (booktabs) and cost_quality.png into the sweep folder. Runs that differ
only in their seed are replicates of one setup; any other config key that differs (e.g. `budget.train_tokens`)
becomes a grouping column, so a sweep over a key gives one row per value × model and a plot against that key.
Everything is read and checked, and every file rendered, before the first one is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError
from harness.report.comparison import chance_levels, higher_is_better, png_bytes, rows, score_columns, write_atomic
from harness.report.contract import SummaryError, check_summary
from harness.stats.intervals import t_interval, win_tie_loss

SUMMARY = "summary.json"
FILES = ("aggregate.md", "aggregate.csv", "aggregate.tex", "cost_quality.png")
# Config keys that never define a setup: replicates (seeds), where things are written, and logging.
NOT_SWEPT_TOP = ("seed", "seeds", "output_dir", "cache_dir", "hub_mirror", "hydra", "tracking")
MIXING = "data_mixing"
RETENTION_SHOWN = ("retention_id", "retention_general")  # in aggregate.md/.tex; every retention column is in the csv
RETENTION_NOTE = ("- `retention_id`: in-distribution retention (each training distribution's own task, or its "
                  "validation perplexity, relative to its single fine-tune, averaged over distributions); "
                  "`retention_general`: mean score on the general benchmarks ÷ the base model's; both per run "
                  "(definition in each run's report.md), then mean ± across seeds; n/a where some seed has none (a "
                  "model left out of scoring, or a run from before retention).\n")
TRACKING_MODES = ("disabled", "offline", "online")


class AggregateError(HarnessError, ValueError):
    """Runs that cannot be aggregated (none found, unreadable, or from different setups); nothing is written."""


# ------------------------------------------------------------------------------------------------- finding runs
def _natural(path: Path) -> list[Any]:
    """Sort key that puts job 10 after job 9 (Hydra numbers job folders 0, 1, …, 10)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", str(path)) if p]


def _subfolders(folder: Path, depth: int) -> list[Path]:
    """Visible folders up to `depth` levels below `folder` (skips .hydra, and wandb/models/… inside runs)."""
    level, found = [folder], []
    for _ in range(depth):
        level = [c for f in level for c in f.iterdir() if c.is_dir() and not c.name.startswith(".")]
        found += level
        level = [f for f in level if not (f / SUMMARY).is_file()]  # a run's own subfolders hold no runs
    return found


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run folders (each holds summary.json) from run folders and/or sweep folders (jobs ≤ 2 levels down).

    A Hydra job folder without summary.json failed or is still running: aggregating without it would silently
    drop a seed, so it is an error that names the folder.
    """
    if not paths:
        raise AggregateError("no folder given: pass a sweep folder (runs/multirun/<date>) or run folders")
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise AggregateError(f"{path}: no such folder")
        if (path / SUMMARY).is_file():
            found.append(path)
            continue
        jobs = _subfolders(path, 2)
        unfinished = [j for j in jobs if (j / ".hydra").is_dir() and not (j / SUMMARY).is_file()]
        if unfinished:
            raise AggregateError(f"{unfinished[0]} has no {SUMMARY} (the job failed or is still running): "
                                 "rerun it, or pass the finished run folders instead")
        runs = sorted((j for j in jobs if (j / SUMMARY).is_file()), key=_natural)
        if not runs:
            raise AggregateError(f"{path}: no {SUMMARY} in it or in its job folders (up to 2 levels down)")
        found += runs
    unique = {p.resolve(): p for p in found}  # the same run named twice counts once
    return list(unique.values())


def _read(run: Path) -> dict[str, Any]:
    """One summary.json, checked for every field the aggregate reads (the error names the file and field)."""
    path = run / SUMMARY
    try:
        summary = json.loads(path.read_text())
        check_summary(summary)
    except SummaryError as err:
        raise AggregateError(f"{path}: {err}") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AggregateError(f"{path}: unreadable ({type(err).__name__}: {' '.join(str(err).split())})") from err
    if not isinstance(summary.get("config"), dict):
        raise AggregateError(f"{path}: missing 'config'")
    for name, m in summary["methods"].items():
        for col in score_columns(summary) if m.get("scored", True) else []:  # one left out of scoring has none
            if col not in m["scores"]:
                raise AggregateError(f"{path}: missing 'methods.{name}.scores.{col}'")
    return summary


def _differ(what: str, a: Path, b: Path, xs: Iterable[str], ys: Iterable[str]) -> AggregateError:
    only_a, only_b = sorted(set(xs) - set(ys)), sorted(set(ys) - set(xs))
    return AggregateError(f"cannot aggregate runs with different {what}: {a} has {only_a or 'none'} that "
                          f"{b} lacks, and lacks {only_b or 'none'}")


def load_runs(runs: Sequence[Path]) -> list[dict[str, Any]]:
    """Every run's summary, read and checked: one setup (same models, same task columns), no run twice."""
    summaries = [_read(r) for r in runs]
    first, ref = runs[0], summaries[0]
    for run, s in zip(runs[1:], summaries[1:], strict=True):
        if list(s["methods"]) != list(ref["methods"]):
            raise _differ("models", first, run, ref["methods"], s["methods"])
        if score_columns(s) != score_columns(ref):
            raise _differ("tasks (headline metrics)", first, run, score_columns(ref), score_columns(s))
    keys, seen = sweep_keys(summaries), {}
    for run, s in zip(runs, summaries, strict=True):
        ident = (_group(s, keys), s["seed"])
        if ident in seen:
            raise AggregateError(f"{seen[ident]} and {run} are the same setup with the same seed {s['seed']}: "
                                 "pass only one of them")
        seen[ident] = run
    return summaries


# ------------------------------------------------------------------------------------------------- sweep keys
def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config; lists stay leaf values (a list of tasks is one setting)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        out |= _flatten(value, f"{name}.") if isinstance(value, dict) and value else {name: value}
    return out


def _swept(key: str) -> bool:
    """Whether a key can define a setup: not a seed (`seed`, `seeds.*`, `*.seed`), output path or logging."""
    parts = key.split(".")
    return parts[0] not in NOT_SWEPT_TOP and parts[-1] not in ("seed", "seeds")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def sweep_keys(summaries: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys whose values differ across runs (in config order), seed-like/path/logging keys excluded."""
    flat = [_flatten(s["config"]) for s in summaries]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return [k for k in keys if _swept(k) and len({_canonical(f[k]) if k in f else "<missing>" for f in flat}) > 1]


def _display(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, float, str, bool)) else _canonical(value)


def _group(summary: dict[str, Any], keys: Sequence[str]) -> tuple[Any, ...]:
    flat = _flatten(summary["config"])
    return tuple(_display(flat.get(k)) for k in keys)


def _order(value: Any) -> tuple[int, float, str]:
    """Sort sweep values numerically where they are numbers (100000 before 400000), then as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


# ------------------------------------------------------------------------------------------------- the table
def _interval(values: Sequence[float], name: str) -> tuple[float, float, float]:
    """Mean and 95% Student-t interval across seeds; one seed has no interval (NaN bounds)."""
    try:
        ci = t_interval(values)
    except ValueError as err:  # NaN/inf (a diverged run's perplexity) or a missing score
        raise ValueError(f"{name} {err}") from err
    return ci["mean"], ci["low"], ci["high"]


def _ppl_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Geometric mean of perplexity with its interval: the t interval of log-perplexity (the mean validation
    loss), mapped back. Perplexity is exp(loss), so averaging its log is averaging the loss, and one diverged
    seed cannot dominate the mean as it would in an arithmetic mean."""
    if not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise ValueError(f"val_ppl: expected positive numbers across seeds, got {list(values)}")
    mean, low, high = _interval([math.log(v) for v in values], "val_ppl")
    return math.exp(mean), math.exp(low), math.exp(high)


def _long(summaries: Sequence[dict[str, Any]], keys: Sequence[str]) -> pd.DataFrame:
    """One row per (run, model): the single-run report's own numbers (so both reports agree), plus group and seed."""
    frames = []
    for s in summaries:
        frame = pd.DataFrame(rows(s))
        frame.insert(0, "seed", s["seed"])
        frame.insert(0, "_group", [_group(s, keys)] * len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _optional_interval(values: Sequence[Any], name: str) -> tuple[float, float, float]:
    """As `_interval`, but NaN throughout where some seed has no value (a retention column of a model left out of
    scoring, or of a run from before retention existed): a mean over the other seeds would mix setups."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
        return math.nan, math.nan, math.nan
    return _interval(values, name)


def _model_row(model: pd.DataFrame, mixing: pd.DataFrame, metrics: Sequence[str], is_dem: bool,
               lower: frozenset[str] = frozenset(), optional: Sequence[str] = ()) -> dict[str, Any]:
    """One model's aggregate within a group; `model`/`mixing` are its and the mixing arm's rows indexed by seed.
    A win on a column in `lower` (lower-is-better metrics) is a lower value. `optional` columns (retention) get
    mean and interval only, NaN where a seed lacks them."""
    row: dict[str, Any] = {"n_seeds": len(model), "seeds": " ".join(map(str, sorted(model.index)))}
    never = bool(model[list(metrics)].isna().all(axis=None))  # left out of scoring in every run: n/a, no error
    for col in metrics:
        interval = _optional_interval if never else _interval
        row[col], row[f"{col}_low"], row[f"{col}_high"] = interval(model[col].tolist(), col)
    for col in optional:
        row[col], row[f"{col}_low"], row[f"{col}_high"] = _optional_interval(model[col].tolist(), col)
    row["val_ppl"], row["val_ppl_low"], row["val_ppl_high"] = _ppl_interval(model["val_ppl"].tolist())
    row["train_flops"] = model["train_flops"].mean()
    row["cost_vs_mixing"] = model["cost_vs_mixing"].mean()  # for `dem`: the mean of the runs' cost_ratio_train
    seeds = sorted(model.index)
    for col in metrics:  # paired by seed: DEM and the mixing arm of the same run
        a, b = model.loc[seeds, col].tolist(), mixing.loc[seeds, col].tolist()
        compared = is_dem and not never and not any(pd.isna(b))
        wtl = (win_tie_loss(b, a) if col in lower else win_tie_loss(a, b)) if compared else (None,) * 3
        row |= dict(zip((f"{col}_wins", f"{col}_ties", f"{col}_losses"), wtl, strict=True))
    return row


def aggregate(summaries: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per (sweep values…, model): each task's headline metric, `mean_score` (per seed, then across seeds)
    and `val_ppl` as mean with 95% CI bounds (`<col>`, `<col>_low`, `<col>_high`), mean `train_flops` and
    `cost_vs_mixing`, `n_seeds`, and for DEM rows (`dem`, `dem_<merge>`) the wins/ties/losses against data mixing
    over seeds (`<col>_wins`, `<col>_ties`, `<col>_losses`) for mean_score and each task. The retention columns
    (`retention_*`, where the runs have them) get mean and CI bounds too, NaN where some seed lacks them."""
    keys = sweep_keys(summaries)
    metrics = [*score_columns(summaries[0]), "mean_score"]
    lower = frozenset(c for c, up in higher_is_better(summaries[0]).items() if not up)
    long = _long(summaries, keys)
    retention = [c for c in long.columns if c.startswith("retention_") and ".ci_" not in c]  # not per-run CIs
    out = []
    for group in sorted(dict.fromkeys(long["_group"]), key=lambda g: [_order(v) for v in g]):
        runs = long[[g == group for g in long["_group"]]]  # not `== group`: pandas reads a tuple as a column
        mixing = runs[runs["model"] == MIXING].set_index("seed")
        for model in dict.fromkeys(runs["model"]):
            rows_ = runs[runs["model"] == model].set_index("seed")
            is_dem = model == "dem" or model.startswith("dem_")
            try:
                stats = _model_row(rows_, mixing, metrics, is_dem, lower, retention)
            except ValueError as err:
                where = ", ".join(f"{k}={v}" for k, v in zip(keys, group, strict=True))
                raise AggregateError(f"cannot aggregate model {model}{f' ({where})' if where else ''}: {err}") from err
            out.append(dict(zip(keys, group, strict=True)) | {"model": model} | stats)
    table = pd.DataFrame(out)
    counts = [c for c in table.columns if c.endswith(("_wins", "_ties", "_losses"))]
    return table.astype({c: "Int64" for c in counts})  # blank (not 2.0) where a row is not a DEM row


# ------------------------------------------------------------------------------------------------- md / tex / csv
def _pm(mean: float, low: float, high: float, fmt: str = ".3f") -> str:
    """'0.412 ± 0.031' (half-width of the symmetric t interval); just the mean where there is no interval, 'n/a'
    where there is no mean (a retention column some seed lacks)."""
    if math.isnan(mean):
        return "n/a"
    return f"{mean:{fmt}}" if math.isnan(high) else f"{mean:{fmt}} ± {high - mean:{fmt}}"


def _ppl(mean: float, low: float, high: float) -> str:
    return f"{mean:.3g}" if math.isnan(high) else f"{mean:.3g} [{low:.3g}, {high:.3g}]"


def _wtl(row: pd.Series, col: str) -> str:
    return "" if pd.isna(row[f"{col}_wins"]) else f"{row[f'{col}_wins']}/{row[f'{col}_ties']}/{row[f'{col}_losses']}"


def display(table: pd.DataFrame, keys: Sequence[str], tasks: Sequence[str]) -> pd.DataFrame:
    """The table as people read it: one text cell per quantity ('0.412 ± 0.031'), for aggregate.md and .tex."""
    def cells(r: pd.Series) -> dict[str, Any]:
        out: dict[str, Any] = {k: r[k] for k in keys} | {"model": r["model"], "n": r["n_seeds"]}
        out |= {c: _pm(r[c], r[f"{c}_low"], r[f"{c}_high"]) for c in [*tasks, "mean_score"]}
        out |= {c: _pm(r[c], r[f"{c}_low"], r[f"{c}_high"]) for c in RETENTION_SHOWN if c in r}
        out["val_ppl"] = _ppl(r["val_ppl"], r["val_ppl_low"], r["val_ppl_high"])
        out |= {"train_flops": f"{r['train_flops']:.3g}", "cost_vs_mixing": f"{r['cost_vs_mixing']:.2f}",
                "W/T/L vs mixing": _wtl(r, "mean_score")}
        return out

    return pd.DataFrame([cells(r) for _, r in table.iterrows()])


def _md_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return header + "".join("| " + " | ".join(map(str, r)) + " |\n" for r in frame.itertuples(index=False))


def _chance(summaries: Sequence[dict[str, Any]]) -> str:
    levels = [chance_levels(s) for s in summaries]  # built-in tasks' and stock multiple-choice tasks'
    tasks = dict.fromkeys(t for c in levels for t in c)
    means = {t: sum(c[t] for c in levels if t in c) / sum(t in c for c in levels) for t in tasks}
    return ", ".join(f"{t} {c:.3f}" for t, c in means.items()) or "n/a (no multiple-choice task)"


def markdown(table: pd.DataFrame, summaries: Sequence[dict[str, Any]], runs: Sequence[Path]) -> str:
    """aggregate.md: what ± and W/T/L mean, the sweep keys and chance levels, the table, then W/T/L per task."""
    keys, tasks = sweep_keys(summaries), score_columns(summaries[0])
    n = sorted(set(table["n_seeds"]))
    commits = sorted({str(s["provenance"].get("git_commit")) for s in summaries})
    dem = table[table["mean_score_wins"].notna()]
    wtl = dem[[*keys, "model"]].assign(**{c: [_wtl(r, c) for _, r in dem.iterrows()] for c in ["mean_score", *tasks]},
                                       cost_vs_mixing=dem["cost_vs_mixing"].map(lambda v: f"{v:.3f}"))
    return (
        f"# dem-bench aggregate over {len(summaries)} runs\n\n"
        f"- Seeds per row (`n`): {', '.join(map(str, n))}; sweep keys: "
        + (", ".join(f"`{k}`" for k in keys) or "none (the runs differ only in their seed)") + "\n"
        "- `±`: half-width of the 95% confidence interval of the mean across seeds (Student t, n−1 degrees of "
        "freedom); no ± where n = 1.\n"
        "- `val_ppl`: geometric mean across seeds (= the mean validation loss, exponentiated) [95% interval].\n"
        "- `mean_score`: the mean of the task columns within each run, then across seeds; `train_flops` and "
        "`cost_vs_mixing` (train FLOPs ÷ the data-mixing arm's; DEM's is the runs' `cost_ratio_train`) are means over "
        "seeds.\n"
        + (RETENTION_NOTE if "retention_id" in table.columns else "") +
        "- `W/T/L vs mixing`: seeds where the DEM model's mean score is above / equal to / below data mixing's in "
        "the same run; per task in the last table.\n"
        f"- Chance accuracy: {_chance(summaries)}\n"
        f"- git commit(s): {', '.join(commits)}\n\n"
        + _md_table(display(table, keys, tasks))
        + "\n## DEM vs data mixing (wins/ties/losses over seeds)\n\n" + _md_table(wtl)
        + "\nRuns: " + ", ".join(f"`{r}`" for r in runs) + "\n"
    )


def latex(table: pd.DataFrame, keys: Sequence[str], tasks: Sequence[str]) -> str:
    """aggregate.tex: a booktabs tabular (needs \\usepackage{booktabs}), names escaped, ± as $\\pm$."""
    frame = display(table, keys, tasks)
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    align = "l" * (len(keys) + 1) + "r" * (len(frame.columns) - len(keys) - 1)
    body = styler.to_latex(hrules=True, column_format=align).replace("±", r"$\pm$")
    return ("% dem-bench aggregate (mean $\\pm$ 95% t-interval half-width across seeds); needs \\usepackage{booktabs}\n"
            + body)


# ------------------------------------------------------------------------------------------------- plot
FIXED_STYLE = {"data_mixing": ("tab:blue", "-", "o"), "dem": ("tab:red", "-", "o"), "base": ("grey", ":", "o")}
ONLY_COLOURS = ("tab:green", "tab:olive", "tab:cyan", "tab:brown", "tab:gray")
MERGE_COLOURS = ("tab:purple", "tab:orange", "tab:pink", "darkred", "gold")


def _styles(models: Sequence[str]) -> dict[str, dict[str, str]]:
    """Colour, line and marker per model: the two arms fixed (blue mixing, red DEM), single-distribution
    fine-tunes dotted, other merges dashed, each with its own colour so lines stay apart in a legend."""
    only = [m for m in models if m not in FIXED_STYLE and not m.startswith("dem")]
    merges = [m for m in models if m not in FIXED_STYLE and m.startswith("dem")]
    out = {m: FIXED_STYLE[m] for m in models if m in FIXED_STYLE}
    out |= {m: (ONLY_COLOURS[i % len(ONLY_COLOURS)], ":", "^") for i, m in enumerate(only)}
    out |= {m: (MERGE_COLOURS[i % len(MERGE_COLOURS)], "--", "s") for i, m in enumerate(merges)}
    return {m: {"color": c, "linestyle": ls, "marker": mk} for m, (c, ls, mk) in out.items()}


def _yerr(rows_: pd.DataFrame) -> list[list[float]]:
    """Asymmetric error bars from the interval bounds; none (0) where a row has one seed."""
    low = (rows_["mean_score"] - rows_["mean_score_low"]).fillna(0.0)
    high = (rows_["mean_score_high"] - rows_["mean_score"]).fillna(0.0)
    return [low.tolist(), high.tolist()]


def plot(table: pd.DataFrame, keys: Sequence[str]) -> bytes:
    """cost_quality.png: without sweep keys, training FLOPs vs mean score per model; with them, mean score vs
    the swept value(s), one line per model. Error bars: the 95% interval across seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = _styles(list(dict.fromkeys(table["model"])))
    if not keys:
        for _, r in table[table["mean_score"].notna()].iterrows():  # not scored: no point
            ax.errorbar(r["train_flops"], r["mean_score"], yerr=_yerr(table.loc[[r.name]]), capsize=3, ms=7,
                        color=styles[r["model"]]["color"], marker=styles[r["model"]]["marker"], linestyle="none")
            ax.annotate(r["model"], (r["train_flops"], r["mean_score"]), textcoords="offset points",
                        xytext=(6, 4), fontsize=9)
        ax.set_xlabel("training FLOPs (whole arm)")
        ax.set_title(f"dem-bench: cost vs quality (n = {int(table['n_seeds'].max())} seeds)")
    else:
        _plot_sweep(ax, table, keys, styles)
    ax.set_ylabel("mean score over eval tasks (95% CI)")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def _plot_sweep(ax: Any, table: pd.DataFrame, keys: Sequence[str], styles: dict[str, dict[str, str]]) -> None:
    """Mean score against the swept value: numeric x for one numeric key (log scale over ≥ 10x), else categories.
    Models are dodged sideways by a few percent so their error bars do not hide each other."""
    values = [tuple(v) for v in table[list(keys)].itertuples(index=False)]
    labels = list(dict.fromkeys(values))
    numeric = len(keys) == 1 and all(_order(v[0])[0] == 0 for v in values)
    x = [float(v[0]) for v in values] if numeric else [float(labels.index(v)) for v in values]
    log = numeric and min(x) > 0 and max(x) / min(x) >= 10
    models = list(dict.fromkeys(table["model"]))
    for i, model in enumerate(models):
        dodge = (i - (len(models) - 1) / 2) * 0.015  # fraction of the x span (categories: of one step)
        mine = [j for j, m in enumerate(table["model"]) if m == model]
        xs = [_dodged(x[j], dodge, min(x), max(x), log, numeric) for j in mine]
        rows_ = table.iloc[mine].assign(_x=xs).sort_values("_x")
        ax.errorbar(rows_["_x"], rows_["mean_score"], yerr=_yerr(rows_), capsize=3, label=model, **styles[model])
    if log:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(labels)), [" / ".join(map(str, v)) for v in labels], rotation=20)
    ax.set_xlabel(" / ".join(keys))
    ax.set_title(f"dem-bench: mean score vs {' / '.join(keys)}")
    ax.legend(fontsize=8)


def _dodged(x: float, dodge: float, low: float, high: float, log: bool, numeric: bool) -> float:
    if not numeric:
        return x + 4 * dodge
    if log:
        return x * (high / low) ** dodge
    return x + dodge * (high - low)


# ------------------------------------------------------------------------------------------------- entry point
def render(summaries: Sequence[dict[str, Any]], runs: Sequence[Path]) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """The aggregate table and every file's bytes, computed before any is written."""
    table = aggregate(summaries)
    keys, tasks = sweep_keys(summaries), score_columns(summaries[0])
    files = {"aggregate.md": markdown(table, summaries, runs).encode(),
             "aggregate.csv": table.to_csv(index=False).encode(),
             "aggregate.tex": latex(table, keys, tasks).encode(),
             "cost_quality.png": plot(table, keys)}
    return table, files


def _default_out(paths: Sequence[Path]) -> Path:
    """The sweep folder itself, or the folder that holds all the given run folders."""
    return paths[0] if len(paths) == 1 else Path(os.path.commonpath([p.resolve() for p in paths]))


def _tracking_mode(summaries: Sequence[dict[str, Any]]) -> str:
    """The runs' own tracking mode; offline when they disagree (offline needs no network and stays the default)."""
    modes = {s["config"].get("tracking", {}).get("mode", "disabled") for s in summaries} - {"disabled"}
    if len(modes) == 1:
        return modes.pop()
    return "offline" if modes else "disabled"


def log_wandb(table: pd.DataFrame, mode: str, out: Path, group: str, project: str, keys: Sequence[str]) -> None:
    """The aggregate table as a W&B Table, in a run grouped with the sweep (job_type 'aggregate')."""
    import wandb  # heavy import, only when tracking is on

    run = wandb.init(project=project, mode=mode, dir=str(out), group=group, job_type="aggregate",
                     name=f"aggregate-{group}", config={"sweep_keys": list(keys)},
                     settings=wandb.Settings(console="off", silent=True))
    clean = table.astype(object).where(table.notna(), None)  # W&B Tables take None, not pandas' NA/NaN
    run.log({"aggregate": wandb.Table(columns=list(clean.columns), data=clean.values.tolist())})
    run.finish()


def main_aggregate(paths: Sequence[Path], out: Path | None = None, *, wandb_mode: str | None = None) -> Path:
    """Aggregate run/sweep folders into `out` (default: the sweep folder); returns the folder written.

    `wandb_mode` None follows the runs' `tracking.mode`; `disabled` logs nothing. Raises AggregateError (one line)
    before writing anything when the runs cannot be aggregated.
    """
    if wandb_mode not in (None, *TRACKING_MODES):
        raise AggregateError(f"unknown W&B mode {wandb_mode!r}: use one of {', '.join(TRACKING_MODES)}")
    runs = find_runs(paths)
    summaries = load_runs(runs)
    out = out or _default_out(paths)
    if (out / SUMMARY).is_file():
        raise AggregateError(f"{out} is a run folder (its cost_quality.png is that run's own): pass another output "
                             "folder")
    table, files = render(summaries, runs)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomic(out / name, data)
    mode = wandb_mode or _tracking_mode(summaries)
    if mode != "disabled":
        project = summaries[0]["config"].get("tracking", {}).get("project", "dem-bench")
        log_wandb(table, mode, out, out.resolve().name, project, sweep_keys(summaries))
    return out
