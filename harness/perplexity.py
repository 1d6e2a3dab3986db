"""Validation perplexity on the response tokens: the selection criterion of both arms."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.tokens import IGNORE


@torch.no_grad()
def nll(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16,
        per_block: list[tuple[float, int]] | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood of the labelled tokens and their count (labels shift by one, as in HF).

    Batches move to the model's device; the loss is taken in fp32 whatever the model's dtype. With `per_block`,
    each block's (nll, labelled tokens) is appended too: the units a perplexity's confidence interval resamples."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(input_ids=x[i : i + batch_size].to(device)).logits[:, :-1].float()
        target = y[i : i + batch_size, 1:].to(device)
        flat_logits, flat_target = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
        total += F.cross_entropy(flat_logits, flat_target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
        if per_block is not None:
            rows = F.cross_entropy(flat_logits, flat_target, ignore_index=IGNORE, reduction="none").view(target.shape)
            per_block += zip(rows.sum(dim=1).tolist(), (target != IGNORE).sum(dim=1).tolist(), strict=True)
    return total, count


def perplexity(model: torch.nn.Module, val: dict[str, tuple[torch.Tensor, torch.Tensor]],
               batch_size: int = 16) -> dict:
    """Per-distribution perplexity and the pooled one (all validation tokens of all distributions together), plus
    each validation block's summed nll and token count (`blocks`), for confidence intervals and paired tests."""
    blocks: dict[str, list[tuple[float, int]]] = {name: [] for name in val}
    sums = {name: nll(model, x, y, batch_size, blocks[name]) for name, (x, y) in val.items()}
    pooled_nll = sum(s for s, _ in sums.values())
    pooled_n = sum(n for _, n in sums.values())
    return {
        "val_ppl": math.exp(pooled_nll / pooled_n),
        "val_ppl_by_dist": {name: math.exp(s / n) for name, (s, n) in sums.items()},
        "forward_tokens": sum(int(x.numel()) for x, _ in val.values()),
        "blocks": {name: {"nll": [b[0] for b in rows], "tokens": [b[1] for b in rows]}
                   for name, rows in blocks.items()},
    }
