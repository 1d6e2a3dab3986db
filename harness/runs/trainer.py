"""Training: one function trains a model on packed blocks with HF Trainer, and every run of both arms
(and the base model's pre-training) goes through it, so cost is measured the same way everywhere."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from baselines.mixture import sample_mixture
from harness.data.tokens import Sequence_, encode_text, pack
from harness.models import lora
from harness.models.loading import CPU_FP32, LoadOptions, Runtime, build_model, device_name, load_model, train_tokenizer
from harness.runs import cost

log = logging.getLogger(__name__)


class Blocks(torch.utils.data.Dataset):
    """Packed (input_ids, labels) blocks as the dict rows Trainer expects."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.y[i]}


def processes() -> int:
    """How many processes train this run together: WORLD_SIZE, which torchrun and `accelerate launch` set."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(batch_size: int, n_processes: int) -> int:
    """The per-process batch that keeps the global batch at `batch_size`, so N processes take the same optimizer
    steps on the same tokens as one (and cost records stay comparable)."""
    if batch_size % n_processes:
        raise ValueError(f"budget.batch_size={batch_size} does not split over {n_processes} processes; "
                         f"use a multiple of {n_processes} or launch a divisor of {batch_size} processes")
    return batch_size // n_processes


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, lr: float,
          warmup_ratio: float, weight_decay: float, seed: int, grad_accum_steps: int = 1,
          gradient_checkpointing: bool = False, adapter_params: int | None = None) -> dict[str, Any]:
    """One epoch over the blocks with AdamW + cosine schedule, on the model's own device and in its dtype
    (bf16 weights train in bf16 under autocast); returns tokens, FLOPs, device-seconds and losses.

    `batch_size` is the global batch per micro-step: under torchrun / `accelerate launch` (DDP through Trainer)
    each of the N processes takes batch_size / N blocks, and Trainer's distributed sampler deals them out of the
    same shuffled order, so every optimizer step sees the blocks one process would have (gradients averaged).
    `adapter_params`: the model is a LoRA-wrapped base whose adapters hold that many parameters (cost accounting)."""
    on_cpu = model.device.type == "cpu"
    n_processes = processes()
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=per_device_batch(batch_size, n_processes),
            gradient_accumulation_steps=grad_accum_steps,
            gradient_checkpointing=gradient_checkpointing,
            num_train_epochs=1,
            learning_rate=lr,
            lr_scheduler_type="cosine",
            warmup_steps=warmup_ratio,  # a float < 1 is a fraction of the steps in transformers >= 5
            weight_decay=weight_decay,
            max_grad_norm=1.0,
            logging_steps=max(1, len(x) // (batch_size * grad_accum_steps) // 10),
            save_strategy="no",
            report_to="none",
            seed=seed,
            use_cpu=on_cpu,
            bf16=model.dtype == torch.bfloat16,
            dataloader_num_workers=0,
        )
        if args.world_size != n_processes:  # a launcher that does not set WORLD_SIZE would change the global batch
            raise RuntimeError(f"Trainer sees {args.world_size} processes but WORLD_SIZE is {n_processes}: launch "
                               "with torchrun or `accelerate launch`, which set it")
        trainer = Trainer(model=model, args=args, train_dataset=Blocks(x, y), data_collator=default_data_collator)
        start = time.perf_counter()
        out = trainer.train()
        wall = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tokens = int(x.numel())
    return {
        "train_tokens": tokens,
        "loss_tokens": int((y != -100).sum()),
        "train_flops": cost.train_flops(model.config, tokens, x.shape[1], adapter_params),
        "train_wall_s": wall,
        "train_device_s": wall * n_processes,  # every process holds one device for the whole run
        "device": device_name(model.device),
        "processes": n_processes,
        "effective_batch": args.per_device_train_batch_size * grad_accum_steps * n_processes,
        "dtype": str(model.dtype).removeprefix("torch."),
        "train_loss": float(out.training_loss),
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "steps": int(out.global_step),
    }


def finetune(out_dir: Path | None, base_dir: Path, pools: dict[str, list[Sequence_]], weights: dict[str, float],
             budget: Any, seed: int, pad_id: int, runtime: Runtime = CPU_FP32, options: LoadOptions | None = None,
             gradient_checkpointing: bool = False, lora_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune the base on a weighted mixture (one distribution = weight 1) for the token budget; save it into
    out_dir (None: a helper rank of a distributed run, which trains alongside rank 0 but saves nothing).
    With `lora_settings` (harness.models.lora.settings) only LoRA adapters train, and out_dir gets the peft adapter."""
    seqs = sample_mixture(pools, weights, budget.train_tokens, seed)
    x, y = pack(seqs, budget.seq_len, pad_id, max_blocks=budget.train_tokens // budget.seq_len)
    model = load_model(base_dir, runtime, options or LoadOptions())
    adapter_params = None
    if lora_settings is not None:
        # peft draws each adapter's A from torch's RNG before Trainer seeds it: seed it here, or the adapter would
        # depend on what ran earlier in this process (a resumed comparison would train a different one)
        torch.manual_seed(seed)
        model = lora.wrap(model, lora_settings, gradient_checkpointing)
        adapter_params = lora.trainable_params(model)
    record = train(model, x, y, batch_size=budget.batch_size, lr=budget.lr, warmup_ratio=budget.warmup_ratio,
                   weight_decay=budget.weight_decay, seed=seed, grad_accum_steps=budget.grad_accum_steps,
                   gradient_checkpointing=gradient_checkpointing, adapter_params=adapter_params)
    if adapter_params is not None:
        record |= {"method": "lora", "adapter_params": adapter_params}
    if out_dir is not None:
        model.save_pretrained(out_dir)  # a PeftModel writes adapter_model.safetensors + adapter_config.json
    log.info("trained %s: %d tokens, loss %.3f -> %.3f, %.1fs", weights, record["train_tokens"],
             record["loss_first"] or float("nan"), record["loss_last"] or float("nan"), record["train_wall_s"])
    return {**record, "weights": weights}


def pretrain(out_dir: Path, model_cfg: Any, tokenizer_texts: list[str], corpus: list[str], seed: int,
             warmup_ratio: float = 0.05, runtime: Runtime = CPU_FP32) -> dict[str, Any]:
    """Build the base: train the BPE tokenizer, initialise the tiny Llama, pre-train it on the generic corpus."""
    tok = train_tokenizer(tokenizer_texts, model_cfg.vocab_size)
    model = build_model(model_cfg, tok, seed).to(device=runtime.device, dtype=runtime.dtype)
    seqs = [encode_text(tok, t) for t in corpus]
    have = sum(len(s[0]) for s in seqs)
    seqs = seqs * -(-model_cfg.pretrain_tokens // have)  # repeat the corpus (epochs) if it is short
    seq_len = model_cfg.pretrain_seq_len
    x, y = pack(seqs, seq_len, tok.pad_token_id, max_blocks=model_cfg.pretrain_tokens // seq_len)
    record = train(model, x, y, batch_size=model_cfg.pretrain_batch_size, lr=model_cfg.pretrain_lr,
                   warmup_ratio=warmup_ratio, weight_decay=0.0, seed=seed)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    log.info("pre-trained base: %d params, %d tokens, loss %.3f -> %.3f, %.1fs", model.num_parameters(),
             record["train_tokens"], record["loss_first"] or float("nan"), record["loss_last"] or float("nan"),
             record["train_wall_s"])
    return {**record, "params": model.num_parameters(), "vocab_size": len(tok)}
