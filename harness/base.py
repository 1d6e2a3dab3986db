"""The base model θ₀ of a comparison, from its source: built and pre-trained here (`tiny`), converted once from a
GGUF (`smollm2`), or located on the hub or disk (`hf`). Every run of both arms starts from it, and its key — a
hash of what determines it, or of the checkpoint's bytes for `hf` — is part of every downstream cache key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.cache import RunCache, spec_key
from harness.data import GENERATORS, generate_splits, generic_corpus
from harness.models import LoadOptions, Runtime, convert_smollm2, fingerprint_folder, locate_hf, smollm2_gguf
from harness.training import pretrain

DATA_VERSION = 2  # bump when a generator's output changes (or one is added: the tiny tokenizer sees them all)
TOKENIZER_SAMPLES = 500  # examples of every built-in generator the tiny tokenizer also sees


@dataclass(frozen=True)
class Base:
    path: Path  # a folder from_pretrained loads: model + tokenizer
    key: str
    record: dict[str, Any]
    hit: bool


def load_options(model_cfg: DictConfig) -> LoadOptions:
    return LoadOptions(trust_remote_code=model_cfg.trust_remote_code, use_safetensors=model_cfg.use_safetensors,
                       use_fast_tokenizer=model_cfg.use_fast_tokenizer)


def prepare_base(cfg: DictConfig, cache: RunCache, runtime: Runtime) -> Base:
    """θ₀ for `cfg.model`, built or converted through the cache (once), or located and fingerprinted (hf)."""
    source, seed = cfg.model.source, cfg.seed
    if source == "tiny":
        arch = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
                if k not in ("device", "dtype", "gradient_checkpointing")}

        def build(folder: Path) -> dict[str, Any]:
            # The tokenizer sees every built-in generator, not just the configured ones, so adding a
            # distribution never changes the base.
            corpus = generic_corpus(seed, cfg.model.generic_docs)
            samples = [e.text for n in GENERATORS for e in generate_splits(n, seed + 1, TOKENIZER_SAMPLES, 1, 1).train]
            return {"source": "tiny", **pretrain(folder, cfg.model, corpus + samples, corpus, seed, runtime=runtime)}

        spec = {"model": arch, "seed": seed, "data_version": DATA_VERSION, **runtime_spec(runtime)}
        entry = cache.get_or_create("base", spec, build, "base")
        return Base(entry.path, entry.record["key"], entry.record, entry.hit)
    if source == "smollm2":
        gguf = smollm2_gguf()
        spec = {"source": "smollm2", "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}
        entry = cache.get_or_create("base", spec, convert_smollm2, "base (SmolLM2 from GGUF)")
        return Base(entry.path, entry.record["key"], entry.record, entry.hit)
    options = load_options(cfg.model)
    folder = locate_hf(cfg.model.name_or_path, cfg.model.revision, options)
    fingerprint = fingerprint_folder(folder)
    record = {"source": "hf", "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
              "folder": str(folder), "fingerprint": fingerprint, "train_tokens": 0}
    return Base(folder, spec_key("base", {"source": "hf", "fingerprint": fingerprint}), record, hit=True)


def runtime_spec(runtime: Runtime) -> dict[str, str]:
    """What of the runtime changes a trained result's numbers: the device kind and the dtype."""
    return {"device_type": runtime.device.type, "dtype": str(runtime.dtype).removeprefix("torch.")}
