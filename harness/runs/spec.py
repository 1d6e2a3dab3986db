"""A training run as data. A `RunSpec` is JSON-able and names everything that determines the run — base, mixture,
the data's fingerprints, budget, seed, device kind and dtype — so any process (this one, a submitit job, another
machine sharing the cache folder) can train it with `execute(spec, cache_dir)` and nothing else: the tokenized
training pools it reads are cache entries too (`store_pools`). The locked cache is the hand-off between processes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from harness.data.tokens import IGNORE, TOKENIZE_VERSION, Sequence_
from harness.models.loading import LoadOptions, Runtime, load_tokenizer
from harness.runs.cache import Entry, RunCache, spec_key

log = logging.getLogger(__name__)

DATA_VERSION = 2  # bump when a generator's output changes (or one is added: the tiny tokenizer sees them all)
POOL_VERSION = 1  # bump when the stored token-pool format changes
# Bump when a change to training (trainer.py, or how this module feeds it) changes what a run produces: weights,
# losses, the cost record. Part of every trained run's key and the tiny base's; tests/test_versions.py guards it.
TRAIN_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run of the base on a mixture (one distribution = weight 1) for `train_tokens` tokens."""

    base_key: str
    base_path: str
    weights: dict[str, float]  # distribution -> share of tokens (> 0, summing to 1)
    fingerprints: dict[str, str]  # the rows each weighted distribution supplies (harness.data.sources)
    pools: dict[str, str]  # distribution -> key of its tokenized train pool ("pools" cache entries)
    budget: dict[str, Any]  # the resolved `budget` config; its train_tokens is this run's
    seed: int
    device: str
    dtype: str
    options: dict[str, Any] = field(default_factory=dict)  # harness.models.loading.LoadOptions fields
    gradient_checkpointing: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # harness.models.lora.settings: empty = full fine-tuning

    @property
    def train_tokens(self) -> int:
        return int(self.budget["train_tokens"])

    def cache_spec(self) -> dict[str, Any]:
        """What determines the trained weights (not where the base lives, nor how memory is saved): the token
        pools name the tokenizer and its options, `options` how the model is opened."""
        return {"base": self.base_key, "weights": self.weights,
                "data": {"version": DATA_VERSION, "fingerprints": self.fingerprints}, "pools": self.pools,
                "options": self.options, "train_version": TRAIN_VERSION, "budget": self.budget,
                "seed": self.seed, "device_type": torch.device(self.device).type, "dtype": self.dtype,
                **({"training": self.training} if self.training else {})}  # full runs keep their keys

    @property
    def key(self) -> str:
        return spec_key("train", self.cache_spec())

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v:.2f}" for k, v in self.weights.items())

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls(**json.loads(text))


def normalise(weights: dict[str, float]) -> dict[str, float]:
    """Weights > 0 only, sorted by name, summing to 1 (so equal mixtures are equal specs)."""
    kept = {k: float(v) for k, v in sorted(weights.items()) if v > 0}
    total = sum(kept.values())
    if not kept or total <= 0:
        raise ValueError(f"a mixture needs a positive weight, got {weights}")
    return kept if abs(total - 1) < 1e-9 else {k: v / total for k, v in kept.items()}


# ----------------------------------------------------------------------------------------------- token pools


def tokenizer_spec(base_key: str, options: LoadOptions) -> dict[str, Any]:
    """What determines how text becomes tokens: the base's tokenizer, how it is opened (`use_fast_tokenizer`, …)
    and the tokenisation code's version. Part of every key that reads tokens."""
    return {"base": base_key, "options": asdict(options), "version": TOKENIZE_VERSION}


def pool_spec(tokenizer: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    return {"tokenizer": tokenizer, "fingerprint": fingerprint, "version": POOL_VERSION}


def store_pools(cache: RunCache, tokenizer: dict[str, Any], seqs: Mapping[str, Callable[[], list[Sequence_]]],
                fingerprints: dict[str, str]) -> dict[str, str]:
    """Each distribution's tokenized training sequences as a cache entry (ids + prompt lengths); returns the keys
    a RunSpec names. Keyed by the tokenizer (`tokenizer_spec`) and the rows' fingerprint. `seqs` gives, per
    distribution, a function that tokenizes its rows: called only for a pool not yet in the cache (a warm rerun
    tokenizes nothing)."""
    keys = {}
    for name, make in seqs.items():
        spec = pool_spec(tokenizer, fingerprints[name])

        def write(folder: Path, make: Callable[[], list[Sequence_]] = make) -> dict[str, Any]:
            pool = make()
            ids = [t for s in pool for t in s[0]]
            save_file({"ids": torch.tensor(ids, dtype=torch.int64),
                       "lengths": torch.tensor([len(s[0]) for s in pool], dtype=torch.int64),
                       "prompt_lengths": torch.tensor([_prompt_length(s) for s in pool], dtype=torch.int64)},
                      str(folder / "pool.safetensors"))
            return {"sequences": len(pool), "tokens": len(ids)}

        keys[name] = cache.get_or_create("pools", spec, write, f"tokens {name}").record["key"]
    return keys


def _prompt_length(seq: Sequence_) -> int:
    labels = seq[1]
    return next((i for i, t in enumerate(labels) if t != IGNORE), len(labels))


def read_pool(path: Path) -> list[Sequence_]:
    """The sequences `store_pools` wrote: ids, and labels that ignore the prompt (loss on the response)."""
    t = load_file(str(path))
    ids, out, start = t["ids"].tolist(), [], 0
    for length, prompt in zip(t["lengths"].tolist(), t["prompt_lengths"].tolist(), strict=True):
        seq = ids[start : start + length]
        out.append((seq, [IGNORE] * prompt + seq[prompt:]))
        start += length
    return out


# ----------------------------------------------------------------------------------------------- execution


def train_into(spec: RunSpec, cache: RunCache, folder: Path | None) -> dict[str, Any]:
    """Fine-tune `spec` from its cached token pools; save into `folder` (None: a helper rank of a distributed run,
    which trains alongside rank 0 but saves nothing — harness/runs/train_run.py)."""
    from harness.runs.trainer import finetune  # heavy: transformers' Trainer

    pools = {}
    for name, key in spec.pools.items():
        entry = cache.get("pools", key)
        if entry is None:
            raise RuntimeError(f"run {spec.label}: token pool pools/{key} is missing or corrupt in {cache.root}")
        pools[name] = read_pool(entry.path / "pool.safetensors")
    options = LoadOptions(**spec.options)
    pad_id = load_tokenizer(Path(spec.base_path), options).pad_token_id
    # "cuda" without an index is the current device, which accelerate sets to a rank's LOCAL_RANK
    runtime = Runtime(torch.device(spec.device), getattr(torch, spec.dtype))
    return finetune(folder, Path(spec.base_path), pools, spec.weights, SimpleNamespace(**spec.budget), spec.seed,
                    pad_id, runtime, options, spec.gradient_checkpointing, spec.training.get("lora"))


def execute(spec: RunSpec, cache_root: str | Path) -> Entry:
    """Train `spec` into the cache (or find it there); the whole job a submitit worker runs."""
    cache = RunCache(cache_root)
    return cache.get_or_create("train", spec.cache_spec(), lambda folder: train_into(spec, cache, folder), spec.label)
