"""Train one run spec into the run cache, in one process or in several (DDP through HF Trainer):

    python -m harness.runs.train_run SPEC.json CACHE_DIR
    torchrun --standalone --nproc_per_node 2 -m harness.runs.train_run SPEC.json CACHE_DIR   # or `accelerate launch`

SPEC.json holds `RunSpec.to_json()`. With N processes each takes budget.batch_size / N blocks per micro-step, so
the global batch, the optimizer steps and the tokens are those of one process and the cost record stays comparable
(it counts N devices: train_device_s = wall × N). CPU runs use gloo, GPU runs NCCL with one GPU per LOCAL_RANK
(accelerate's choice). The last line rank 0 prints is the finished entry's folder.

The hand-off: every rank must take part in `trainer.train()`, but only rank 0 writes the cache. Rank 0 goes through
`RunCache.get_or_create` as `spec.execute` does (lock, temporary folder, sha256 record, rename); its builder
first tells the other ranks "train", and they run the same fine-tune (same seed, so the same sampled blocks) and
save nothing. If the entry is already finished — or another job finishes it while rank 0 waits for the key's lock —
rank 0 tells them "done" and nobody trains.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from harness.runs.cache import Entry, RunCache
from harness.runs.spec import RunSpec, train_into
from harness.runs.trainer import per_device_batch, processes

TRAIN, DONE = "train", "done"  # what rank 0 tells the other ranks


def _tell(message: str | None = None) -> str | None:
    """Rank 0's message to every rank (a no-op in one process); returns it on every rank."""
    return broadcast_object_list([message], from_process=0)[0]


def train_run(spec: RunSpec, cache_root: str | Path) -> Entry | None:
    """Train `spec` into the cache (or find it there) with every process of this launch; rank 0 returns the
    entry, the other ranks None."""
    per_device_batch(int(spec.budget["batch_size"]), processes())  # a batch that does not split fails now
    state = PartialState(cpu=torch.device(spec.device).type == "cpu")  # joins the launch's process group
    cache = RunCache(cache_root)
    if not state.is_main_process:
        if _tell() == TRAIN:
            train_into(spec, cache, None)
        return None

    def build(folder: Path) -> dict[str, Any]:
        _tell(TRAIN)
        return train_into(spec, cache, folder)

    entry = cache.get_or_create("train", spec.cache_spec(), build, spec.label)
    if entry.hit:
        _tell(DONE)
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.runs.train_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", type=Path, help="a RunSpec as JSON (RunSpec.to_json())")
    parser.add_argument("cache_dir", type=Path, help="the run cache the entry is written into")
    args = parser.parse_args(argv)
    spec = RunSpec.from_json(args.spec.read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    entry = train_run(spec, args.cache_dir)
    if entry is not None:
        print(entry.path, flush=True)
    PartialState().destroy_process_group()  # a clean exit (NCCL warns otherwise); no-op in one process


if __name__ == "__main__":
    main()
