"""Report files from a comparison's summary: results.csv, report.md and cost_quality.png.

`dem-bench-report RUN_DIR` rebuilds them from RUN_DIR/summary.json alone, so tables can be regenerated
(or restyled) without re-running anything.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from harness.report.contract import check_summary  # summary.json's contract, checked field by field


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written result."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def score_columns(summary: dict[str, Any]) -> list[str]:
    """`task/metric` of each evaluated task's headline metric (all metrics stay in summary.json)."""
    if "headline_metrics" in summary:
        return [f"{t}/{m}" for t, m in summary["headline_metrics"].items()]
    first = next(iter(summary["methods"].values()))["scores"]
    return [k for k in first if k.endswith("/acc")]  # summaries written before headline metrics existed


def higher_is_better(summary: dict[str, Any]) -> dict[str, bool]:
    """Per score column, whether a higher value is better: lm-eval's `higher_is_better` of the task's headline
    metric (a perplexity task such as wikitext is lower-is-better); summaries from before it was recorded: True."""
    known = summary.get("higher_is_better") or {}
    return {col: bool(known.get(col.split("/", 1)[0], True)) for col in score_columns(summary)}


def mean_columns(summary: dict[str, Any]) -> list[str]:
    """The score columns `mean_score` averages: the higher-is-better ones (a mean with a lower-is-better metric in
    it would reward getting worse on that task)."""
    return [col for col, up in higher_is_better(summary).items() if up]


def chance_levels(summary: dict[str, Any]) -> dict[str, float]:
    """Per task, the expected score of uniform guessing: `chance` (built-in tasks, from their test sets) and,
    for stock multiple-choice tasks, `statistics.chance` (from the per-sample records); the first wins."""
    return {**((summary.get("statistics") or {}).get("chance") or {}), **summary.get("chance", {})}


def retention_columns(summary: dict[str, Any], with_ci: bool = True) -> list[str]:
    """results.csv's retention columns (none in summaries written before retention existed): the in-distribution
    mean, each distribution's value, the perplexity-based mean, and general retention — each followed by its 95%
    CI bounds `<col>.ci_low` / `<col>.ci_high` (with_ci)."""
    ret = summary.get("retention")
    if not ret:
        return []
    cols = ["retention_id", *[f"retention_id/{d}" for d in ret["basis"]], "retention_id_ppl", "retention_general"]
    return [c for col in cols for c in ([col, f"{col}.ci_low", f"{col}.ci_high"] if with_ci else [col])]


def _retention_values(summary: dict[str, Any], name: str) -> dict[str, float | None]:
    ret = summary.get("retention")
    if not ret:
        return {}
    m = ret["models"].get(name) or {}
    value = {"retention_id": m.get("in_distribution_mean"), "retention_id_ppl": m.get("in_distribution_ppl_mean"),
             "retention_general": m.get("general")}
    value |= {f"retention_id/{d}": (m.get("in_distribution") or {}).get(d) for d in ret["basis"]}
    out = {}
    for col in retention_columns(summary, with_ci=False):
        got = value[col] or {}
        out |= {col: got.get("value"), f"{col}.ci_low": got.get("ci_low"), f"{col}.ci_high": got.get("ci_high")}
    return out


