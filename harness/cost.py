"""Compute accounting shared by both arms: one formula, so the two arms can never drift apart.

FLOPs follow the usual dense-transformer estimate (Kaplan et al. 2020; Chowdhery et al. 2022, App. B):
a forward pass costs 2 FLOPs per matmul weight per token plus 4·layers·seq_len·hidden for attention scores
and the weighted sum of values; a training step costs 3x its forward pass (backward ≈ 2x forward).
"""

from __future__ import annotations

from transformers import PretrainedConfig


def matmul_params(config: PretrainedConfig) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections of every layer + LM head.

    The input embedding is a lookup (no FLOPs); the LM head is a matmul even when tied to the embedding.
    """
    d, layers = config.hidden_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    attention = d * config.num_attention_heads * head_dim + 2 * d * kv + config.num_attention_heads * head_dim * d
    mlp = 3 * d * config.intermediate_size  # gate, up, down (SwiGLU)
    return layers * (attention + mlp) + d * config.vocab_size


def forward_flops(config: PretrainedConfig, tokens: int, seq_len: int) -> float:
    """FLOPs of a forward pass over `tokens` tokens fed in blocks of `seq_len`."""
    per_token = 2 * matmul_params(config) + 4 * config.num_hidden_layers * seq_len * config.hidden_size
    return float(per_token) * tokens


def train_flops(config: PretrainedConfig, tokens: int, seq_len: int) -> float:
    """FLOPs of training on `tokens` tokens: forward + backward ≈ 3x forward."""
    return 3.0 * forward_flops(config, tokens, seq_len)
