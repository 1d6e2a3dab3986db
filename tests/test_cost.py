import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness import cost
from harness.tokens import pack
from harness.training import train


@pytest.mark.parametrize("kv_heads,tied", [(4, True), (2, False), (1, True)])
def test_matmul_params_match_the_real_model(kv_heads, tied):
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cost.matmul_params(config) == linear


def test_flop_formulas():
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    n = cost.matmul_params(config)
    assert n == 2 * (4 * 16 * 16 + 3 * 16 * 32) + 16 * 100
    assert cost.forward_flops(config, 1000, 64) == 1000 * (2 * n + 4 * 2 * 64 * 16)
    assert cost.train_flops(config, 1000, 64) == 3 * cost.forward_flops(config, 1000, 64)


def test_training_records_tokens_and_flops_from_the_config(base_model):
    seqs = [(list(range(2, 40)), list(range(2, 40)))] * 20
    x, y = pack(seqs, 32, pad_id=1)
    rec = train(base_model, x, y, batch_size=4, lr=1e-3, warmup_ratio=0.0, weight_decay=0.0, seed=0)
    assert rec["train_tokens"] == x.numel()
    assert rec["train_flops"] == cost.train_flops(base_model.config, x.numel(), 32)
    assert rec["steps"] == -(-len(x) // 4)
    assert rec["train_wall_s"] > 0 and rec["loss_last"] < rec["loss_first"]
