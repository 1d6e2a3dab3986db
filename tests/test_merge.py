import torch

from dem.merge import MERGES, get_merge, merge_state, register
from dem.search import apply_weights
from dem.vectors import distribution_vector, load_vector, save_vector
from harness.models import copy_params


def _perturbed(state, seed, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in state.items()}


def test_vectors_roundtrip_through_safetensors_and_merge_is_theta0_plus_weighted_deltas(base_model, tmp_path):
    theta0 = copy_params(base_model)
    tuned = [_perturbed(theta0, s) for s in (1, 2, 3)]
    for i, t in enumerate(tuned):
        save_vector(distribution_vector(theta0, t), tmp_path / f"d{i}.safetensors")
    deltas = [load_vector(tmp_path / f"d{i}.safetensors") for i in range(3)]
    for d, t in zip(deltas, tuned, strict=True):
        for k in theta0:
            assert torch.equal(d[k], t[k] - theta0[k])  # the stored vector is exactly θᵢ − θ₀
    w = [0.7, -0.25, 1.3]
    merged = merge_state(theta0, deltas, w, "dem")
    for k, base in theta0.items():
        expected = base.double() + sum(wi * d[k].double() for wi, d in zip(w, deltas, strict=True))
        torch.testing.assert_close(merged[k].double(), expected, rtol=0, atol=1e-6)
        assert merged[k].dtype == torch.float32 and merged[k].shape == base.shape


def test_zero_weights_give_the_base_exactly_and_inputs_are_not_modified(base_model):
    theta0 = copy_params(base_model)
    deltas = [distribution_vector(theta0, _perturbed(theta0, 5))]
    before = {k: v.clone() for k, v in deltas[0].items()}
    merged = merge_state(theta0, deltas, [0.0])
    assert all(torch.equal(merged[k], theta0[k]) for k in theta0)
    assert all(torch.equal(before[k], deltas[0][k]) for k in before)


def test_apply_weights_writes_the_merge_into_the_live_model(base_model):
    theta0 = copy_params(base_model)
    deltas = [distribution_vector(theta0, _perturbed(theta0, s)) for s in (7, 8)]
    apply_weights(base_model, theta0, deltas, [0.5, 0.5], "dem")
    expected = merge_state(theta0, deltas, [0.5, 0.5])
    live = dict(base_model.named_parameters())
    assert all(torch.equal(live[k], expected[k]) for k in expected)
    # tied embeddings stay tied: the LM head is the same storage as the input embedding
    assert base_model.lm_head.weight.data_ptr() == base_model.model.embed_tokens.weight.data_ptr()


def test_registry_rejects_duplicates_and_names_the_choices():
    assert "dem" in MERGES
    try:
        register("dem")(lambda b, d, w: b)
    except ValueError as err:
        assert "already registered" in str(err)
    else:
        raise AssertionError("duplicate registration was accepted")
    try:
        get_merge("tiess")
    except KeyError as err:
        assert "available: dem" in str(err)
    else:
        raise AssertionError("unknown strategy was accepted")


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
