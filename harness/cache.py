"""Run cache: every expensive result is stored under cache_dir, keyed by a hash of everything that
determines it, so a rerun (or a resumed, interrupted run) reuses finished work instead of redoing it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Bump when a change to the code changes what a cached entry would contain.
CACHE_VERSION = 1


def spec_key(kind: str, spec: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able spec (sorted keys, so dict order never matters)."""
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    path: Path  # folder holding record.json and whatever the builder wrote (weights, tokenizer, …)
    record: dict[str, Any]
    hit: bool  # True when reused from an earlier run


class RunCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()

    def get_or_create(self, kind: str, spec: dict[str, Any], build: Callable[[Path], dict[str, Any]],
                      label: str = "") -> Entry:
        """Return the finished entry for (kind, spec), building it with `build(tmp_dir) -> record` if absent.

        The builder writes into a private temporary folder that is renamed into place only after the record
        is written, so a crash never leaves an entry that looks finished.
        """
        key = spec_key(kind, spec)
        final = self.root / kind / key
        name = f"{kind}/{key}" + (f" ({label})" if label else "")
        if (final / "record.json").exists():
            log.info("cache hit %s: reusing finished result", name)
            return Entry(final, json.loads((final / "record.json").read_text()), hit=True)
        tmp = self.root / kind / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        log.info("cache miss %s: computing", name)
        record = {**build(tmp), "key": key, "spec": spec}
        (tmp / "record.json").write_text(json.dumps(record, indent=2, default=str))
        shutil.rmtree(final, ignore_errors=True)  # a folder without record.json is debris, never a result
        os.replace(tmp, final)
        return Entry(final, record, hit=False)
