"""Data files read in full before anything is created: every line of every training file and of every mirrored
file an evaluation task reads, so a bad row late in a file stops the run in seconds, not after Hydra made its
folder or after hours of training.

Two layers, each naming the file and the 1-based line (or row) and what was expected:
* structure — every line parses with the file's exact layout: JSON Lines / a JSON array of objects / one JSON
  object; CSV and TSV rows with exactly the header's (or the format's) number of fields, so no reader ever guesses
  an index column or pads a short row;
* fields — every row of a training source, as its format reads it (renamed `fields`, SNI task objects expanded),
  has the fields the format needs.

A file that passed is remembered by the sha256 of its bytes and what was checked: in this process, and across runs
under `cache_dir/checked/` (written by `save_passed` only once every check of a run passed, so a failing check
creates nothing), so a rerun hashes the file (≈1 GB/s) instead of parsing it again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

CHECK_VERSION = 1  # bump when a check gets stricter, so files passed by the old one are checked again
CHECKED = "checked"  # cache_dir/checked/<key>.json: one file that passed one check
_PASSED: set[str] = set()  # keys passed in this process
_PENDING: dict[Path, dict[str, dict[str, Any]]] = {}  # cache folder -> key -> record, written by save_passed
_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, so a file is hashed once here
_FOLDERS: list[Path] = []  # cache folders whose earlier passes count for every check (see look_in)


class DataFileError(HarnessError, ValueError):
    """A data file that does not parse with its exact layout; one line naming the file, the line and what was
    expected."""


@dataclass(frozen=True)
class Layout:
    """How a file is read: `json`, `parquet`, or `csv` with its delimiter and quoting; `columns` for a file without a
    header row (its exact columns), else the first row is the header."""

    kind: str
    delimiter: str = ","
    quoting: int = csv.QUOTE_MINIMAL
    columns: tuple[str, ...] | None = None

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "delimiter": self.delimiter, "quoting": self.quoting, "columns": self.columns}


BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}


def layout_of(file: Path, columns: list[str] | tuple[str, ...] | None = None) -> Layout:
    """The layout datasets' packaged builder reads `file` with (harness.data.sources.read_file's options)."""
    suffix = file.suffix.lower()
    kind = BUILDERS[suffix]
    if suffix == ".tsv":
        return Layout("csv", "\t", csv.QUOTE_NONE, tuple(columns) if columns else None)
    return Layout(kind, columns=tuple(columns) if columns and kind == "csv" else None)


# ----------------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Row:
    line: int | None  # 1-based line where the row starts (None: a Parquet row)
    index: int  # 0-based row index, as the loader counts rows
    data: dict[str, Any]


def read_rows(file: Path, layout: Layout, data: bytes | None = None) -> Iterator[Row]:
    """Every row of `file`, parsed with its exact layout; DataFileError at the first line that does not fit."""
    if layout.kind == "parquet":
        yield from _parquet_rows(file)
        return
    text = _decode(file, file.read_bytes() if data is None else data)
    yield from (_json_rows(file, text) if layout.kind == "json" else _table_rows(file, text, layout))


def _decode(file: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataFileError(f"{file}: line {line}: not UTF-8 text (byte {data[err.start]:#04x})") from None


def _json_error(file: Path, err: json.JSONDecodeError, line_offset: int = 0) -> DataFileError:
    return DataFileError(f"{file}: line {err.lineno + line_offset}: not valid JSON ({err.msg} at column "
                         f"{err.colno})")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


def _json_rows(file: Path, text: str) -> Iterator[Row]:
    """JSON Lines, a JSON array of objects, or one JSON object (an SNI task file), as datasets' json builder
    accepts them; every row must be an object."""
    body = text.removeprefix("\ufeff")
    start = len(body) - len(body.lstrip())
    first_line = body.count("\n", 0, start) + 1
    if body[start:start + 1] == "[":
        try:
            items = json.loads(body)
        except json.JSONDecodeError as err:
            raise _json_error(file, err) from None
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise DataFileError(f"{file}: item {i + 1} of the JSON array is {_kind(item)}; rows must be objects")
            yield Row(None, i, item)
        return
    lines = body.split("\n")
    head = lines[first_line - 1].strip()
    if head.startswith("{") and not _parses(head):  # one object over several lines (an SNI task file)
        try:
            item = json.loads(body)
        except json.JSONDecodeError as err:
            raise _json_error(file, err) from None
        if not isinstance(item, dict):
            raise DataFileError(f"{file}: holds {_kind(item)}; expected JSON objects")
        yield Row(first_line, 0, item)
        return
    index = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{file}: line {number}: not valid JSON ({err.msg} at column {err.colno}); "
                                "expected one JSON object per line") from None
        if not isinstance(item, dict):
            raise DataFileError(f"{file}: line {number}: {_kind(item)}; expected one JSON object per line")
        yield Row(number, index, item)
        index += 1


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _table_rows(file: Path, text: str, layout: Layout) -> Iterator[Row]:
    """CSV/TSV rows with exactly the header's (or the layout's) fields; blank lines are skipped, as pandas does."""
    what = "tab-separated" if layout.delimiter == "\t" else "comma-separated"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=layout.delimiter, quoting=layout.quoting,
                        strict=layout.quoting != csv.QUOTE_NONE)
    names: list[str] | None = list(layout.columns) if layout.columns else None
    expected = (f"{len(names)} ({', '.join(names)}; the file has no header row)" if names else "")
    start, index = 1, 0
    try:
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:
                continue
            if names is None:
                names = fields
                expected = f"{len(names)}, as in the header on line {line}"
                continue
            if len(fields) != len(names):
                raise DataFileError(f"{file}: line {line}: {len(fields)} {what} field(s), expected {expected}")
            yield Row(line, index, dict(zip(names, fields, strict=True)))
            index += 1
    except csv.Error as err:
        raise DataFileError(f"{file}: line {reader.line_num}: not valid {what} text ({err})") from None


def _parquet_rows(file: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise DataFileError(f"{file}: not a readable Parquet file ({' '.join(str(err).split())[:160]})") from None
    for i, row in enumerate(table.to_pylist()):
        yield Row(None, i, row)


# ----------------------------------------------------------------------------------------------- memo


def file_sha256(file: Path, data: bytes | None = None) -> str:
    """The file's sha256, computed once per (path, size, mtime) in this process."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = hashlib.sha256(file.read_bytes() if data is None else data).hexdigest()
    return _HASHES[key]


