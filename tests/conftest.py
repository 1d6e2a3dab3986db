"""Shared fixtures: the micro presets composed exactly as the CLI composes them, and a tiny real base model."""

from __future__ import annotations

import os

# pytest-xdist (`-n auto` in pyproject.toml): each worker, and every CLI process it starts, gets its share of the
# cores as torch threads (set before torch is imported): oversubscribed cores slow every torch op down. The cores
# are counted as harness.runs.executor.cores() counts them; that module imports torch, so it cannot be used here.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(workers)))

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from harness.config import CONF_DIR
from harness.data.builtin import generate_splits, generic_corpus
from harness.models.loading import load_model, load_tokenizer
from harness.runs.trainer import pretrain
from harness.validate import validate

# The micro comparison the pinned numbers (tests/data/micro_pin.json) were recorded with.
MICRO_PINNED = ["model=micro", "data=micro", "budget=micro", "tracking=disabled", "dem.n_trials=3"]
# What most tests run: the same without the HELM robustness pass, which doubles multiple-choice scoring time and is
# covered by tests/test_evaluation.py and the end-to-end run in tests/test_e2e.py.
MICRO = [*MICRO_PINNED, "eval.helm.robustness=false"]


def compose_cfg(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture
def micro_cfg(tmp_path: Path) -> DictConfig:
    return validate(compose_cfg([*MICRO, f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]))


@pytest.fixture(scope="session")
def micro_base(tmp_path_factory: pytest.TempPathFactory):
    """A pre-trained micro base model on disk (real tokenizer, real Trainer), shared by the tests."""
    cfg = validate(compose_cfg([*MICRO, "output_dir=unused", "cache_dir=unused"]))
    folder = tmp_path_factory.mktemp("base")
    corpus = generic_corpus(0, cfg.model.generic_docs)
    texts = corpus + [e.text for n in ("mathqa", "sni", "cot") for e in generate_splits(n, 1, 100, 1, 1).train]
    record = pretrain(folder, cfg.model, texts, corpus, seed=0)
    return folder, record, cfg


@pytest.fixture
def base_model(micro_base):
    return load_model(micro_base[0])


@pytest.fixture
def tokenizer(micro_base):
    return load_tokenizer(micro_base[0])
