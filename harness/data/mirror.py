"""Hub mirror: serve every hub dataset the harness or lm-eval asks for from a local folder (offline clusters).

Layout: `DIR/<dataset path>/<config name, or "default">/<split>.<jsonl|parquet|json|csv>`, each file holding the
hub dataset's own rows and field names, e.g. `DIR/cais/mmlu/abstract_algebra/test.jsonl`.

lm-eval's tasks call `datasets.load_dataset(path=..., name=..., **dataset_kwargs)` with no hook to redirect them,
so inside `hub_mirror(DIR)` that one module attribute is swapped for a wrapper: a hub id is answered from the
mirror's files through the packaged `json`/`parquet`/`csv` builders, and everything else (local files and folders,
packaged builders, URLs) passes through untouched. A whole-dataset load (no `split=`, as lm-eval does) returns every
split file the folder holds; indexing a split it lacks raises MirrorError naming the file expected.

The mirror holds rows as `load_dataset` returned them, so kwargs that say which raw files to read or how to parse
them (`revision`, `data_dir`, `data_files`, builder options such as `column_names`) and access kwargs
(`trust_remote_code`, `token`) are dropped; generic ones (`features`, `streaming`, `cache_dir`, …) are kept.
`fill` writes a mirror with the same selecting kwargs the consumer passes, so both see the same rows.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.errors import ConfigError

EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# load_dataset kwargs that mean the same for a mirror file as for the hub; all others are dropped for a mirror file
GENERIC_KWARGS = frozenset({"cache_dir", "features", "download_config", "download_mode", "verification_mode",
                            "keep_in_memory", "save_infos", "streaming", "num_proc", "storage_options"})
ACCESS_KWARGS = frozenset({"trust_remote_code", "token"})  # how to reach the hub, not which rows
_ACTIVE: list[Path] = []  # the mirrors of the open hub_mirror blocks, innermost last
_REAL: dict[str, Callable[..., Any]] = {}  # datasets' own load_dataset while the wrapper is installed


class MirrorError(ConfigError):
    """A dataset or split the mirror does not hold; the message names the exact file expected (one line, exit 2)."""


def _packaged() -> set[str]:
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return set(_PACKAGED_DATASETS_MODULES)


def is_hub_id(path: str) -> bool:
    """True for `owner/name` or `name` hub ids; False for local files/folders, packaged builders and URLs."""
    return (path not in _packaged() and "://" not in path and path.count("/") <= 1 and not path.endswith(".py")
            and not path.startswith((".", "/", "~")) and not os.path.exists(path))


def dataset_dir(root: Path, path: str, name: str | None) -> Path:
    return Path(root) / path / (name or "default")


def split_file(root: Path, path: str, name: str | None, split: str) -> Path | None:
    """The mirror's file for one split, or None when it has none."""
    folder = dataset_dir(root, path, name)
    return next((folder / f"{split}{ext}" for ext in EXTENSIONS if (folder / f"{split}{ext}").is_file()), None)


def expected_file(root: Path, path: str, name: str | None, split: str) -> Path:
    """The file a missing split should be written to (JSON Lines, the format the README snippet writes)."""
    return dataset_dir(root, path, name) / f"{split}.jsonl"


def missing(root: Path, path: str, name: str | None, split: str, why: str = "") -> MirrorError:
    """The one-line error for a split the mirror lacks; `why` says who needs it (e.g. the task)."""
    what = f"'{path}'" + (f" config '{name}'" if name else "") + f" split '{split}'"
    return MirrorError(f"hub_mirror: missing {expected_file(root, path, name, split)} (or .parquet/.json/.csv) "
                       f"for dataset {what}" + (f", needed by {why}" if why else ""))


def check(root: Path, path: str, name: str | None, splits: Sequence[str], why: str = "") -> None:
    """Raise MirrorError naming the first split of (path, name) the mirror lacks."""
    for split in splits:
        if split_file(root, path, name, split) is None:
            raise missing(root, path, name, split, why)


def mirrored_splits(root: Path, path: str, name: str | None) -> dict[str, Path]:
    """Every split file the mirror holds for (path, name)."""
    folder = dataset_dir(root, path, name)
    if not folder.is_dir():
        return {}
    return {f.stem: f for f in sorted(folder.iterdir()) if f.suffix in EXTENSIONS and f.is_file()}


