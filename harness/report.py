"""Report files from a comparison's summary: results.csv, report.md and cost_quality.png.

`dem-bench-report RUN_DIR` rebuilds them from RUN_DIR/summary.json alone, so tables can be regenerated
(or restyled) without re-running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written result."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model: perplexities, task scores, cost (FLOPs relative to the mixing arm)."""
    mixing_flops = summary["methods"]["data_mixing"]["train_flops"]
    out = []
    for name, m in summary["methods"].items():
        row: dict[str, Any] = {"model": name, "val_ppl": m["val_ppl"]}
        row |= {f"val_ppl/{d}": v for d, v in m["val_ppl_by_dist"].items()}
        accs = {k: v for k, v in m["scores"].items() if k.endswith("/acc")}
        row |= accs
        row["mean_acc"] = sum(accs.values()) / len(accs) if accs else None
        row |= {"train_tokens": m["train_tokens"], "train_flops": m["train_flops"], "train_wall_s": m["train_wall_s"],
                "search_forward_tokens": m["search_forward_tokens"],
                "cost_vs_mixing": m["train_flops"] / mixing_flops if mixing_flops else None}
        out.append(row)
    return out


def markdown(summary: dict[str, Any], table: pd.DataFrame) -> str:
    fmt = table.copy()
    for col in fmt.columns:
        if col.startswith("val_ppl"):
            fmt[col] = fmt[col].map(lambda v: f"{v:.3g}" if v < 1e4 else f"{v:.2e}")
        elif col.endswith("acc"):
            fmt[col] = fmt[col].map(lambda v: f"{v:.3f}")
        elif col == "train_flops":
            fmt[col] = fmt[col].map(lambda v: f"{v:.3g}")
        elif col == "train_wall_s":
            fmt[col] = fmt[col].map(lambda v: f"{v:.1f}")
        elif col == "cost_vs_mixing":
            fmt[col] = fmt[col].map(lambda v: "" if v is None else f"{v:.2f}")
    header = "| " + " | ".join(fmt.columns) + " |\n|" + "---|" * len(fmt.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in fmt.itertuples(index=False))
    dm, dem = summary["methods"]["data_mixing"], summary["methods"]["dem"]
    chance = ", ".join(f"{t} {c:.3f}" for t, c in summary["chance"].items())
    versions = ", ".join(f"{t} v{v}" for t, v in summary["task_versions"].items())
    return (
        "# dem-bench comparison\n\n"
        f"DEM's training FLOPs ÷ data mixing's: **{summary['cost_ratio']:.3f}** "
        f"({dem['train_flops']:.3g} vs {dm['train_flops']:.3g}); pooled validation perplexity: "
        f"DEM {dem['val_ppl']:.3g}, best mixture {dm['val_ppl']:.3g}.\n\n"
        f"- Best mixture (of {len(dm['selected']['grid'])} grid points): {dm['selected']['weights']}\n"
        f"- DEM weights ({dem['selected']['n_trials']} {dem['selected']['sampler']} trials, "
        f"merge `{dem['selected']['merge']}`): "
        + ", ".join(f"{k}={v:.3f}" for k, v in dem["selected"]["weights"].items()) + "\n"
        f"- Chance accuracy: {chance}\n- Task versions: {versions}\n"
        f"- Seed {summary['seed']}, git {summary['provenance']['git_commit']}, "
        f"harness wall time {summary['wall_s']:.0f} s\n\n"
        "`val_ppl` pools the validation sets of all distributions; `cost_vs_mixing` = train FLOPs ÷ the data-mixing "
        "arm's (all grid points); `base` is the shared starting point (its pre-training is not counted).\n\n"
        + header + body
    )


def plot(table: pd.DataFrame, path: Path) -> None:
    """Training compute against mean task accuracy, one labelled point per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in table.itertuples(index=False):
        kind = "dem" if r.model.startswith("dem") else r.model  # dem_<merge> rows are DEM merges too
        colour = {"dem": "tab:red", "data_mixing": "tab:blue", "base": "grey"}.get(kind, "tab:green")
        ax.scatter(r.train_flops, r.mean_acc, s=60, color=colour)
        ax.annotate(r.model, (r.train_flops, r.mean_acc), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("training FLOPs (whole arm)")
    ax.set_ylabel("mean accuracy over eval tasks")
    ax.set_title("dem-bench: cost vs quality")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(summary: dict[str, Any], out_dir: Path) -> None:
    """summary.json last: its presence marks the report complete."""
    table = pd.DataFrame(rows(summary))
    write_atomic(out_dir / "results.csv", table.to_csv(index=False))
    write_atomic(out_dir / "report.md", markdown(summary, table))
    plot(table, out_dir / "cost_quality.png")
    write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))


def main(argv: list[str] | None = None) -> None:
    """`dem-bench-report RUN_DIR`: rebuild results.csv, report.md and cost_quality.png from summary.json."""
    parser = argparse.ArgumentParser(prog="dem-bench-report", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a comparison's output folder (holds summary.json)")
    args = parser.parse_args(argv)
    path = args.run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        write_report(summary, args.run_dir)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        print(f"dem-bench-report: cannot rebuild from {path}: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"dem-bench-report: wrote report.md, results.csv, cost_quality.png to {args.run_dir.resolve()}")
