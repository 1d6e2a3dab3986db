"""Cache corruption of each artifact kind — base weights and tokenizer, a training checkpoint, its record, a
distribution vector, a perplexity, search and evaluation record, per-sample outputs: each is detected, named in one
warning line, rebuilt, and the run's results are exactly those of the clean cache (never silently different)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MICRO
from tests.test_resume import _strip  # the summary without wall-clock fields, at any depth

pytestmark = pytest.mark.slow
ARGS = [*MICRO, "mixing.grid_step=1"]


def _run(out: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *ARGS, f"output_dir={out}", f"cache_dir={cache}"],
                          capture_output=True, text=True, timeout=900)


def _results(out: Path, cache: Path) -> dict:
    text = (out / "summary.json").read_text().replace(str(cache), "<cache>")
    methods = json.loads(text)["methods"]
    return {m: _strip(fields) for m, fields in methods.items()}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    proc = _run(root / "out", root / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "cache", _results(root / "out", root / "cache")


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01  # one bit deep inside: the file still parses, the numbers change
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_number(path: Path) -> None:
    record = json.loads(path.read_text())
    for key in ("val_ppl", "train_loss"):
        if key in record:
            record[key] = record[key] * 1.5  # still valid JSON: only the record's own hash can tell
    if "results" in record:  # an evaluation: one score
        task = next(iter(record["results"]))
        record["results"][task]["metrics"]["acc"] = 1.0 - record["results"][task]["metrics"]["acc"]
    if "weights" in record and isinstance(record["weights"], dict):
        record["weights"] = {k: 1.0 for k in record["weights"]}
    path.write_text(json.dumps(record))


# Two runs, each over a cache with five artifacts of different kinds corrupted (the index picks the entry, so no
# damage hides another): each must be named in its own warning line. One run per kind would take ten CLI runs.
CORRUPTIONS = {
    "weights_and_downstream_records": [
        ("base_weights", "base/*/model.safetensors", 0, flip_byte),
        ("training_checkpoint", "train/*/model.safetensors", 0, flip_byte),
        ("vector", "vector/*/vector.safetensors", 1, flip_byte),
        ("search_record", "search/*/record.json", 0, edit_number),
        ("eval_samples", "eval/*/samples/*.jsonl", 0, truncate),
    ],
    "tokenizer_records_and_a_deleted_file": [
        ("base_tokenizer", "base/*/tokenizer.json", 0, truncate),
        ("training_record_torn", "train/*/record.json", 0, truncate),
        ("perplexity_record", "ppl/*/record.json", 0, edit_number),
        ("eval_record", "eval/*/record.json", 1, edit_number),
        ("file_deleted", "train/*/config.json", 1, Path.unlink),
    ],
}


@pytest.mark.parametrize("group", CORRUPTIONS)
def test_corrupted_cache_entries_are_detected_rebuilt_and_change_nothing(clean, tmp_path, group):
    clean_cache, expected = clean
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    targets = {}
    for name, pattern, index, corrupt in CORRUPTIONS[group]:
        target = sorted(cache.glob(pattern))[index]
        corrupt(target)
        targets[name] = target
    proc = _run(tmp_path / "out", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if "rebuilding" in line]
    for name, target in targets.items():
        assert sum(str(target) in w for w in warnings) == 1, (name, target, warnings)
    assert len(warnings) == len(targets), warnings
    assert _results(tmp_path / "out", cache) == expected
