"""Weights & Biases tracking. Offline by default (no network, no login: `wandb sync` uploads later);
the project's own summary.json stays the source of truth, since wandb cannot read offline runs back."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Tracker:
    """One W&B run per comparison; every method is a no-op when tracking.mode is `disabled`."""

    def __init__(self, mode: str, project: str, out_dir: Path, config: dict[str, Any], group: str | None = None,
                 job_type: str | None = None) -> None:
        """`group`/`job_type`: a sweep's jobs share one W&B group (the sweep folder's name); the job type says
        which swept values this job ran (W&B caps it at 64 characters)."""
        self.run = None
        if mode == "disabled":
            return
        import wandb  # heavy import, only when tracking is on

        self._wandb = wandb
        self.run = wandb.init(project=project, mode=mode, dir=str(out_dir), config=config, group=group,
                              job_type=job_type[:64] if job_type else None,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run:
            self.run.log(metrics)

    def finish(self, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
        """Log the results table and headline numbers, then close the run."""
        if not self.run:
            return
        columns = sorted({k for r in rows for k in r}, key=lambda k: (k != "model", k))
        table = self._wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
        self.run.log({"results": table})
        self.run.summary.update(summary)
        self.run.finish()