def selection_tokens(m: dict[str, Any]) -> int:
    """Forward tokens a model's selection used (`search_forward_tokens`: the name before it counted the grid's
    validation passes and RegMix's proxies too)."""
    return m.get("selection_forward_tokens", m.get("search_forward_tokens", 0))


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model: perplexities, task scores, cost (FLOPs relative to the mixing arm), retention."""
    mixing_flops = summary["methods"]["data_mixing"]["train_flops"]
    columns, averaged = score_columns(summary), mean_columns(summary)
    out = []
    for name, m in summary["methods"].items():
        row: dict[str, Any] = {"model": name, "val_ppl": m["val_ppl"]}
        row |= {f"val_ppl/{d}": v for d, v in m["val_ppl_by_dist"].items()}
        if "selection_val_ppl" in m:
            row["sel_val_ppl"] = m["selection_val_ppl"]
        scored = m.get("scored", True)  # a model left out of scoring (eval.score_models) has no scores: None
        scores = {k: m["scores"][k] if scored else None for k in columns}
        row |= scores
        row["mean_score"] = sum(scores[k] for k in averaged) / len(averaged) if averaged and scored else None
        device_s = m.get("train_device_s", m["train_wall_s"])
        row |= {"train_tokens": m["train_tokens"], "train_flops": m["train_flops"], "train_wall_s": m["train_wall_s"],
                "device_h": device_s / 3600, "selection_forward_tokens": selection_tokens(m),
                "cost_vs_mixing": m["train_flops"] / mixing_flops if mixing_flops else None}
        row |= _retention_values(summary, name)
        if any("merge_cost" in m for m in summary["methods"].values()):  # a merge's own cost (MergeBench's runtime)
            mc = m.get("merge_cost") or {}
            row |= {"stats_flops": mc.get("stats_flops"), "stats_wall_s": mc.get("stats_wall_s"),
                    "search_wall_s": mc.get("search_wall_s"),
                    "merge_held_MB": mc["held_bytes"] / 1e6 if mc.get("held_bytes") is not None else None}
        out.append(row)
    return out


def _fmt_table(table: pd.DataFrame) -> str:
    fmt = table.copy()
    for col in fmt.columns:
        if col.startswith(("val_ppl", "sel_val_ppl")):
            fmt[col] = fmt[col].map(lambda v: f"{v:.3g}" if v < 1e4 else f"{v:.2e}")
        elif "/" in col or col == "mean_score" or col.startswith("retention_"):
            fmt[col] = fmt[col].map(lambda v: "n/a" if v is None or v != v else f"{v:.3f}")
        elif col == "device_h":
            fmt[col] = fmt[col].map(lambda v: f"{v:.4f}")
        elif col == "train_flops":
            fmt[col] = fmt[col].map(lambda v: f"{v:.3g}")
        elif col == "stats_flops":
            fmt[col] = fmt[col].map(lambda v: "" if v is None or v != v else f"{v:.3g}")
        elif col in ("stats_wall_s", "search_wall_s", "merge_held_MB"):
            fmt[col] = fmt[col].map(lambda v: "" if v is None or v != v else f"{v:.1f}")
        elif col == "train_wall_s":
            fmt[col] = fmt[col].map(lambda v: f"{v:.1f}")
        elif col == "cost_vs_mixing":
            fmt[col] = fmt[col].map(lambda v: "" if v is None else f"{v:.2f}")
    header = "| " + " | ".join(fmt.columns) + " |\n|" + "---|" * len(fmt.columns) + "\n"
    return header + "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in fmt.itertuples(index=False))


def _ci(d: dict[str, Any] | None, key: str = "value", digits: int = 3) -> str:
    if not d:
        return "n/a"
    low, high = d.get("low"), d.get("high")
    value = d.get(key, d.get("diff"))
    sign = "+" if key == "diff" else ""
    text = f"{value:{sign}.{digits}f}"
    if low is None or high is None:
        return text
    return f"{text} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _p_eq(p: float | None) -> str:
    """'p = 0.412' or 'p < 0.001', for sentences."""
    text = _p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def verdict(diff: dict[str, Any] | None, what: str) -> str:
    """One sentence that does not over-claim: the difference, its CI and p, and 'not significant' when the CI
    crosses zero."""
    if not diff:
        return f"{what}: no paired items."
    crosses = diff["low"] is None or diff["high"] is None or diff["low"] <= 0 <= diff["high"]
    judgement = "not significant at the 5% level (the CI crosses 0)" if crosses else (
        "DEM better, significant at the 5% level" if diff["diff"] > 0 else "DEM worse, significant at the 5% level")
    return f"{what}: {_ci(diff, 'diff')} (95% CI), {_p_eq(diff['p_value'])}: {judgement}."


def headline_text(summary: dict[str, Any]) -> str:
    """The report's first lines: DEM vs data mixing on quality (with CIs) and cost."""
    methods = summary["methods"]
    dm, dem = methods["data_mixing"], methods["dem"]
    stats_ = summary.get("statistics") or {}
    paired = (stats_.get("paired") or {}).get("dem - data_mixing") or {}
    lines = [f"**{verdict(paired.get('mean'), 'DEM − data mixing, mean score over tasks')}**"
             if paired else "**DEM − data mixing: no per-sample statistics in this summary.**"]
    lines += [text for text in (_separation_text(paired), _chance_text(summary)) if text]
    ppl = paired.get("val_log_ppl")
    if ppl:
        where = ("the report slice, never used for selection; whole examples resampled within each distribution"
                 if ppl.get("slice") == "report" else "validation blocks")
        lines.append(f"Validation perplexity, DEM ÷ data mixing: {ppl['ratio']:.3g} [{ppl['ratio_low']:.3g}, "
                     f"{ppl['ratio_high']:.3g}] (paired over {where}; {_p_eq(ppl['p_value'])}; below 1 "
                     "favours DEM).")
    train_ratio = summary.get("cost_ratio_train", dem["train_flops"] / dm["train_flops"])
    total = summary.get("cost_ratio")
    lines.append(f"Cost: DEM's training FLOPs are **{train_ratio:.3f}×** data mixing's ({dem['train_flops']:.3g} vs "
                 f"{dm['train_flops']:.3g})" + (f"; {total:.3f}× counting selection compute (search and validation "
                                                 "forward passes, proxies)" if "cost_ratio_train" in summary else "")
                 + ".")
    return "\n\n".join(lines)


