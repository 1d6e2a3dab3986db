"""Run cache: every expensive result is stored under cache_dir, keyed by a hash of everything that determines it, so
a rerun (or a resumed, interrupted run) reuses finished work instead of redoing it.

Three guarantees, because a benchmark's worst failure is a result that is silently wrong:
* **Whole or absent.** A builder writes into a private temporary folder that is renamed into place only after its
  record is written; a killed build leaves debris that the next build of that key removes, never an entry.
* **Verified before use.** The record lists a sha256 of every file the builder wrote, and carries a hash of
  itself. A hit is verified once per process (≈1–2 GB/s); a torn record or a changed, truncated or missing file
  is never used: the entry is rebuilt, with one warning line naming the file.
* **Traceable.** Each record names the code that built it (`built_by`: git commit, dirty tree, package versions),
  so a report can list results reused from other code; a stage whose results change meaning bumps its version
  constant, which is part of its keys (data/tokens.py TOKENIZE_VERSION, runs/spec.py TRAIN_VERSION, …).
* **Built once.** Building a key holds a file lock (`filelock`, an OS lock the kernel releases when its process
  dies, so a killed holder's lock is simply taken over); a second process that needs the same entry waits and
  then reuses it. Processes on several machines can share one cache folder on a filesystem with POSIX locks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.runs import provenance

log = logging.getLogger(__name__)

# Bump when a change to the code changes what a cached entry would contain.
CACHE_VERSION = 1
RECORD = "record.json"


def spec_key(kind: str, spec: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able spec (sorted keys, so dict order never matters)."""
    blob = json.dumps({"kind": kind, "version": CACHE_VERSION, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _missing(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet."""
    out = []
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


class CorruptEntry(ValueError):
    """A cached entry whose record or files do not match what was written; the message names the file."""


@dataclass(frozen=True)
class Entry:
    path: Path  # folder holding record.json and whatever the builder wrote (weights, tokenizer, …)
    record: dict[str, Any]
    hit: bool  # True when reused from an earlier run


def read_entry(folder: Path) -> dict[str, Any]:
    """The record of a finished entry after checking it and every file it lists; CorruptEntry otherwise."""
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptEntry(f"{folder / RECORD}: unreadable ({type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("record_sha256") != _record_hash(record):
        raise CorruptEntry(f"{folder / RECORD}: does not match its own hash (edited or torn)")
    for name, expected in record.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise CorruptEntry(f"{file}: missing")
        if sha256_file(file) != expected:
            raise CorruptEntry(f"{file}: sha256 differs from the one recorded when it was written")
    return record


class RunCache:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()
        self._verified: dict[Path, dict[str, Any]] = {}  # entries checked by this process: hashed once per run

    def records_of(self, key: str) -> list[dict[str, Any]]:
        """The records of entries with this key that this process has used (a merged model's search, say)."""
        return [r for r in self._verified.values() if r.get("key") == key]

    def get(self, kind: str, key: str) -> Entry | None:
        """A finished entry by key, verified (None if absent or corrupt): how a job reads what another wrote."""
        record = self._finished(kind, key)
        return Entry(self.root / kind / key, record, hit=True) if record is not None else None

    def has(self, kind: str, spec: dict[str, Any]) -> bool:
        """Whether a finished entry exists (for the plan; get_or_create verifies before it uses one)."""
        return (self.root / kind / spec_key(kind, spec) / RECORD).exists()

    def _finished(self, kind: str, key: str, locked: bool = False) -> dict[str, Any] | None:
        """The verified record of a finished entry; None if absent or corrupt. Only a caller holding the key's
        lock removes a corrupt entry (reported in one line), so no process can remove one just rebuilt."""
        folder = self.root / kind / key
        if folder in self._verified:
            return self._verified[folder]
        if not (folder / RECORD).exists():
            return None
        try:
            record = read_entry(folder)
        except CorruptEntry as err:
            if locked:
                log.warning("cache: %s; rebuilding %s/%s", err, kind, key)
                shutil.rmtree(folder, ignore_errors=True)
            return None
        self._verified[folder] = record
        return record

    def _lock(self, kind: str, key: str, label: str) -> FileLock:
        (self.root / kind).mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.root / kind / f".{key}.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("cache: waiting for %s/%s%s: another process is building it", kind, key,
                     f" ({label})" if label else "")
            lock.acquire()
        return lock

    @contextlib.contextmanager
    def hold(self, kind: str, key: str, label: str = "") -> Iterator[None]:
        """Hold the lock of (kind, key) without building an entry: for a resource several entries share (one
        Optuna study answers searches of several trial budgets), so one process at a time works on it."""
        lock = self._lock(kind, key, label)
        try:
            yield
        finally:
            lock.release()

    def _remove_debris(self, kind: str, key: str) -> None:
        """Temporary folders of builds of this key that died (we hold its lock, so none is alive)."""
        for tmp in (self.root / kind).glob(f".{key}.tmp-*"):
            log.warning("cache: removing %s, left by an interrupted build", tmp)
            shutil.rmtree(tmp, ignore_errors=True)

    def get_or_create(self, kind: str, spec: dict[str, Any], build: Callable[[Path], dict[str, Any]],
                      label: str = "") -> Entry:
        """Return the finished entry for (kind, spec), building it with `build(tmp_dir) -> record` if absent.

        The builder writes into a private temporary folder that is renamed into place only after the record
        (with the sha256 of every file written) is, so a crash never leaves an entry that looks finished.
        """
        key = spec_key(kind, spec)
        final = self.root / kind / key
        name = f"{kind}/{key}" + (f" ({label})" if label else "")
        record = self._finished(kind, key)
        if record is None:
            fresh = _missing(self.root / kind)  # folders this call creates: removed again if its build fails
            lock = self._lock(kind, key, label)
            try:
                record = self._finished(kind, key, locked=True)  # another process may have finished it meanwhile
                if record is None:
                    self._remove_debris(kind, key)
                    log.info("cache miss %s: computing", name)
                    try:
                        record = self._build(kind, key, spec, build)
                    except BaseException:
                        self._discard_failed(kind, key, fresh)
                        raise
                    self._verified[final] = record
                    return Entry(final, record, hit=False)
            finally:
                lock.release()
        log.info("cache hit %s: reusing finished result", name)
        return Entry(final, record, hit=True)

    def _discard_failed(self, kind: str, key: str, fresh: list[Path]) -> None:
        """A build that raised leaves nothing behind: its temporary folder goes, and when this call created the
        kind's folder (so no other process can have been waiting on this key's lock), the lock and the folders."""
        shutil.rmtree(self._tmp(kind, key), ignore_errors=True)
        if fresh:
            (self.root / kind / f".{key}.lock").unlink(missing_ok=True)
            for folder in sorted(fresh, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):  # not empty: another build has started there meanwhile
                    folder.rmdir()

    def _tmp(self, kind: str, key: str) -> Path:
        return self.root / kind / f".{key}.tmp-{socket.gethostname()}-{os.getpid()}"

    def _build(self, kind: str, key: str, spec: dict[str, Any], build: Callable[[Path], dict[str, Any]]
               ) -> dict[str, Any]:
        tmp = self._tmp(kind, key)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        record = {**build(tmp), "key": key, "kind": kind, "spec": spec, "built_by": provenance.code()}
        record["files"] = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        record["record_sha256"] = _record_hash(record)
        (tmp / RECORD).write_text(json.dumps(record, indent=2, default=str))
        final = self.root / kind / key
        shutil.rmtree(final, ignore_errors=True)  # a folder without a valid record is debris, never a result
        os.replace(tmp, final)
        return json.loads((final / RECORD).read_text())  # exactly what a later hit reads (JSON-normalised)
