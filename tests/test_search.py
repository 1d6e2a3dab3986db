import math

import torch

from dem.merge import merge_state
from dem.search import search_weights, storage_for
from dem.vectors import distribution_vector
from harness.data import generate_splits
from harness.models import copy_params
from harness.perplexity import perplexity
from harness.tokens import encode, pack


def _setup(base_model, tokenizer):
    theta0 = copy_params(base_model)
    g = torch.Generator().manual_seed(0)
    vectors = {n: distribution_vector(theta0, {k: v + 0.01 * torch.randn(v.shape, generator=g)
                                               for k, v in theta0.items()}) for n in ("a", "b")}
    val = {n: pack([encode(tokenizer, e) for e in generate_splits(n, 0, 1, 8, 1).val], 64,
                   tokenizer.pad_token_id, drop_last=False) for n in ("mathqa", "cot")}
    return theta0, vectors, val


def test_search_finds_weights_in_range_leaves_best_merge_and_counts_forward_tokens(base_model, tokenizer, tmp_path):
    theta0, vectors, val = _setup(base_model, tokenizer)
    seen = []
    result = search_weights(base_model, theta0, vectors, val, method="dem", n_trials=4, sampler="random",
                            weight_range=[0.0, 1.0], seed=0, storage=storage_for(None, tmp_path), study_name="s",
                            on_trial=lambda i, w, p: seen.append(p))
    assert result["n_trials"] == 4 and len(seen) == 4
    assert result["val_ppl"] == min(seen)
    assert all(0.0 <= w <= 1.0 for w in result["weights"].values())
    tokens = sum(x.numel() for x, _ in val.values())
    assert result["search_forward_tokens"] == 4 * tokens
    expected = merge_state(theta0, [vectors["a"], vectors["b"]], [result["weights"]["a"], result["weights"]["b"]])
    live = dict(base_model.named_parameters())
    assert all(torch.equal(live[k], expected[k]) for k in expected)
    assert math.isclose(perplexity(base_model, val)["val_ppl"], result["val_ppl"], rel_tol=1e-6)


def test_search_resumes_from_its_journal_without_redoing_trials(base_model, tokenizer, tmp_path):
    theta0, vectors, val = _setup(base_model, tokenizer)
    kwargs = dict(method="dem", sampler="tpe", weight_range=[0.0, 1.0], seed=0, study_name="resume")
    calls = []
    search_weights(base_model, theta0, vectors, val, n_trials=3, storage=storage_for(None, tmp_path),
                   on_trial=lambda i, w, p: calls.append(i), **kwargs)
    result = search_weights(base_model, theta0, vectors, val, n_trials=5, storage=storage_for(None, tmp_path),
                            on_trial=lambda i, w, p: calls.append(i), **kwargs)
    assert calls == [0, 1, 2, 3, 4]  # the second call ran only the two missing trials
    assert result["n_trials"] == 5
    assert (tmp_path / "study.journal").stat().st_size > 0