def _separation_text(paired: dict[str, Any]) -> str:
    """Which benchmarks separate the arms at this sample size (the paired DEM − data mixing CI excludes 0, i.e.
    significant at 5%) and which are within noise: what a reader of a real-benchmark table needs first."""
    separate, noise = [], []
    for task, d in (paired.get("tasks") or {}).items():
        if d["low"] is None or d["high"] is None or d["low"] <= 0 <= d["high"]:
            noise.append(task)
            continue
        dem_better = (d["diff"] > 0) == d.get("higher_is_better", True)
        separate.append(f"{task} ({'DEM' if dem_better else 'data mixing'} better: {_ci(d, 'diff')}, n = {d['n']})")
    if not separate and not noise:
        return ""
    return ("Benchmarks that separate the arms at this sample size (paired DEM − data mixing, 95% CI excludes 0): "
            + ("; ".join(separate) or "none") + ". Within noise: " + (", ".join(noise) or "none") + ".")


def _chance_text(summary: dict[str, Any]) -> str:
    """Every score at or below its task's chance level (the point estimate; then those above it whose CI still
    reaches it): such a score says nothing about which model is better."""
    chance, up = chance_levels(summary), higher_is_better(summary)
    stats_ = (summary.get("statistics") or {}).get("scores") or {}
    at, covers = [], []
    for col, is_up in up.items():
        task = col.split("/", 1)[0]
        if task not in chance or not is_up:
            continue
        low_models, near_models = [], []
        for name, m in summary["methods"].items():
            s = stats_.get(name, {}).get(task) or {"value": m["scores"].get(col)}
            if s.get("value") is None:
                continue  # not scored
            if s["value"] <= chance[task]:
                low_models.append(f"{name} {s['value']:.3f}")
            elif s.get("low") is not None and s["low"] <= chance[task]:
                near_models.append(name)
        if low_models:
            at.append(f"{task} (chance {chance[task]:.3f}): {', '.join(low_models)}")
        if near_models:
            covers.append(f"{task}: {', '.join(near_models)}")
    if not at and not covers:
        return ""
    text = "⚠ At or below chance (score ≤ chance level): " + ("; ".join(at) or "none") + "."
    return text + (f" Above it, but the 95% CI reaches chance: {'; '.join(covers)}." if covers else "")


