"""The base model θ₀ of a comparison, from its source: built and pre-trained here (`tiny`), converted once from a
GGUF (`smollm2`), or located on the hub or disk (`hf`). Every run of every arm starts from it, and its key — a
hash of what determines it, or of the checkpoint's bytes for `hf` — is part of every downstream cache key."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.data.builtin import GENERATORS, generate_splits, generic_corpus
from harness.data.tokens import TOKENIZE_VERSION
from harness.models.loading import (
    LoadOptions,
    ModelSourceError,
    Runtime,
    convert_smollm2,
    fingerprint_folder,
    locate_hf,
    planned_config,
    smollm2_gguf,
    tiny_config,
)
from harness.runs.cache import RunCache, spec_key
from harness.runs.spec import DATA_VERSION, TRAIN_VERSION

TOKENIZER_SAMPLES = 500  # examples of every built-in generator the tiny tokenizer also sees


@dataclass(frozen=True)
class Base:
    path: Path  # a folder from_pretrained loads: model + tokenizer (for a cached base: once it is built)
    key: str
    record: dict[str, Any]
    hit: bool


def load_options(model_cfg: DictConfig) -> LoadOptions:
    return LoadOptions(trust_remote_code=model_cfg.trust_remote_code, use_safetensors=model_cfg.use_safetensors,
                       use_fast_tokenizer=model_cfg.use_fast_tokenizer)


def base_config(model_cfg: DictConfig, folder: Path | None = None, plan: bool = False) -> Any:
    """The transformers config of the base a `model` preset names, read without its weights: a tiny base's from
    the preset (its tokenizer may come out a few hundred tokens smaller than `vocab_size`), an hf checkpoint's
    config.json from `folder` (located when not given; in a plan, the preset's stated `architecture`), SmolLM2's
    from its GGUF. Raises ModelSourceError for a checkpoint that cannot be found."""
    from transformers import AutoConfig

    if model_cfg.source == "tiny":
        return tiny_config(model_cfg)
    if model_cfg.source == "hf":
        if folder is None and plan and model_cfg.architecture is not None:
            return planned_config(model_cfg.architecture)
        folder = folder or locate_hf(model_cfg.name_or_path, model_cfg.revision, load_options(model_cfg))
        return AutoConfig.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
    gguf = smollm2_gguf()  # the GGUF's own config, read without de-quantising it
    return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)


def runtime_spec(runtime: Runtime) -> dict[str, str]:
    """What of the runtime changes a trained result's numbers: the device kind and the dtype."""
    return {"device_type": runtime.device.type, "dtype": str(runtime.dtype).removeprefix("torch.")}


def _built(cfg: DictConfig, runtime: Runtime) -> tuple[dict[str, Any], Callable[[Path], dict[str, Any]], str]:
    """(cache spec, builder, label) of a base this harness makes: tiny (built) or smollm2 (converted)."""
    if cfg.model.source == "smollm2":
        gguf = smollm2_gguf()
        return ({"source": "smollm2", "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}, convert_smollm2,
                "base (SmolLM2 from GGUF)")
    seed = cfg.seeds.train  # the tiny base's corpus, tokenizer, init and pre-training follow the training seed
    arch = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items()
            if k not in ("device", "dtype", "gradient_checkpointing", "architecture")}  # hf presets' only

    def build(folder: Path) -> dict[str, Any]:
        from harness.runs.trainer import pretrain  # heavy: transformers' Trainer

        # The tokenizer sees every built-in generator, not just the configured ones, so adding a distribution
        # never changes the base.
        corpus = generic_corpus(seed, cfg.model.generic_docs)
        samples = [e.text for n in GENERATORS for e in generate_splits(n, seed + 1, TOKENIZER_SAMPLES, 1, 1).train]
        return {"source": "tiny", **pretrain(folder, cfg.model, corpus + samples, corpus, seed, runtime=runtime)}

    versions = {"data_version": DATA_VERSION, "train_version": TRAIN_VERSION, "tokenize_version": TOKENIZE_VERSION}
    return {"model": arch, "seed": seed, **versions, **runtime_spec(runtime)}, build, "base"


def prepare_base(cfg: DictConfig, cache: RunCache, runtime: Runtime, build: bool = True) -> Base:
    """θ₀ for `cfg.model`: built or converted through the cache once (`build=False`: only its key and folder, for
    a plan that must write nothing), or located and fingerprinted (hf)."""
    if cfg.model.source in ("tiny", "smollm2"):
        spec, builder, label = _built(cfg, runtime)
        if not build:
            key = spec_key("base", spec)
            return Base(cache.root / "base" / key, key, {"source": cfg.model.source}, cache.has("base", spec))
        entry = cache.get_or_create("base", spec, builder, label)
        return Base(entry.path, entry.record["key"], entry.record, entry.hit)
    options = load_options(cfg.model)
    if not build and cfg.model.architecture is not None:  # a plan: the HF cache or a folder, never the hub
        try:
            folder = locate_hf(cfg.model.name_or_path, cfg.model.revision, options, local_only=True)
        except ModelSourceError:  # costed from the preset's architecture (harness/plan.py says so)
            spec = {"source": "hf", "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision}
            key = spec_key("base", {**spec, "located": False})
            return Base(cache.root / "base" / key, key, {**spec, "located": False}, hit=False)
    else:
        folder = locate_hf(cfg.model.name_or_path, cfg.model.revision, options)
    fingerprint = fingerprint_folder(folder)
    record = {"source": "hf", "name_or_path": cfg.model.name_or_path, "revision": cfg.model.revision,
              "folder": str(folder), "fingerprint": fingerprint, "train_tokens": 0}
    return Base(folder, spec_key("base", {"source": "hf", "fingerprint": fingerprint}), record, hit=True)
