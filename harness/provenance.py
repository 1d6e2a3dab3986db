"""What a run needs to be reproduced: package versions, git commit, interpreter and machine."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "lm_eval", "optuna", "hydra-core", "wandb",
            "safetensors", "pandas", "numpy")
REPO = Path(__file__).resolve().parent.parent


def version(pkg: str) -> str | None:
    try:
        return _installed(pkg)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def collect() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "packages": {p: version(p) for p in PACKAGES},
    }