def _retained(d: dict[str, Any] | None) -> str:
    """'0.750 [0.600, 0.900]'; 'not run' / 'n/a' where there is no value ('∞' for an unbounded end)."""
    if not d or d.get("value") is None:
        return "not run" if d and str(d.get("note", "")).startswith("not run") else "n/a"
    low, high = (f"{v:.3f}" if v is not None else "∞" for v in (d["ci_low"], d["ci_high"]))
    return f"{d['value']:.3f} [{low}, {high}]"


def _retention_table(summary: dict[str, Any]) -> str:
    """Retention as merging studies report it, one row per model, with 95% CIs over items."""
    ret = summary.get("retention")
    if not ret:
        return ""
    basis = ret["basis"]
    by_task = any(b != "val_ppl" for b in basis.values())  # else the perplexity mean is the mean itself
    columns = [f"{d} ({b})" for d, b in basis.items()] + ["mean (normalised performance)"]
    columns += ["val-ppl mean"] * by_task + ["general"]
    out = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, m in ret["models"].items():
        cells = [_retained(m["in_distribution"].get(d)) for d in basis] + [_retained(m["in_distribution_mean"])]
        cells += [_retained(m.get("in_distribution_ppl_mean"))] * by_task + [_retained(m["general"])]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    general = ", ".join(ret.get("general_tasks", [])) or "none scored"
    return ("## Retention, 95% CI over items\n\n" + ret.get("definition", "") + f". General benchmarks: {general}. "
            "`not run`: the model was left out of scoring.\n\n" + "\n".join(out) + "\n\n")


def _selection_line(name: str, m: dict[str, Any]) -> str:
    sel = m["selected"]
    weights = ", ".join(f"{k}={v:.3f}" for k, v in sel.get("weights", {}).items())
    if "merge" in sel:
        return (f"- `{name}`: merge `{sel['merge']}`, {sel.get('n_trials')} {sel.get('sampler')} trials; "
                f"weights {weights}")
    method = sel.get("method", "grid")
    extra = f", {len(sel['grid'])} grid points" if "grid" in sel else ""
    if method == "regmix":
        extra = f", {sel.get('proxies')} proxies, held-out Spearman ρ {sel.get('held_out_spearman', float('nan')):.2f}"
    return f"- `{name}` ({method}{extra}): mixture {weights}"


def _score_table(summary: dict[str, Any]) -> str:
    stats_ = (summary.get("statistics") or {}).get("scores") or {}
    tasks = list(summary.get("headline_metrics", {}))
    if not stats_ or not tasks:
        return ""
    flagged = (summary.get("contamination") or {}).get("affected") or {}
    header = "| model | " + " | ".join(f"{t} ({summary['headline_metrics'][t]})" + (" ⚠ contaminated" if t in flagged
                                                                                       else "") for t in tasks) + " |\n"
    header += "|---|" + "---|" * len(tasks) + "\n"
    body = "".join("| " + name + " | " + " | ".join(_ci(stats_.get(name, {}).get(t)) for t in tasks) + " |\n"
                   if name in stats_ else f"| {name} |" + " not run |" * len(tasks) + "\n"
                   for name, m in summary["methods"].items() if name in stats_ or not m.get("scored", True))
    chance = chance_levels(summary)
    if chance:
        body += "| chance | " + " | ".join(f"{chance[t]:.3f}" if t in chance else "" for t in tasks) + " |\n"
    return "## Scores, 95% CI over items\n\n" + header + body + "\n"


