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

pytestmark = pytest.mark.slow
ARGS = [*MICRO, "mixing.grid_step=1"]
WALL_CLOCK = {"wall_s", "train_wall_s", "train_device_s", "output_dir"}


def _run(out: Path, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *ARGS, f"output_dir={out}", f"cache_dir={cache}"],
                          capture_output=True, text=True, timeout=900)


def _results(out: Path, cache: Path) -> dict:
    text = (out / "summary.json").read_text().replace(str(cache), "<cache>")
    methods = json.loads(text)["methods"]
    return {m: {k: v for k, v in fields.items() if k not in WALL_CLOCK} for m, fields in methods.items()}


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


CORRUPTIONS = [
    ("base_weights", "base/*/model.safetensors", flip_byte),
    ("base_tokenizer", "base/*/tokenizer.json", truncate),
    ("training_checkpoint", "train/*/model.safetensors", flip_byte),
    ("training_record_torn", "train/*/record.json", truncate),
    ("vector", "vector/*/vector.safetensors", flip_byte),
    ("perplexity_record", "ppl/*/record.json", edit_number),
    ("search_record", "search/*/record.json", edit_number),
    ("eval_record", "eval/*/record.json", edit_number),
    ("eval_samples", "eval/*/samples/*.jsonl", truncate),
    ("file_deleted", "train/*/config.json", Path.unlink),
]


@pytest.mark.parametrize("name,pattern,corrupt", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_a_corrupted_cache_entry_is_detected_rebuilt_and_changes_nothing(clean, tmp_path, name, pattern, corrupt):
    clean_cache, expected = clean
    cache = tmp_path / "cache"
    shutil.copytree(clean_cache, cache)
    target = sorted(cache.glob(pattern))[0]
    corrupt(target)
    proc = _run(tmp_path / "out", cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    warnings = [line for line in log.splitlines() if "rebuilding" in line]
    assert len(warnings) == 1 and str(target) in warnings[0], warnings
    assert _results(tmp_path / "out", cache) == expected
