import pytest
import torch

from dem.merge import STRATEGIES, MergeConfigError, Param, get_strategy, load_strategy_file, merge_state, register
from dem.search import MergeSession
from dem.vectors import VectorIntegrityError, distribution_vector, load_vector, save_vector
from harness.models.loading import copy_params


def _perturbed(state, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}


def test_vectors_roundtrip_through_safetensors_and_merge_is_theta0_plus_weighted_deltas(base_model, tmp_path):
    theta0 = copy_params(base_model)
    tuned = [_perturbed(theta0, s) for s in (1, 2, 3)]
    hashes = [save_vector(distribution_vector(theta0, t), tmp_path / f"d{i}.safetensors")["sha256"]
              for i, t in enumerate(tuned)]
    deltas = [load_vector(tmp_path / f"d{i}.safetensors", h) for i, h in enumerate(hashes)]
    for d, t in zip(deltas, tuned, strict=True):
        for k in theta0:
            assert torch.equal(d[k], t[k] - theta0[k])  # the stored vector is exactly θᵢ − θ₀
    w = [0.7, -0.25, 1.3]
    merged = merge_state(theta0, deltas, w, "dem")
    for k, base in theta0.items():
        expected = base.double() + sum(wi * d[k].double() for wi, d in zip(w, deltas, strict=True))
        torch.testing.assert_close(merged[k].double(), expected, rtol=0, atol=1e-6)
        assert merged[k].dtype == torch.float32 and merged[k].shape == base.shape


def test_a_vector_whose_bytes_changed_is_never_loaded(tmp_path):
    path = tmp_path / "d.safetensors"
    sha = save_vector({"w": torch.ones(4)}, path)["sha256"]
    assert len(sha) == 64
    save_vector({"w": torch.full((4,), 2.0)}, path)  # swapped behind the manifest's back
    with pytest.raises(VectorIntegrityError, match="does not match the manifest"):
        load_vector(path, sha)


def test_merge_is_bit_exact_where_the_arithmetic_is_exact():
    """With dyadic values and power-of-two weights every intermediate is representable in fp32, so any
    correct implementation of θ₀ + Σ wᵢΔᵢ must match the formula bit for bit."""
    g = torch.Generator().manual_seed(0)
    theta0 = {"w": torch.randint(-512, 512, (64, 32), generator=g).float() / 1024}
    deltas = [{"w": torch.randint(-64, 64, (64, 32), generator=g).float() / 1024} for _ in range(3)]
    weights = [0.5, -0.25, 2.0]
    merged = merge_state(theta0, deltas, weights, "dem")["w"]
    expected = theta0["w"] + 0.5 * deltas[0]["w"] - 0.25 * deltas[1]["w"] + 2.0 * deltas[2]["w"]
    assert torch.equal(merged, expected)
    assert not torch.equal(merged, theta0["w"])


def test_zero_weights_give_the_base_exactly_and_inputs_are_not_modified(base_model):
    theta0 = copy_params(base_model)
    deltas = [distribution_vector(theta0, _perturbed(theta0, 5))]
    before = {k: v.clone() for k, v in deltas[0].items()}
    merged = merge_state(theta0, deltas, [0.0])
    assert all(torch.equal(merged[k], theta0[k]) for k in theta0)
    assert all(torch.equal(before[k], deltas[0][k]) for k in before)


@pytest.mark.parametrize("method,params", [("dem", {}), ("task_arithmetic", {"lambda": 0.5, "normalize": True}),
                                           ("ties", {"density": 0.5}), ("dare_linear", {"density": 0.6}),
                                           ("linear", {"normalize": False})])
def test_session_moves_the_live_model_to_the_merge(base_model, method, params):
    theta0 = copy_params(base_model)
    deltas = [distribution_vector(theta0, _perturbed(theta0, s)) for s in (7, 8)]
    strategy = get_strategy(method)
    resolved = strategy.resolve(params, 2)
    session = MergeSession(base_model, deltas, strategy, resolved, seed=3)
    for w in ([0.5, 0.5], [0.9, 0.1], [0.2, 0.7]):
        session.set(w, resolved)
        expected = merge_state(theta0, deltas, w, method, params, seed=3)
        live = dict(base_model.named_parameters())
        for k in expected:
            torch.testing.assert_close(live[k].detach(), expected[k], rtol=1e-5, atol=1e-6)
    # tied embeddings stay tied: the LM head is the same storage as the input embedding
    assert base_model.lm_head.weight.data_ptr() == base_model.model.embed_tokens.weight.data_ptr()
    assert (session.theta0 is None) == (method in ("dem", "task_arithmetic", "dare_linear"))


def test_registry_rejects_duplicates_unknown_names_and_parameters():
    assert {"dem", "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
            "della"} <= set(STRATEGIES)
    with pytest.raises(ValueError, match="already registered"):
        register("dem")(lambda b, d, w, p: b)
    with pytest.raises(MergeConfigError, match=r"unknown merge strategy 'tiess'\. Did you mean 'ties'"):
        get_strategy("tiess")
    with pytest.raises(MergeConfigError, match="merge 'ties' has no parameter 'densty'; it takes: lambda"):
        get_strategy("ties").resolve({"densty": 0.5}, 2)
    assert get_strategy("ties").resolve({}, 2)["density"] == [1.0, 1.0]  # mergekit's default
    assert get_strategy("ties").resolve({}, 2)["normalize"] is True


def test_a_strategy_file_named_in_config_registers_itself(tmp_path):
    plugin = tmp_path / "halfway.py"
    plugin.write_text(
        "from dem.merge import Param, register\n\n"
        "@register('halfway_test', params=[Param('alpha', default=0.5, search=(0.0, 1.0))])\n"
        "def halfway(base, deltas, weights, params):\n"
        "    '''θ₀ + α Σ wᵢΔᵢ'''\n"
        "    return base + params['alpha'] * sum(w * d for w, d in zip(weights, deltas))\n")
    load_strategy_file(str(plugin))
    load_strategy_file(str(plugin))  # idempotent
    s = get_strategy("halfway_test")
    assert s.params == (Param("alpha", default=0.5, search=(0.0, 1.0)),)
    out = merge_state({"w": torch.zeros(3)}, [{"w": torch.ones(3)}], [2.0], "halfway_test")
    assert torch.equal(out["w"], torch.ones(3))
    with pytest.raises(MergeConfigError, match="no such file"):
        load_strategy_file(str(tmp_path / "missing.py"))