def _paired_table(summary: dict[str, Any]) -> str:
    paired = (summary.get("statistics") or {}).get("paired") or {}
    if not paired:
        return ""
    out = ["| comparison | task | difference [95% CI] | p (paired bootstrap) | p (McNemar) |", "|---|---|---|---|---|"]
    for name, comp in paired.items():
        for task, d in comp.get("tasks", {}).items():
            lower = "" if d.get("higher_is_better", True) else " (lower is better)"
            out.append(f"| {name} | {task}{lower} | {_ci(d, 'diff')} | {_p(d['p_value'])} | "
                       f"{_p(d.get('mcnemar_p'))} |")
        if comp.get("mean"):
            out.append(f"| {name} | **mean over tasks** | {_ci(comp['mean'], 'diff')} | {_p(comp['mean']['p_value'])} "
                       "| |")
        ppl = comp.get("val_log_ppl")
        if ppl:  # every row has one, scored or not: the comparison a `dem.compare` row without task scores gets
            out.append(f"| {name} | validation perplexity, ratio (below 1 favours the first) | {ppl['ratio']:.3f} "
                       f"[{ppl['ratio_low']:.3f}, {ppl['ratio_high']:.3f}] | {_p(ppl['p_value'])} | |")
    return "## Paired differences against data mixing (same items)\n\n" + "\n".join(out) + "\n\n"


def markdown(summary: dict[str, Any], table: pd.DataFrame) -> str:
    methods = summary["methods"]
    chance = ", ".join(f"{t} {c:.3f}" for t, c in chance_levels(summary).items()) or "n/a (no multiple-choice task)"
    every = summary["task_versions"]  # every task and subtask: a group's 57 subjects would swamp the line
    listed = [t for t in (summary.get("headline_metrics") or every) if every.get(t) is not None]
    versions = ", ".join(f"{t} v{every[t]}" for t in listed) + (
        f" (the {len(every) - len(listed)} subtasks' versions: summary.json)" if len(every) > len(listed) else "")
    method_note = (summary.get("statistics") or {}).get("method", "")
    selections = "\n".join(_selection_line(n, m) for n, m in methods.items()
                           if n == "data_mixing" or n.startswith(("dem", "mixing_")))
    return (
        "# dem-bench comparison\n\n" + headline_text(summary) + "\n\n" + selections + "\n"
        f"- Selection metric: {summary.get('selection_metric', 'pooled_ppl')}\n"
        f"- Chance accuracy: {chance}\n- Task versions: {versions}\n"
        f"- Seed {summary['seed']}, git {summary['provenance']['git_commit']}, "
        f"harness wall time {summary['wall_s']:.0f} s\n"
        + (f"- Statistics: {method_note}\n" if method_note else "") + "\n"
        + _other_code_text(summary) + _score_table(summary) + _paired_table(summary) + _retention_table(summary)
        + _contamination_text(summary)
        + "## All models\n\n"
        + _slices_text(summary) +
        "task columns show each task's headline metric (every metric is in summary.json); `mean_score` is the mean "
        "of the higher-is-better ones" + _excluded_text(summary) + "; `device_h` = device-hours of the arm's "
        "training on " + summary.get("runtime", {}).get("device", "?") + "; `cost_vs_mixing` "
        "= train FLOPs ÷ the data-mixing arm's (all its runs); `base` is the shared starting point (its "
        "pre-training is not counted).\n\n"
        + _fmt_table(table.drop(columns=retention_columns(summary)))  # with their CIs in the retention table
    )


def _contamination_text(summary: dict[str, Any]) -> str:
    """Each (training source, scored task) pair sharing text, and which scores are flagged."""
    c = summary.get("contamination")
    if not c:
        return ""
    rows_ = [(source, task, n) for source, per_task in c["overlap"].items() for task, n in per_task.items()
             if n["dirty"]]
    text = "## Training rows vs scored documents\n\n" + c.get("method", "") + ".\n\n"
    if c.get("affected"):
        text += ("**Flagged scores** (eval.allow_contamination=true; a training source holds their test documents): "
                 + "; ".join(f"{t} ← {', '.join(s)}" for t, s in c["affected"].items()) + "\n\n")
    if not rows_:
        return text + "No scored document shares a 13-gram or its whole text with any training source.\n\n"
    contaminated = {tuple(p) for p in c.get("contaminated", [])}
    lines = ["| source | task | docs | exact | 13-gram | contained | |", "|---|---|---|---|---|---|---|"]
    for source, task, n in rows_:
        note = ("contaminated" if (source, task) in contaminated else
                "built-in (generated from the training templates): reported, not refused"
                if task in c.get("exempt_builtin", []) else "")
        lines.append(f"| {source} | {task} | {n['docs']} | {n['exact']} | {n['ngram']} | {n['contained']} | {note} |")
    return text + "\n".join(lines) + "\n\n"