def check_key(file: Path, check: dict[str, Any]) -> str:
    """What a passed check is remembered by: the file's bytes and everything the check depended on."""
    blob = json.dumps({"version": CHECK_VERSION, "sha256": file_sha256(file), "check": check}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def look_in(cache_dir: str | os.PathLike) -> None:
    """Let every check of this process count the passes of earlier runs under `cache_dir` (the config check's peek
    at a file, which does not know the cache, included)."""
    if Path(cache_dir) not in _FOLDERS:
        _FOLDERS.append(Path(cache_dir))


def passed(key: str, cache_dir: str | os.PathLike | None) -> bool:
    """Whether this check of this content passed before: in this process, or in an earlier run under cache_dir
    (or a folder given to look_in)."""
    if key in _PASSED:
        return True
    for folder in [*([Path(cache_dir)] if cache_dir is not None else []), *_FOLDERS]:
        if (folder / CHECKED / f"{key}.json").is_file():
            _PASSED.add(key)
            return True
    return False


def mark_passed(key: str, cache_dir: str | os.PathLike | None, record: dict[str, Any]) -> None:
    """Remember a pass in this process now, and under cache_dir once `save_passed` is called."""
    _PASSED.add(key)
    if cache_dir is not None:
        _PENDING.setdefault(Path(cache_dir), {})[key] = record


def save_passed() -> None:
    """Write the passes of this process under their cache folders: called once every check of a run passed and
    the run goes ahead (never for a plan only), so a failing check leaves nothing behind."""
    for folder, records in _PENDING.items():
        target = folder / CHECKED
        target.mkdir(parents=True, exist_ok=True)
        for key, record in records.items():
            (target / f"{key}.json").write_text(json.dumps(record, sort_keys=True))
    _PENDING.clear()


def check_structure(file: Path, layout: Layout, cache_dir: str | os.PathLike | None = None) -> None:
    """Every line of `file` parses with `layout` (remembered by content hash); DataFileError otherwise."""
    key = check_key(file, {"structure": layout.spec()})
    if passed(key, cache_dir):
        return
    rows = sum(1 for _ in read_rows(file, layout))
    mark_passed(key, cache_dir, {"file": str(file), "check": "structure", "rows": rows})
