"""Report files from a comparison's summary: results.csv, report.md and cost_quality.png.

`dem-bench-report RUN_DIR` rebuilds them from RUN_DIR/summary.json alone, so tables can be regenerated
(or restyled) without re-running anything.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import HarnessError


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


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per model: perplexities, task scores, cost (FLOPs relative to the mixing arm)."""
    mixing_flops = summary["methods"]["data_mixing"]["train_flops"]
    columns = score_columns(summary)
    out = []
    for name, m in summary["methods"].items():
        row: dict[str, Any] = {"model": name, "val_ppl": m["val_ppl"]}
        row |= {f"val_ppl/{d}": v for d, v in m["val_ppl_by_dist"].items()}
        scores = {k: m["scores"][k] for k in columns}
        row |= scores
        row["mean_score"] = sum(scores.values()) / len(scores) if scores else None
        device_s = m.get("train_device_s", m["train_wall_s"])
        row |= {"train_tokens": m["train_tokens"], "train_flops": m["train_flops"], "train_wall_s": m["train_wall_s"],
                "device_h": device_s / 3600, "search_forward_tokens": m["search_forward_tokens"],
                "cost_vs_mixing": m["train_flops"] / mixing_flops if mixing_flops else None}
        out.append(row)
    return out


def markdown(summary: dict[str, Any], table: pd.DataFrame) -> str:
    fmt = table.copy()
    for col in fmt.columns:
        if col.startswith("val_ppl"):
            fmt[col] = fmt[col].map(lambda v: f"{v:.3g}" if v < 1e4 else f"{v:.2e}")
        elif "/" in col or col == "mean_score":
            fmt[col] = fmt[col].map(lambda v: f"{v:.3f}")
        elif col == "device_h":
            fmt[col] = fmt[col].map(lambda v: f"{v:.4f}")
        elif col == "train_flops":
            fmt[col] = fmt[col].map(lambda v: f"{v:.3g}")
        elif col == "train_wall_s":
            fmt[col] = fmt[col].map(lambda v: f"{v:.1f}")
        elif col == "cost_vs_mixing":
            fmt[col] = fmt[col].map(lambda v: "" if v is None else f"{v:.2f}")
    header = "| " + " | ".join(fmt.columns) + " |\n|" + "---|" * len(fmt.columns) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in fmt.itertuples(index=False))
    dm, dem = summary["methods"]["data_mixing"], summary["methods"]["dem"]
    chance = ", ".join(f"{t} {c:.3f}" for t, c in summary["chance"].items()) or "n/a (stock tasks)"
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
        "`val_ppl` pools the validation sets of all distributions; task columns show each task's headline metric "
        "(every metric is in summary.json); `mean_score` is their mean; `device_h` = device-hours of the arm's "
        "training on " + summary.get("runtime", {}).get("device", "?") + "; `cost_vs_mixing` "
        "= train FLOPs ÷ the data-mixing arm's (all grid points); `base` is the shared starting point (its "
        "pre-training is not counted).\n\n"
        + header + body
    )


def plot(table: pd.DataFrame) -> bytes:
    """Training compute against mean task score, one labelled point per model; PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in table.itertuples(index=False):
        kind = "dem" if r.model.startswith("dem") else r.model  # dem_<merge> rows are DEM merges too
        colour = {"dem": "tab:red", "data_mixing": "tab:blue", "base": "grey"}.get(kind, "tab:green")
        ax.scatter(r.train_flops, r.mean_score, s=60, color=colour)
        ax.annotate(r.model, (r.train_flops, r.mean_score), textcoords="offset points", xytext=(6, 4), fontsize=9)
    ax.set_xlabel("training FLOPs (whole arm)")
    ax.set_ylabel("mean score over eval tasks (headline metric each)")
    ax.set_title("dem-bench: cost vs quality")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


REQUIRED = ("train_tokens", "train_flops", "train_wall_s", "search_forward_tokens", "val_ppl", "val_ppl_by_dist",
            "scores", "selected")


class SummaryError(HarnessError, ValueError):
    """A summary.json that lacks what the report needs; nothing is written."""


def check_summary(summary: Any) -> None:
    """The contract fields the report reads, each named when missing (so no report file is half rebuilt)."""
    if not isinstance(summary, dict) or not isinstance(summary.get("methods"), dict):
        raise SummaryError("missing 'methods'")
    for name in ("data_mixing", "dem"):
        if name not in summary["methods"]:
            raise SummaryError(f"missing 'methods.{name}'")
    for name, m in summary["methods"].items():
        for field in REQUIRED:
            if not isinstance(m, dict) or field not in m:
                raise SummaryError(f"missing 'methods.{name}.{field}'")
    for field in ("cost_ratio", "chance", "seed", "provenance", "wall_s"):
        if field not in summary:
            raise SummaryError(f"missing '{field}'")


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


def main(argv: list[str] | None = None) -> None:
    """`dem-bench-report RUN_DIR`: rebuild results.csv, report.md and cost_quality.png from summary.json."""
    parser = argparse.ArgumentParser(prog="dem-bench-report", description=main.__doc__)
    parser.add_argument("run_dir", type=Path, help="a comparison's output folder (holds summary.json)")
    args = parser.parse_args(argv)
    path = args.run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        files = render(summary)
        for name, data in files.items():
            write_atomic(args.run_dir / name, data)
    except SummaryError as err:
        print(f"dem-bench-report: cannot rebuild from {path}: {err}", file=sys.stderr)
        sys.exit(2)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        print(f"dem-bench-report: cannot rebuild from {path}: {type(err).__name__}: {' '.join(str(err).split())}",
              file=sys.stderr)
        sys.exit(2)
    print(f"dem-bench-report: wrote report.md, results.csv, cost_quality.png to {args.run_dir.resolve()}")