def _other_code_text(summary: dict[str, Any]) -> str:
    """Models whose numbers come, in part, from cache entries another commit built (the code may have changed)."""
    lines = []
    for name, m in summary["methods"].items():
        other = m.get("built_by_other_commit") or []
        if other:
            commits = sorted({str(e["git_commit"])[:10] if e["git_commit"] else "unrecorded" for e in other})
            kinds = sorted({e["kind"] for e in other})
            lines.append(f"- `{name}`: {len(other)} cached result(s) ({', '.join(kinds)}) built by commit(s) "
                         f"{', '.join(commits)}")
    if not lines:
        return ""
    run = summary.get("provenance", {}).get("git_commit") or "unknown"
    return (f"## Results reused from other code\n\nThis run is commit {run[:10]}; these models reuse cache entries "
            "another commit built (every key names the stage versions that change results, so reuse is safe unless "
            "a change was made without bumping them; summary.json lists each entry):\n\n" + "\n".join(lines)
            + "\n\n")


def _slices_text(summary: dict[str, Any]) -> str:
    """Which validation slice each perplexity column is on."""
    v = summary.get("validation")
    if not v:
        return "`val_ppl` pools the validation sets of all distributions (the set the arms selected on); "
    report = ", ".join(f"{n} {k}" for n, k in v["report"].items())
    selection = ", ".join(f"{n} {k}" for n, k in v["selection"].items())
    return (f"`val_ppl` and `val_ppl/<distribution>` are on the **report slice** ({report} examples), which no "
            f"selection saw; `sel_val_ppl` is on the selection slice ({selection} examples) that DEM's search and "
            "the mixing grid chose on, so it flatters the models chosen on it; ")


def _excluded_text(summary: dict[str, Any]) -> str:
    lower = [c for c, up in higher_is_better(summary).items() if not up]
    return f" (left out, lower is better: {', '.join(lower)})" if lower else ""


def plot(table: pd.DataFrame) -> bytes:
    """Training compute against mean task score, one labelled point per model; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in table.itertuples(index=False):
        if pd.isna(r.mean_score):
            continue  # not scored
        kind = "dem" if r.model.startswith("dem") else r.model  # dem_<merge> rows are DEM merges too
        colour = {"dem": "tab:red", "data_mixing": "tab:blue", "base": "grey"}.get(kind, "tab:green")
        ax.scatter(r.train_flops, r.mean_score, s=60, color=colour)
        ax.annotate(r.model, (r.train_flops, r.mean_score), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("training FLOPs (whole arm)")
    ax.set_ylabel("mean score over eval tasks (headline metric each)")
    ax.set_title("dem-bench: cost vs quality")
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def png_bytes(fig: Any) -> bytes:
    """A finished matplotlib figure as PNG bytes (closed): written atomically by the caller, with the rest."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def render(summary: dict[str, Any]) -> dict[str, bytes]:
    """Every report file's bytes, computed before any is written (a bad summary changes nothing on disk)."""
    check_summary(summary)
    table = pd.DataFrame(rows(summary))
    return {"results.csv": table.to_csv(index=False).encode(), "report.md": markdown(summary, table).encode(),
            "cost_quality.png": plot(table)}


def write_report(summary: dict[str, Any], out_dir: Path) -> None:
    """Render everything first, then write each file atomically; summary.json last (it marks the run complete)."""
    files = render(summary)
    for name, data in files.items():
        write_atomic(out_dir / name, data)
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
