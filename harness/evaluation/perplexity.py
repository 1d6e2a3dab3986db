"""Validation perplexity on the response tokens, and the selection score both arms compute from it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from harness.data.tokens import IGNORE


@torch.no_grad()
def nll(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 16,
        per_block: list[tuple[float, int]] | None = None, owners: torch.Tensor | None = None,
        per_example: torch.Tensor | None = None) -> tuple[float, int]:
    """Summed negative log-likelihood of the labelled tokens and their count (labels shift by one, as in HF).

    Batches move to the model's device; the loss is taken in fp32 whatever the model's dtype. With `per_block`,
    each block's (nll, labelled tokens) is appended too. With `owners` (the example index of every label, from
    `pack_examples`) and `per_example` (a float64 tensor of shape (n_examples, 2)), each example's summed nll and
    token count are added to its row: the units a perplexity's confidence interval resamples."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(input_ids=x[i : i + batch_size].to(device)).logits[:, :-1].float()
        target = y[i : i + batch_size, 1:].to(device)
        flat_logits, flat_target = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
        total += F.cross_entropy(flat_logits, flat_target, ignore_index=IGNORE, reduction="sum").item()
        count += int((target != IGNORE).sum())
        if per_block is not None or per_example is not None:
            rows = F.cross_entropy(flat_logits, flat_target, ignore_index=IGNORE, reduction="none").view(target.shape)
        if per_block is not None:
            per_block += zip(rows.sum(dim=1).tolist(), (target != IGNORE).sum(dim=1).tolist(), strict=True)
        if per_example is not None and owners is not None:
            owner = owners[i : i + batch_size, 1:].reshape(-1)
            keep = owner >= 0
            n = per_example.size(0)
            per_example[:, 0] += torch.bincount(owner[keep], weights=rows.reshape(-1).cpu().double()[keep], minlength=n)
            per_example[:, 1] += torch.bincount(owner[keep], minlength=n).double()
    return total, count


def perplexity(model: torch.nn.Module, val: dict[str, tuple[torch.Tensor, ...]], batch_size: int = 16) -> dict:
    """Per-distribution perplexity and the pooled one (all validation tokens of all distributions together).

    Packed blocks `(x, y)` also give each block's summed nll and token count (`blocks`); blocks with owners
    `(x, y, owners)` (see `pack_examples`) give each example's instead (`examples`): what confidence intervals
    and paired tests resample."""
    blocks: dict[str, list[tuple[float, int]]] = {name: [] for name in val}
    examples: dict[str, torch.Tensor] = {}
    sums = {}
    for name, packed in val.items():
        x, y, *owners = packed
        if owners:
            examples[name] = torch.zeros(int(owners[0].max()) + 1, 2, dtype=torch.float64)
            sums[name] = nll(model, x, y, batch_size, owners=owners[0], per_example=examples[name])
        else:
            sums[name] = nll(model, x, y, batch_size, blocks[name])
    pooled_nll = sum(s for s, _ in sums.values())
    pooled_n = sum(n for _, n in sums.values())
    record = {
        "val_ppl": math.exp(pooled_nll / pooled_n),
        "val_ppl_by_dist": {name: math.exp(s / n) for name, (s, n) in sums.items()},
        "forward_tokens": sum(int(v[0].numel()) for v in val.values()),
    }
    if examples:
        record["examples"] = {name: {"nll": e[:, 0].tolist(), "tokens": [int(t) for t in e[:, 1].tolist()]}
                              for name, e in examples.items()}
    else:
        record["blocks"] = {name: {"nll": [b[0] for b in rows], "tokens": [b[1] for b in rows]}
                            for name, rows in blocks.items()}
    return record


def selection_score(sums: Mapping[str, tuple[float, int]], metric: str) -> float:
    """The selection metric (lower is better) from each distribution's (summed nll, labelled tokens): the one
    function DEM's search, the mixing grid and RegMix's proxies all score candidates with.

    `pooled_ppl`: perplexity of all validation tokens together (token-weighted, so distributions with short
    responses weigh little); `mean_log_ppl`: exp of the mean over distributions of log perplexity, each
    distribution counted equally (the geometric mean of their perplexities)."""
    if metric == "pooled_ppl":
        return math.exp(sum(s for s, _ in sums.values()) / sum(c for _, c in sums.values()))
    return math.exp(sum(s / c for s, c in sums.values()) / len(sums))


def sums_of(record: Mapping[str, Any]) -> dict[str, tuple[float, int]]:
    """Each distribution's (summed nll, tokens) from a `perplexity` record (its blocks or its examples)."""
    units = record.get("examples") or record["blocks"]
    return {name: (math.fsum(u["nll"]), int(sum(u["tokens"]))) for name, u in units.items()}
