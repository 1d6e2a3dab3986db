"""Compute, memory and disk accounting shared by both arms: one formula, so the two arms can never drift apart.

FLOPs follow the usual dense-transformer estimate (Kaplan et al. 2020; Chowdhery et al. 2022, App. B):
a forward pass costs 2 FLOPs per matmul weight per token plus 4·layers·keys·d_attn for attention scores and the
weighted sum of values (keys = seq_len, or the sliding window where a layer has a smaller one; the causal mask is
not halved, as in those papers); a training step costs 3x its forward pass (backward ≈ 2x forward).

Any causal LM transformers knows works: the model is built from its config on the `meta` device (no memory, no
weights; ~2 s for a 7B model, cached per config content) and its weights are counted exactly, because hand
formulas per family silently go wrong on the next variant (GQA, qkv biases, untied heads, fused projections).

Known limits of the FLOP count:
* Mixture-of-experts: every expert's weights are counted, so FLOPs are an upper bound (a token runs only
  top-k of them); memory and disk are right, since all experts are resident.
* A module applied twice in one forward (weight sharing across layers) is counted once.
* Padding tokens are charged like any other: cost is per token fed, not per token that carries loss.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from harness.models import lora

# Parameter names of a gated (GLU) MLP's gate: the gate adds two intermediate-sized activations per token.
_GATE_NAMES = frozenset({"gate_proj", "gate_up_proj", "up_gate_proj", "w1", "w3"})


@dataclass(frozen=True)
class _Shape:
    """What the cost formulas need from the instantiated (meta) model."""

    matmul: int  # weights taking part in a matmul per token; a tied LM head counted once, the lookup not at all
    params: int  # unique parameters (a tied tensor once), as stored and trained
    largest: int  # elements of the largest parameter tensor: the unit of streaming vectors to the device
    gated_mlp: bool  # SwiGLU-style MLP (gate, up, down) rather than two matrices


class _ByContent:
    """A config made hashable by its JSON, so the cache follows what the config says, not which object it is
    (configs are mutable; a cache keyed on identity would serve stale counts)."""

    __slots__ = ("config", "key")

    def __init__(self, config: PretrainedConfig) -> None:
        self.config = config
        self.key = (type(config).__qualname__, config.to_json_string(use_diff=False))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByContent) and self.key == other.key


@lru_cache(maxsize=64)
def _shape_cached(key: _ByContent) -> _Shape:
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(copy.deepcopy(key.config))
    except ValueError as err:
        raise ValueError(f"cost accounting builds the model from its config on the meta device, and "
                         f"AutoModelForCausalLM cannot build a {type(key.config).__name__}: {err}") from err
    # Every ≥2-D weight outside an embedding lookup is a matmul operand: nn.Linear, GPT-2's Conv1D, fused MoE
    # expert tensors, routers. 1-D tensors (norm scales, biases) are elementwise. A tied LM head is held by its
    # Linear module and counted there, once; the embedding module that shares it is skipped.
    matmul = sum(p.numel() for m in model.modules() if not isinstance(m, torch.nn.Embedding)
                 for p in m.parameters(recurse=False) if p.ndim >= 2)
    params = list(model.parameters())  # deduplicates tied tensors
    gated = any(_GATE_NAMES & set(name.split(".")) for name, _ in model.named_parameters())
    return _Shape(matmul=matmul, params=sum(p.numel() for p in params),
                  largest=max((p.numel() for p in params), default=0), gated_mlp=gated)


def _shape(config: PretrainedConfig) -> _Shape:
    return _shape_cached(_ByContent(config))


def _attention_dims(config: PretrainedConfig) -> tuple[int, int, int]:
    """(query heads, head_dim, key/value heads), via the config's attribute map (GPT-2's n_head/n_embd too)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return heads, head_dim, kv_heads


