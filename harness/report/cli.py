"""`dem-bench-report`: rebuild one comparison's report from its summary.json, or aggregate several comparisons.
Kept apart from comparison.py and aggregate.py so neither imports the other's caller."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.errors import HarnessError
from harness.report.aggregate import main_aggregate
from harness.report.comparison import render, write_atomic
from harness.report.contract import SummaryError


def main(argv: list[str] | None = None) -> None:
    """`dem-bench-report RUN_DIR`: rebuild results.csv, report.md and cost_quality.png from RUN_DIR/summary.json.
    `dem-bench-report SWEEP_DIR` (or several run folders): one aggregate table over the runs — mean ± 95% CI
    across seeds, win/tie/loss of DEM vs mixing, cost — as aggregate.md/.csv/.tex and cost_quality.png."""
    parser = argparse.ArgumentParser(prog="dem-bench-report", description=main.__doc__)
    parser.add_argument("paths", type=Path, nargs="+", metavar="FOLDER",
                        help="a comparison's output folder (holds summary.json), a sweep folder, or several runs")
    parser.add_argument("--out", type=Path, help="where the aggregate files go (default: the sweep folder)")
    parser.add_argument("--wandb", choices=("disabled", "offline", "online"),
                        help="log the aggregate table to W&B (default: the runs' tracking.mode)")
    args = parser.parse_args(argv)
    if len(args.paths) == 1 and (args.paths[0] / "summary.json").exists():
        _rebuild(args.paths[0])
        return
    try:
        out = main_aggregate(args.paths, args.out, wandb_mode=args.wandb)
    except (HarnessError, OSError) as err:
        print(f"dem-bench-report: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    print(f"dem-bench-report: wrote aggregate.md, aggregate.csv, aggregate.tex, cost_quality.png to {out}")


def _rebuild(run_dir: Path) -> None:
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text())
        files = render(summary)
        for name, data in files.items():
            write_atomic(run_dir / name, data)
    except SummaryError as err:
        print(f"dem-bench-report: cannot rebuild from {path}: {err}", file=sys.stderr)
        sys.exit(2)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        print(f"dem-bench-report: cannot rebuild from {path}: {type(err).__name__}: {' '.join(str(err).split())}",
              file=sys.stderr)
        sys.exit(2)
    print(f"dem-bench-report: wrote report.md, results.csv, cost_quality.png to {run_dir.resolve()}")
