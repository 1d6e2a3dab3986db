import math

import optuna
import pytest
import torch

from dem.merge import get_strategy, merge_state
from dem.search import MergeSession, search_weights, storage_for
from dem.vectors import distribution_vector
from harness.data import generate_splits
from harness.models import copy_params
from harness.perplexity import perplexity
from harness.tokens import encode, pack


def _setup(base_model, tokenizer, method="dem", params=None):
    theta0 = copy_params(base_model)
    g = torch.Generator().manual_seed(0)
    vectors = [distribution_vector(theta0, {k: v + 0.01 * torch.randn(v.shape, generator=g)
                                            for k, v in theta0.items()}) for _ in range(2)]
    val = {n: pack([encode(tokenizer, e) for e in generate_splits(n, 0, 1, 16, 1).val], 64,
                   tokenizer.pad_token_id, drop_last=False) for n in ("mathqa", "cot")}
    strategy = get_strategy(method)
    fixed = strategy.resolve(params or {}, 2)
    return theta0, vectors, val, MergeSession(base_model, vectors, strategy, fixed), fixed


def _search(session, fixed, val, tmp_path, **kw):
    args = dict(n_trials=4, sampler="random", weight_range=[0.0, 1.0], searched={}, seed=0,
                storage=storage_for("journal", tmp_path, tmp_path), study_name="s")
    return search_weights(session, ["a", "b"], fixed, val, **{**args, **kw})


def test_search_finds_weights_in_range_leaves_best_merge_and_counts_forward_tokens(base_model, tokenizer, tmp_path):
    theta0, vectors, val, session, fixed = _setup(base_model, tokenizer)
    seen = []
    result = _search(session, fixed, val, tmp_path, on_trial=lambda i, w, p: seen.append(p))
    assert result["n_trials"] == 4 and len(seen) == 4 and result["n_pruned"] == 0
    assert result["val_ppl"] == min(seen)
    assert all(0.0 <= w <= 1.0 for w in result["weights"].values())
    assert result["search_forward_tokens"] == 4 * sum(x.numel() for x, _ in val.values())
    expected = merge_state(theta0, vectors, [result["weights"]["a"], result["weights"]["b"]])
    live = dict(base_model.named_parameters())
    for k in expected:
        torch.testing.assert_close(live[k].detach(), expected[k], rtol=1e-5, atol=1e-7)
    assert math.isclose(perplexity(base_model, val)["val_ppl"], result["val_ppl"], rel_tol=1e-4)


def test_search_resumes_from_its_journal_without_redoing_trials(base_model, tokenizer, tmp_path):
    _, _, val, session, fixed = _setup(base_model, tokenizer)
    calls = []
    _search(session, fixed, val, tmp_path, n_trials=3, sampler="tpe", on_trial=lambda i, w, p: calls.append(i))
    result = _search(session, fixed, val, tmp_path, n_trials=5, sampler="tpe",
                     on_trial=lambda i, w, p: calls.append(i))
    assert calls == [0, 1, 2, 3, 4]  # the second call ran only the two missing trials
    assert result["n_trials"] == 5
    assert (tmp_path / "study.journal").stat().st_size > 0


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "qmc", "gp", "grid"])
def test_every_sampler_runs(base_model, tokenizer, tmp_path, sampler):
    _, _, val, session, fixed = _setup(base_model, tokenizer)
    result = _search(session, fixed, val, tmp_path, n_trials=3, sampler=sampler, grid_points=2,
                     storage=storage_for("memory", tmp_path, tmp_path))
    assert result["n_trials"] == 3
    if sampler == "grid":
        assert all(w in (0.0, 1.0) for w in result["weights"].values())


def test_sqlite_storage_lands_in_the_output_folder(base_model, tokenizer, tmp_path):
    _, _, val, session, fixed = _setup(base_model, tokenizer)
    _search(session, fixed, val, tmp_path, n_trials=2, storage=storage_for("sqlite", tmp_path / "c", tmp_path / "o"))
    assert (tmp_path / "o" / "study.db").exists()
    names = optuna.get_all_study_names(storage=f"sqlite:///{tmp_path / 'o' / 'study.db'}")
    assert names == ["s"]


def test_pruner_stops_hopeless_trials_after_the_first_slice(base_model, tokenizer, tmp_path):
    _, _, val, session, fixed = _setup(base_model, tokenizer)
    full = sum(x.numel() for x, _ in val.values())
    # weights up to 30 make many merges terrible, so the median pruner has something to stop
    result = _search(session, fixed, val, tmp_path, n_trials=16, weight_range=[0.0, 30.0], prune_fraction=0.25)
    assert result["n_pruned"] >= 1
    assert result["n_trials"] + result["n_pruned"] == 16
    assert result["search_forward_tokens"] < 16 * full  # pruned trials stopped early


def test_searched_parameter_is_sampled_in_its_declared_range(base_model, tokenizer, tmp_path):
    _, _, val, session, fixed = _setup(base_model, tokenizer, "ties", {"density": 0.5})
    result = _search(session, fixed, val, tmp_path, n_trials=3, searched={"density": (0.1, 1.0)})
    d = result["params"]["density"]
    assert d[0] == d[1] and 0.1 <= d[0] <= 1.0


def test_drift_guard_200_incremental_trials_stay_on_the_fresh_merge(base_model):
    """θ ← θ + Σ (c′ᵢ − cᵢ)Δᵢ for 200 random trials ends within 1e-5 (relative) of a fresh θ₀ + Σ wᵢΔᵢ."""
    theta0 = copy_params(base_model)
    g = torch.Generator().manual_seed(1)
    vectors = [distribution_vector(theta0, {k: v + 0.05 * torch.randn(v.shape, generator=g)
                                            for k, v in theta0.items()}) for _ in range(3)]
    strategy = get_strategy("dem")
    session = MergeSession(base_model, vectors, strategy, {})
    assert session.theta0 is None  # no copy of θ₀ kept
    for _ in range(200):
        w = (torch.rand(3, generator=g) * 2 - 0.5).tolist()
        session.set(w, {})
    fresh = merge_state(theta0, vectors, w, "dem")
    live = dict(base_model.named_parameters())
    worst = max(((live[k].detach() - fresh[k]).norm() / fresh[k].norm()).item() for k in fresh)
    assert worst < 1e-5, worst


def test_grid_search_over_a_normalised_soup_survives_all_zero_weights(base_model, tokenizer, tmp_path):
    _, _, val, session, fixed = _setup(base_model, tokenizer, "linear")
    result = _search(session, fixed, val, tmp_path, n_trials=4, sampler="grid", grid_points=2,
                     storage=storage_for("memory", tmp_path, tmp_path))
    assert result["n_trials"] == 4 and math.isfinite(result["val_ppl"])
