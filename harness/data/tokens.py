"""Tokenisation with a loss mask, and sequence packing: the one data format every training run and
perplexity measurement uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from harness.data.builtin import Example

# Bump when tokenisation's output changes meaning (what encode/encode_text/pack produce): it is part of every key
# that reads tokens (token pools, trained runs, perplexities, the tiny base); tests/test_versions.py guards it.
TOKENIZE_VERSION = 1
IGNORE = -100  # label value the loss skips (PyTorch's cross_entropy default ignore_index)

Sequence_ = tuple[list[int], list[int]]  # (input_ids, labels)


def encode(tok: PreTrainedTokenizerBase, ex: Example) -> Sequence_:
    """Prompt + response + EOS; only response and EOS tokens carry a label (loss on the response)."""
    prompt = tok(ex.prompt, add_special_tokens=False)["input_ids"]
    response = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt + response, [IGNORE] * len(prompt) + response


def encode_text(tok: PreTrainedTokenizerBase, text: str) -> Sequence_:
    """Plain text with every token labelled (for pre-training on the generic corpus)."""
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return ids, list(ids)


def pack(seqs: Sequence[Sequence_], seq_len: int, pad_id: int, max_blocks: int | None = None,
         drop_last: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate sequences and cut them into blocks of `seq_len` (packing wastes no compute on padding).

    With drop_last=False the last partial block is padded with unlabelled pad tokens, so every labelled
    token is kept (what perplexity needs); training drops it instead.
    """
    ids = [t for s in seqs for t in s[0]]
    labels = [t for s in seqs for t in s[1]]
    n = len(ids) // seq_len if drop_last else -(-len(ids) // seq_len)
    if max_blocks is not None:
        n = min(n, max_blocks)
    pad = n * seq_len - len(ids)
    if pad > 0:
        ids += [pad_id] * pad
        labels += [IGNORE] * pad
    x = torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
    y = torch.tensor(labels[: n * seq_len], dtype=torch.long).view(n, seq_len)
    return x, y


def pack_examples(seqs: Sequence[Sequence_], seq_len: int,
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pack(..., drop_last=False)` plus, for every position, the index of the sequence its label belongs to (-1
    for unlabelled positions): per-example losses can be summed back even where a block cuts an example apart,
    so a bootstrap can resample whole examples rather than blocks."""
    x, y = pack(seqs, seq_len, pad_id, drop_last=False)
    owners = [i if label != IGNORE else -1 for i, s in enumerate(seqs) for label in s[1]]
    owners += [-1] * (x.numel() - len(owners))
    return x, y, torch.tensor(owners, dtype=torch.long).view(x.shape)
