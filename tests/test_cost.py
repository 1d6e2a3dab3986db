"""Cost accounting: exact matmul and parameter counts for five families against hand-derived formulas, FLOPs
against HF Trainer's own counter (term by term), and memory/disk for OpenLLaMA 7B with pinned numbers."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Trainer,
    TrainingArguments,
    default_data_collator,
)
from transformers.pytorch_utils import Conv1D

from harness.data.tokens import pack
from harness.runs import cost
from harness.runs.trainer import train

V, D, FF, L, A = 300, 32, 80, 3, 4  # vocab, hidden, intermediate, layers, heads of the tiny configs below


def tiny(family: str, tied: bool) -> PretrainedConfig:
    """A tiny config per family, with the variant each family is known for (GQA, head_dim ≠ D/A, qkv biases)."""
    common = {"vocab_size": V, "num_hidden_layers": L, "num_attention_heads": A, "tie_word_embeddings": tied}
    if family == "llama":
        return LlamaConfig(hidden_size=D, intermediate_size=FF, num_key_value_heads=2, **common)
    if family == "mistral":
        return MistralConfig(hidden_size=D, intermediate_size=FF, num_key_value_heads=2, head_dim=16, sliding_window=8,
                             **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=D, intermediate_size=FF, num_key_value_heads=2, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=D, intermediate_size=FF, **common)
    if family == "gpt2":  # n_inner unset: the MLP is 4·D wide
        return GPT2Config(n_embd=D, n_layer=L, n_head=A, vocab_size=V, n_positions=64, tie_word_embeddings=tied)
    raise ValueError(family)


def hand_counts(family: str, tied: bool) -> tuple[int, int, int]:
    """(matmul weights, all parameters, parameters HF Trainer counts) written out from each family's layout.

    Trainer's FLOPs use num_parameters(exclude_embeddings=True): every nn.Embedding weight is left out, and with
    it a tied LM head (the same tensor); norms and biases are counted."""
    head = V * D  # the LM head's matmul, counted by us whether or not it is tied
    untied_head = 0 if tied else V * D
    if family in ("llama", "mistral", "qwen2"):
        head_dim = 16 if family == "mistral" else D // A
        q, kv = A * head_dim, 2 * head_dim  # 2 key/value heads
        per_layer = D * q + 2 * D * kv + q * D + 3 * D * FF  # q, k, v, o; gate, up, down
        elementwise = L * 2 * D + D  # two RMSNorm scales per layer + the final one
        if family == "qwen2":
            elementwise += L * (q + 2 * kv)  # q/k/v biases: added, not multiplied
        embeddings = V * D
    else:
        width = FF if family == "gpt_neox" else 4 * D
        per_layer = 3 * D * D + D * D + 2 * D * width  # fused qkv, attention out; MLP in, out
        elementwise = L * (3 * D + D + width + D + 2 * 2 * D) + 2 * D  # 4 biases, 2 LayerNorms per layer; final LN
        embeddings = V * D + (64 * D if family == "gpt2" else 0)  # GPT-2 also learns 64 position embeddings
    matmul = L * per_layer + head
    params = embeddings + L * per_layer + elementwise + untied_head
    trainer = params - embeddings
    return matmul, params, trainer


FAMILIES = ["llama", "mistral", "qwen2", "gpt_neox", "gpt2"]


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_counts_match_the_hand_formula_and_the_real_model(family, tied):
    config = tiny(family, tied)
    matmul, params, _ = hand_counts(family, tied)
    assert cost.matmul_params(config) == matmul
    assert cost.param_count(config) == params
    model = AutoModelForCausalLM.from_config(config)  # a real CPU model, counted a second way
    assert model.num_parameters() == params
    assert sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear | Conv1D)) == matmul


@pytest.mark.parametrize("kv_heads,tied", [(4, True), (2, False), (1, True)])
def test_matmul_params_match_the_real_model(kv_heads, tied):
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cost.matmul_params(config) == linear


def test_flop_formulas():
    """The formula the reference reports were computed with, pinned (the numbers must not move)."""
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    n = cost.matmul_params(config)
    assert n == 2 * (4 * 16 * 16 + 3 * 16 * 32) + 16 * 100
    assert cost.forward_flops(config, 1000, 64) == 1000 * (2 * n + 4 * 2 * 64 * 16)
    assert cost.forward_flops(config, 1000, 64) == 21_632_000.0
    assert cost.train_flops(config, 1000, 64) == 3 * cost.forward_flops(config, 1000, 64)


def test_attention_term_uses_heads_times_head_dim_and_the_sliding_window():
    mistral = tiny("mistral", tied=False)  # 4 heads × head_dim 16 = 64 ≠ hidden 32; window 8
    m = cost.matmul_params(mistral)
    assert cost.forward_flops(mistral, 10, 32) == 10 * (2 * m + 4 * L * 8 * 64)  # a query sees at most 8 keys
    assert cost.forward_flops(mistral, 10, 4) == 10 * (2 * m + 4 * L * 4 * 64)  # the block is shorter than that
    qwen = Qwen2Config(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=A,
                       use_sliding_window=True, sliding_window=8, max_window_layers=1)  # layers 1 and 2 slide
    assert cost.forward_flops(qwen, 10, 32) == 10 * (2 * cost.matmul_params(qwen) + 4 * (32 + 8 + 8) * D)


def test_counts_follow_the_config_content_not_the_object():
    """Counts are cached per config; a config edited in place must not be served its old count."""
    config = tiny("llama", tied=True)
    before = cost.matmul_params(config)
    config.num_hidden_layers += 1
    assert cost.matmul_params(config) == before + (hand_counts("llama", True)[0] - V * D) // L


def tiny_trainer_run(config: PretrainedConfig, tmp_path, blocks: int, seq_len: int) -> float:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    ids = torch.randint(0, V, (blocks, seq_len))
    rows = [{"input_ids": x, "labels": x} for x in ids]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, num_train_epochs=1,
                             use_cpu=True, report_to="none", save_strategy="no", bf16=False,
                             dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=default_data_collator)
    trainer.train()
    assert trainer.state.global_step == blocks // 2
    return trainer.state.total_flos


@pytest.mark.parametrize("family,tied", [("llama", True), ("gpt2", True), ("gpt_neox", False)])
def test_train_flops_against_hf_trainer_term_by_term(family, tied, tmp_path):
    """Trainer charges 6·tokens·(parameters − embeddings); we charge 6·tokens·(matmul weights) + attention.
    The difference must be exactly: the LM head when tied (a matmul Trainer drops with the embedding), minus the
    norms and biases Trainer counts and we do not (elementwise), plus 3 × the attention-score term."""
    config = tiny(family, tied)
    blocks, seq_len = 4, 16
    tokens = blocks * seq_len
    theirs = tiny_trainer_run(config, tmp_path, blocks, seq_len)
    matmul, _, trainer_params = hand_counts(family, tied)
    assert theirs == 6 * tokens * trainer_params  # we read Trainer's formula right
    ours = cost.train_flops(config, tokens, seq_len)
    head_only_ours = V * D if tied else 0
    elementwise_only_theirs = trainer_params - (matmul - head_only_ours)
    attention = 3 * 4 * L * seq_len * D * tokens
    assert elementwise_only_theirs > 0 and attention > 0  # each term is really there
    assert ours - theirs == 6 * tokens * (head_only_ours - elementwise_only_theirs) + attention


def test_training_records_tokens_and_flops_from_the_config(base_model):
    seqs = [(list(range(2, 40)), list(range(2, 40)))] * 20
    x, y = pack(seqs, 32, pad_id=1)
    rec = train(base_model, x, y, batch_size=4, lr=1e-3, warmup_ratio=0.0, weight_decay=0.0, seed=0)
    assert rec["train_tokens"] == x.numel()
    assert rec["train_flops"] == cost.train_flops(base_model.config, x.numel(), 32)
    assert rec["steps"] == -(-len(x) // 4)
    assert rec["train_wall_s"] > 0 and rec["loss_last"] < rec["loss_first"]


# OpenLLaMA 7B v2's config.json (openlm-research/open_llama_7b_v2), the fields that shape the model.
OPEN_LLAMA_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                            tie_word_embeddings=False)
P_7B = 6_738_415_616


def test_open_llama_7b_counts():
    h, i, layers, vocab = 4096, 11008, 32, 32000
    assert cost.param_count(OPEN_LLAMA_7B) == P_7B == layers * (4 * h * h + 3 * h * i + 2 * h) + h + 2 * vocab * h
    assert cost.matmul_params(OPEN_LLAMA_7B) == 6_607_077_376 == P_7B - vocab * h - (2 * layers + 1) * h


def memory_7b(**kw) -> dict[str, int]:
    args = {"param_dtype": torch.bfloat16, "batch_size": 1, "seq_len": 2048, "gradient_checkpointing": False,
            "n_vectors": 3, "vector_dtype": torch.float32, "vectors_on": "cpu"} | kw
    return cost.estimate_memory(OPEN_LLAMA_7B, **args)


def test_open_llama_7b_memory_in_bf16():
    h, i, a, s, layers = 4096, 11008, 32, 2048, 32
    # Per token per layer, 2-byte activations: attention 2·(h + 2h + 2h) + h mask + 5·a·s (scores, softmax,
    # dropout); SwiGLU MLP 2·(h + 4i) + h mask; two RMSNorm inputs 2·2h  →  18h + 8i + 5as bytes.
    per_token_layer = 18 * h + 8 * i + 5 * a * s
    assert per_token_layer == 489_472
    layer = s * per_token_layer
    logits = s * 32000 * 4
    mem = memory_7b()
    assert mem["weights"] == 2 * P_7B == 13_476_831_232
    assert mem["gradients"] == mem["weights"]
    assert mem["optimizer"] == 2 * mem["weights"]
    assert mem["activations"] == layers * layer + logits == 32_340_180_992
    assert mem["train_peak"] == 4 * mem["weights"] + mem["activations"]
    assert mem["vectors"] == 3 * 4 * P_7B
    assert mem["search_activations"] == logits + layer
    largest = 32000 * 4096  # the embedding (and the untied head): what streaming moves at once, per vector
    assert mem["search_peak_device"] == mem["weights"] + 3 * largest * 4 + mem["search_activations"]
    assert mem["search_peak_host"] == mem["vectors"]
    assert cost.bytes_human(mem["weights"]) == "13.5 GB" and cost.bytes_human(mem["train_peak"]) == "86.2 GB"

    checkpointed = memory_7b(gradient_checkpointing=True)
    assert checkpointed["activations"] == layers * s * h * 2 + layer + logits  # layer inputs + one recomputed
    assert checkpointed["activations"] < mem["activations"] / 15

    on_device = memory_7b(vectors_on="device", vector_dtype=torch.bfloat16)
    assert on_device["search_peak_device"] == mem["weights"] + 3 * 2 * P_7B + mem["search_activations"]
    assert on_device["search_peak_host"] == 2 * P_7B  # one vector passes through the host on its way
    with pytest.raises(ValueError, match="vectors_on must be 'device' or 'cpu'"):
        memory_7b(vectors_on="gpu")


def test_activations_reduce_to_korthikanti_for_a_gpt():
    """For GPT's layout (MHA, 4h MLP, 2-byte activations) the estimate is exactly Korthikanti et al. 2022's
    per-layer s·b·h·(34 + 5as/h), and 2·s·b·h per layer under full recompute (+ one layer being recomputed)."""
    h, a, layers, vocab, b, s = 64, 4, 3, 100, 2, 32
    config = GPT2Config(n_embd=h, n_head=a, n_layer=layers, vocab_size=vocab, n_positions=s)
    layer = 34 * s * b * h + 5 * a * s * s * b
    logits = b * s * vocab * 4
    kw = {"param_dtype": torch.float16, "batch_size": b, "seq_len": s, "n_vectors": 0,
          "vector_dtype": torch.float16, "vectors_on": "device"}
    assert cost.estimate_memory(config, gradient_checkpointing=False, **kw)["activations"] == layers * layer + logits
    full_recompute = 2 * s * b * h * layers
    assert cost.estimate_memory(config, gradient_checkpointing=True, **kw)["activations"] == (
        full_recompute + layer + logits)


def test_open_llama_7b_disk():
    disk = cost.estimate_disk(OPEN_LLAMA_7B, checkpoint_dtype=torch.bfloat16, n_checkpoints=4, n_vectors=3,
                              vector_dtype=torch.float32)
    assert disk == {"checkpoints": 4 * 2 * P_7B, "vectors": 3 * 4 * P_7B, "statistics": 0, "total": 20 * P_7B}
    assert cost.bytes_human(disk["total"]) == "134.8 GB"
    with_stats = cost.estimate_disk(OPEN_LLAMA_7B, checkpoint_dtype=torch.bfloat16, n_checkpoints=4, n_vectors=3,
                                    vector_dtype=torch.float32, statistics=3 * 4 * P_7B)  # e.g. 3 Fisher diagonals
    assert with_stats["statistics"] == 3 * 4 * P_7B and with_stats["total"] == 32 * P_7B


@pytest.mark.parametrize("n,text", [(0, "0 B"), (999, "999 B"), (1000, "1.0 kB"), (999_960, "1.0 MB"),
                                    (13_476_831_232, "13.5 GB"), (2 * 10**18, "2000.0 PB")])
def test_bytes_human(n, text):
    assert cost.bytes_human(n) == text
