"""What a run needs to be reproduced: package versions, git commit, interpreter and machine."""

from __future__ import annotations

import functools
import platform
import subprocess
from collections.abc import Iterable, Mapping
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


@functools.cache
def code() -> dict[str, Any]:
    """The code this process runs: git commit, whether the tree was dirty, package versions. Read once, at the
    first call (a run calls it as it starts), so a commit made while it runs is not taken for the code it ran.
    Every cache entry records it as `built_by`."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": {p: version(p) for p in PACKAGES},
    }


def collect() -> dict[str, Any]:
    return {
        **code(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def other_code(records: Iterable[Mapping[str, Any]], commit: str | None) -> list[dict[str, Any]]:
    """The cache entries among `records` built by another commit than `commit` (an entry from before entries
    recorded their commit counts as another), each as {kind, key, git_commit, git_dirty}; a dirty tree's
    changes cannot be told apart, so entries built from one are listed only when the commit differs."""
    out, seen = [], set()
    for r in records:
        built = r.get("built_by") or {}
        kind = r.get("kind", "?")
        if built.get("git_commit") != commit and r.get("key") not in seen:
            seen.add(r.get("key"))
            out.append({"kind": kind, "key": r.get("key"), "git_commit": built.get("git_commit"),
                        "git_dirty": built.get("git_dirty")})
    return out
