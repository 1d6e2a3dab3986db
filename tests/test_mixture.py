import pytest
import torch

from baselines.grid import simplex_grid
from baselines.mixture import sample_mixture
from harness.data.builtin import generate_splits
from harness.data.tokens import IGNORE, encode, pack


def _pools():
    # sequences of different lengths per distribution, as real ones are
    return {name: [([i] * length, [i] * length) for i in range(50)]
            for name, length in (("a", 7), ("b", 31), ("c", 60))}


@pytest.mark.parametrize("weights", [{"a": 0.5, "b": 0.25, "c": 0.25}, {"a": 0.1, "b": 0.0, "c": 0.9},
                                     {"a": 1.0, "b": 0.0, "c": 0.0}])
def test_mixture_token_proportions_hold(weights):
    n = 50_000
    seqs = sample_mixture(_pools(), weights, n, seed=0)
    lengths = {7: "a", 31: "b", 60: "c"}
    got = {k: 0 for k in weights}
    for ids, _ in seqs:
        got[lengths[len(ids)]] += len(ids)
    for name, w in weights.items():
        assert abs(got[name] - w * n) <= 60, (name, got)  # overshoot is at most one sequence
    assert sample_mixture(_pools(), weights, n, seed=0) == seqs
    assert sample_mixture(_pools(), weights, n, seed=1) != seqs


def test_mixture_is_shuffled_across_distributions():
    seqs = sample_mixture(_pools(), {"a": 0.5, "c": 0.5}, 6_000, seed=0)
    first_half = {len(s[0]) for s in seqs[: len(seqs) // 2]}
    assert first_half == {7, 60}


def test_simplex_grid_points_sum_to_one_and_count_is_binomial():
    assert len(simplex_grid(["a", "b", "c"], 0.5)) == 6
    assert len(simplex_grid(["a", "b", "c"], 0.25)) == 15
    assert len(simplex_grid(["a", "b", "c", "d"], 0.5)) == 10
    for point in simplex_grid(["a", "b", "c"], 0.1):
        assert abs(sum(point.values()) - 1) < 1e-12 and min(point.values()) >= 0


def test_encode_labels_only_the_response(tokenizer):
    ex = generate_splits("sni", 0, 1, 1, 1).train[0]
    ids, labels = encode(tokenizer, ex)
    n_prompt = len(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[n_prompt:-1]) == ex.response


def test_pack_cuts_blocks_and_pads_only_when_asked():
    seqs = [([1, 2, 3], [IGNORE, 2, 3]), ([4, 5, 6, 7], [4, 5, 6, 7])]
    x, y = pack(seqs, 3, pad_id=0)
    assert x.tolist() == [[1, 2, 3], [4, 5, 6]] and y.tolist() == [[IGNORE, 2, 3], [4, 5, 6]]
    x, y = pack(seqs, 3, pad_id=0, drop_last=False)
    assert x.tolist()[-1] == [7, 0, 0] and y.tolist()[-1] == [7, IGNORE, IGNORE]
    x, _ = pack(seqs, 3, pad_id=0, max_blocks=1)
    assert x.shape == (1, 3) and x.dtype == torch.long