def _keys_per_layer(config: PretrainedConfig, seq_len: int) -> list[int]:
    """How many keys a query attends to in each layer: seq_len, or the sliding window where that is smaller.

    `layer_types` (Qwen2, Gemma 2/3, …) marks the sliding layers; without it a set `sliding_window` (Mistral,
    Mixtral, Phi-3) applies to every layer."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return [min(seq_len, window) if t == "sliding_attention" and window else seq_len for t in layer_types]
    return [min(seq_len, window) if window else seq_len] * config.num_hidden_layers


def matmul_params(config: PretrainedConfig) -> int:
    """Weights that take part in a matmul per token: attention and MLP projections of every layer + LM head.

    The input embedding is a lookup (no FLOPs); the LM head is a matmul even when tied to the embedding.
    Biases and norm scales are elementwise and not counted.
    """
    return _shape(config).matmul


def param_count(config: PretrainedConfig) -> int:
    """All parameters, a tied tensor once: what is stored, trained and merged."""
    return _shape(config).params


def forward_flops(config: PretrainedConfig, tokens: int, seq_len: int) -> float:
    """FLOPs of a forward pass over `tokens` tokens fed in blocks of `seq_len`."""
    heads, head_dim, _ = _attention_dims(config)
    per_token = 2 * matmul_params(config) + 4 * heads * head_dim * sum(_keys_per_layer(config, seq_len))
    return float(per_token) * tokens


def train_flops(config: PretrainedConfig, tokens: int, seq_len: int, adapter_params: int | None = None) -> float:
    """FLOPs of training on `tokens` tokens: forward + backward ≈ 3x forward (full fine-tuning).

    With LoRA (`adapter_params` = the adapters' parameter count, `lora_params`) only what is computed is counted.
    Per token, with N matmul weights and A = 4·layers·keys·d_attn the attention term of the forward pass:
    frozen weights cost 2N forward and 2N backward (the gradient of their input, which reaches the adapters
    below; their own weight gradient, another 2N, is never computed, as autograd skips gradients no leaf needs);
    attention has no weights, so its backward is still ≈ 2A (3A in all); each adapter weight costs 2 forward,
    2 input-gradient and 2 weight-gradient FLOPs. So LoRA ≈ 4N + 3A + 6·n_adapter against 6N + 3A for full,
    ≈ 2/3 of it for a small rank (the backward split follows Kaplan et al. 2020, §2.1: backward ≈ 2x forward,
    half for input gradients, half for weight gradients; tests/test_lora.py checks it against torch's
    FlopCounterMode on the micro model). Left out: the first layer's input gradient, which nothing needs
    (a slight overcount) and the adapters' scaling and addition (elementwise)."""
    if adapter_params is None:
        return 3.0 * forward_flops(config, tokens, seq_len)
    heads, head_dim, _ = _attention_dims(config)
    attention = 4 * heads * head_dim * sum(_keys_per_layer(config, seq_len))
    return float(4 * matmul_params(config) + 3 * attention + 6 * adapter_params) * tokens


@lru_cache(maxsize=64)
def _lora_params_cached(key: _ByContent, r: int, targets: tuple[str, ...]) -> int:
    return sum(r * (n_in + n_out) for name, (n_in, n_out) in lora.layers(key.config).linear.items()
               if lora.matches(name, targets))


def lora_params(config: PretrainedConfig, r: int, target_modules: list[str]) -> int:
    """Parameters of LoRA adapters of rank r on every linear layer (nn.Linear, GPT-2's Conv1D) that `target_modules`
    names (A: r x in, B: out x r), counted on the meta model as peft would place them."""
    return _lora_params_cached(_ByContent(config), r, tuple(target_modules))



def layer_activation_bytes(config: PretrainedConfig, *, dtype: torch.dtype, batch_size: int, seq_len: int) -> int:
    """Bytes one decoder layer keeps for its backward pass (Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models", §4.1), generalised beyond GPT's 2-byte, 4h-MLP, MHA case.

    Per token, with e = bytes per activation element, h = hidden, a = heads, s = seq_len:
    attention e·(h + 2·d_attn + 2·d_kv) + h (dropout mask) + a·s·(2e + 1) (scores, softmax, dropout);
    MLP e·(h + k·i) + h with k = 2 intermediate tensors (fc out, activation out) or 4 for a gated MLP
    (gate, up, act(gate), product); two norms' inputs 2·e·h. For GPT (e=2, d_attn=d_kv=h, i=4h, k=2) this is
    exactly the paper's s·b·h·(34 + 5·a·s/h). The s² term assumes eager attention, which stores the scores;
    fused (flash / memory-efficient SDPA) kernels recompute them, so it overestimates those.
    """
    e = dtype.itemsize
    h = config.hidden_size
    heads, head_dim, kv_heads = _attention_dims(config)
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    k = 4 if _shape(config).gated_mlp else 2
    attention = e * (h + 2 * heads * head_dim + 2 * kv_heads * head_dim) + h + heads * seq_len * (2 * e + 1)
    mlp = e * (h + k * intermediate) + h
    norms = 2 * e * h
    return batch_size * seq_len * (attention + mlp + norms)


def estimate_memory(config: PretrainedConfig, *, param_dtype: torch.dtype, batch_size: int, seq_len: int,
                    gradient_checkpointing: bool, n_vectors: int, vector_dtype: torch.dtype,
                    vectors_on: str, adapter_params: int | None = None,
                    search_adapters: bool = False) -> dict[str, int]:
    """Peak bytes of a full fine-tune and of the DEM coefficient search, to print a plan before training.

    Training: weights, gradients (parameter dtype), AdamW's two states per parameter (torch keeps them in the
    parameter dtype), activations = per-layer bytes (`layer_activation_bytes`) × layers, or with gradient
    checkpointing (full recompute per layer) each layer's input e·b·s·h plus one layer recomputed during its
    backward, plus the logits b·s·vocab in fp32. `train_peak` is their sum. With LoRA (`adapter_params` set)
    the frozen weights get no gradient and no optimizer state: weights are the base's plus the adapters', and
    gradients and AdamW's states cover the adapters only; activations are kept as for full training (an upper
    bound: a frozen linear layer's input is not needed for its backward, but the adapter beside it keeps it).
    Search: `vectors` = n_vectors distribution vectors. On the device: the weights, the vectors if
    `vectors_on == "device"` or, if "cpu", one tensor of every vector streamed at a time (the largest
    parameter), and one forward pass's activations (fp32 logits + one layer). On the host: the vectors if they
    live there, else one vector (safetensors loads it on the host before it moves). With `search_adapters` (LoRA
    runs and only strategies that are θ₀ + Σ cᵢΔᵢ: dem.adapter_merge) no dense vector exists: `vectors` is the
    one rank-Σr adapter on the device plus the copy of every B it rescales from, bounded by twice the n_vectors
    adapters' parameters in the parameter dtype, and `dem.vectors_on` does not apply; the host holds one
    adapter file as read.

    Left out: the CUDA context and allocator fragmentation (often 0.5–2 GB more), fp32 master weights and
    AMP's casts (the dtype is taken as the training dtype), the loss's extra copies of the logits (an upcast and
    their gradient can double or triple that term), tokenizer and data, and the θ₀ copy that strategies which
    are not θ₀ + Σ cᵢΔᵢ (sign consensus) keep on the device during the search (another `weights`).
    """
    if vectors_on not in ("device", "cpu"):
        raise ValueError(f"vectors_on must be 'device' or 'cpu', not {vectors_on!r}")
    shape = _shape(config)
    weights = shape.params * param_dtype.itemsize
    layer = layer_activation_bytes(config, dtype=param_dtype, batch_size=batch_size, seq_len=seq_len)
    logits = batch_size * seq_len * config.vocab_size * torch.float32.itemsize
    layers = config.num_hidden_layers
    if gradient_checkpointing:
        kept = layers * batch_size * seq_len * config.hidden_size * param_dtype.itemsize + layer
    else:
        kept = layers * layer
    activations = kept + logits
    trained = weights if adapter_params is None else adapter_params * param_dtype.itemsize
    train = {"weights": weights + (0 if adapter_params is None else trained), "gradients": trained,
             "optimizer": 2 * trained, "activations": activations}
    search_activations = logits + layer
    if search_adapters:
        if adapter_params is None:
            raise ValueError("search_adapters needs adapter_params (the LoRA runs' adapter size)")
        vectors = 2 * n_vectors * adapter_params * param_dtype.itemsize
        streamed, host = vectors, min(n_vectors, 1) * adapter_params * torch.float32.itemsize
    else:
        one_vector = shape.params * vector_dtype.itemsize
        vectors = n_vectors * one_vector
        streamed = vectors if vectors_on == "device" else n_vectors * shape.largest * vector_dtype.itemsize
        host = vectors if vectors_on == "cpu" else min(n_vectors, 1) * one_vector
    return {
        **train,
        "train_peak": sum(train.values()),
        "vectors": vectors,
        "search_activations": search_activations,
        "search_peak_device": weights + streamed + search_activations,
        "search_peak_host": host,
    }


def estimate_disk(config: PretrainedConfig, *, checkpoint_dtype: torch.dtype, n_checkpoints: int, n_vectors: int,
                  vector_dtype: torch.dtype, checkpoint_params: int | None = None,
                  statistics: int = 0) -> dict[str, int]:
    """Bytes on disk: the fine-tuned checkpoints and the distribution vectors (safetensors stores a tied tensor
    once; headers, tokenizer files, optimizer states and the run cache's bookkeeping are left out).
    `checkpoint_params`: what one run stores when it is not the whole model (a LoRA adapter); vectors stay dense.
    `statistics`: the bytes of the per-model statistics data-aware merges store (dem.statistics.stored_bytes)."""
    params = param_count(config)
    stored = params if checkpoint_params is None else checkpoint_params
    checkpoints = n_checkpoints * stored * checkpoint_dtype.itemsize
    vectors = n_vectors * params * vector_dtype.itemsize
    return {"checkpoints": checkpoints, "vectors": vectors, "statistics": statistics,
            "total": checkpoints + vectors + statistics}


def bytes_human(n: int) -> str:
    """A byte count in decimal units (1 GB = 10⁹ B, as model cards and disks state sizes), e.g. "13.5 GB"."""
    units = ("B", "kB", "MB", "GB", "TB", "PB")
    value, i = float(n), 0
    while abs(round(value, 1)) >= 1000 and i < len(units) - 1:
        value, i = value / 1000, i + 1
    return f"{n} B" if i == 0 else f"{value:.1f} {units[i]}"