def selecting_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The load_dataset kwargs that choose which rows a hub id yields (data_files, revision, builder options)."""
    return {k: v for k, v in kwargs.items() if k not in GENERIC_KWARGS | ACCESS_KWARGS}


def split_names(split: Any) -> list[str]:
    """The split files a `split=` argument reads: "test", "train[:100]", "train[:10%]+test", a list of those."""
    if split is None:
        return []
    if isinstance(split, (list, tuple)):
        return [n for s in split for n in split_names(s)]
    return [part.split("[")[0].strip() for part in str(split).split("+")]


@functools.cache
def _dataset_dict(iterable: bool) -> type:
    """A (Iterable)DatasetDict whose missing split raises MirrorError naming the file, not a bare KeyError."""
    import datasets

    base = datasets.IterableDatasetDict if iterable else datasets.DatasetDict

    def __missing__(self, split: str) -> Any:  # dict's hook for an absent key
        where = getattr(self, "mirror_where", None)
        if where is None:
            raise KeyError(split)
        raise missing(*where, str(split))

    return type(f"Mirrored{base.__name__}", (base,), {"__missing__": __missing__})


def load_from_mirror(root: Path, real_load: Callable[..., Any], path: str, name: str | None = None,
                     split: Any = None, **kwargs: Any) -> Any:
    """`load_dataset(path, name, split=…)` answered from the mirror's files (same return type as datasets)."""
    files = mirrored_splits(root, path, name)
    kwargs = {k: v for k, v in kwargs.items() if k in GENERIC_KWARGS}
    wanted = list(files) if split is None or str(split) == "all" else split_names(split)
    for s in wanted or ["test"]:  # an empty folder: name the split lm-eval reads most
        if s not in files:
            raise missing(root, path, name, s)

    def read(splits: list[str], spec: Any) -> Any:
        builders = {EXTENSIONS[files[s].suffix] for s in splits}
        if len(builders) > 1:
            raise MirrorError(f"hub_mirror: {dataset_dir(root, path, name)} holds splits {', '.join(splits)} in "
                              f"different formats ({', '.join(sorted(builders))}); use one format for them")
        return real_load(builders.pop(), data_files={s: str(files[s]) for s in splits}, split=spec, **kwargs)

    if split is not None and str(split) != "all":
        return read(wanted, split)
    # Whole dataset: one split at a time, so each split may have its own format and its own inferred schema.
    parts = {s: read([s], s) for s in wanted}
    out = _dataset_dict(kwargs.get("streaming", False))(parts)
    out.mirror_where = (root, path, name)
    return out


def _wrapper(real: Callable[..., Any]) -> Callable[..., Any]:
    """`datasets.load_dataset` with hub ids served by the innermost active mirror; a plain call when none is."""
    signature = inspect.signature(real)

    @functools.wraps(real)
    def load_dataset(*args: Any, **kwargs: Any) -> Any:
        if not _ACTIVE:  # a module that kept a reference after the block ended
            return real(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        call = {k: v for k, v in bound.arguments.items() if k != "config_kwargs"}
        call.update(bound.arguments.get("config_kwargs", {}))
        if not is_hub_id(str(call["path"])):
            return real(*args, **kwargs)
        return load_from_mirror(_ACTIVE[-1], real, str(call.pop("path")), call.pop("name", None), **call)

    return load_dataset


def load(root: str | os.PathLike, path: str, name: str | None = None, split: Any = None, **kwargs: Any) -> Any:
    """Read (path, name) from the mirror directly, without patching anything (for code that knows it is offline)."""
    import datasets

    real = _REAL.get("load_dataset", datasets.load_dataset)
    return load_from_mirror(Path(root).resolve(), real, path, name, split, **kwargs)


@contextlib.contextmanager
def hub_mirror(root: str | os.PathLike | None) -> Iterator[None]:
    """Within this block, `datasets.load_dataset` serves hub ids from `root` (no-op when root is None).

    Blocks nest (the innermost mirror wins); the original function is restored when the outermost block ends.
    """
    if root is None:
        yield
        return
    import datasets

    if not _ACTIVE:
        _REAL["load_dataset"] = datasets.load_dataset
        datasets.load_dataset = _wrapper(datasets.load_dataset)
    _ACTIVE.append(Path(root).resolve())
    try:
        yield
    finally:
        _ACTIVE.pop()
        if not _ACTIVE:
            datasets.load_dataset = _REAL.pop("load_dataset")


def fill(root: str | os.PathLike, wanted: Iterable[Sequence[Any]], fmt: str = "jsonl",
         loader: Callable[..., Any] | None = None) -> list[Path]:
    """Write every (path, name, splits[, tasks, load_kwargs]) in `wanted` that `root` lacks, one file per split;
    return the new files. `load_kwargs` (e.g. a task's data_files) are passed on, so the copy holds what the task reads.

    Run it where the hub is reachable (`loader` defaults to `datasets.load_dataset`). jsonl is readable and diffable;
    parquet also keeps each column's `datasets` feature type (ClassLabel names, int widths).
    """
    import datasets

    if fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt: allowed jsonl, parquet (got {fmt!r})")
    loader = loader or datasets.load_dataset
    written = []
    for item in wanted:
        path, name, splits = item[:3]
        kwargs = item[4] if len(item) > 4 else {}
        for split in splits:
            if split_file(Path(root), path, name, split) is not None:
                continue
            out = dataset_dir(Path(root), path, name) / f"{split}.{fmt}"
            out.parent.mkdir(parents=True, exist_ok=True)
            ds = loader(path, name, split=split, **kwargs)
            if fmt == "jsonl":
                ds.to_json(out, lines=True, force_ascii=False)
            else:
                ds.to_parquet(out)
            written.append(out)
    return written
