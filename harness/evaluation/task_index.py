"""lm-eval's index of stock tasks, groups and tags, kept on disk between processes.

Building it parses ~14,000 YAML files (13 s on the 2-core development machine), and every process that checks a
stock task name paid that: a config check, `plan_only`, each job of a sweep. The index is plain data (lm-eval parses
the YAML without resolving functions), so it is stored as JSON, keyed by lm-eval's version and the size and mtime
of every task file, and rebuilt whenever one differs. lm-eval has no such cache of its own; evaluation itself still
builds lm-eval's TaskManager (tasks.stock_manager), which needs its own index anyway.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the stored layout changes


def default_dir() -> Path:
    """Where the index is kept: $XDG_CACHE_HOME/dem-bench (~/.cache/dem-bench), beside other tools' caches."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dem-bench"


def tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent


def fingerprint(root: Path) -> str:
    """sha256 over lm-eval's version and every task YAML's relative path, size and mtime (a stat each, no reads)."""
    digest = hashlib.sha256(f"{FORMAT}\0{version('lm_eval')}\0{root}\n".encode())
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".yaml"):
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _encode(entry: Any) -> dict[str, Any]:
    return {"name": entry.name, "kind": entry.kind.name, "cfg": entry.cfg, "tags": sorted(entry.tags),
            "yaml_path": None if entry.yaml_path is None else str(entry.yaml_path)}


def _decode(d: dict[str, Any]) -> Any:
    from lm_eval.tasks._index import Entry, Kind

    return Entry(name=d["name"], kind=Kind[d["kind"]], cfg=d["cfg"], tags=set(d["tags"]),
                 yaml_path=None if d["yaml_path"] is None else Path(d["yaml_path"]))


def load_or_build(cache_dir: Path | None = None) -> dict[str, Any]:
    """{name: lm-eval Entry} as `TaskManager().task_index` holds it: read from `cache_dir` when its key matches,
    else built with lm-eval's own `TaskIndex.build` and stored (atomically; a folder that cannot be written only
    costs the next process the build). A stored index is used only if it decodes; a damaged one is rebuilt."""
    from lm_eval.tasks._index import TaskIndex

    root = tasks_root()
    folder = Path(cache_dir) if cache_dir is not None else default_dir()
    path = folder / f"lm_eval_index-{fingerprint(root)}.json"
    try:
        return {name: _decode(d) for name, d in json.loads(path.read_text()).items()}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("%s: unreadable (%s); rebuilding lm-eval's task index", path, type(err).__name__)
    index = TaskIndex.build([root])
    blob = json.dumps({name: _encode(entry) for name, entry in index.items()})
    if {name: _decode(d) for name, d in json.loads(blob).items()} != index:  # stored only if it reads back the same
        log.warning("lm-eval's task index does not survive JSON; not stored")
        return index
    tmp = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".tmp-", suffix=".json", delete=False) as f:
            tmp = f.name
            f.write(blob)
        os.replace(tmp, path)
        for old in folder.glob("lm_eval_index-*.json"):  # indexes of other lm-eval versions or task files
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        log.info("lm-eval's task index not stored in %s: %s", folder, err)
    return index


@functools.cache
def stock_index() -> dict[str, Any]:
    """The index for this process: once per process, from disk after the first process built it."""
    return load_or_build()
