"""fisher and regmean against FusionBench 0.2.33's own merge functions on state dicts and statistics (tolerance
1e-6, float64). Both agree where the two definitions meet: every weight 1 (the papers' merges), and for RegMean's
tensors without a Gram matrix, weights 1/n (FusionBench averages them; ours merges them as dem does)."""

import pytest
import torch

from dem.merge import merge_state

regmean_api = pytest.importorskip("fusion_bench.method.regmean.regmean", reason="install the test extra: .[test]")
fisher_api = pytest.importorskip("fusion_bench.method.fisher_merging.fisher_merging")

N = 3


def _checkpoints(seed: int = 0):
    """θ₀ and three fine-tunes of a linear layer with a bias and a norm; inputs of different counts per model."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    base = {"layer.weight": randn(6, 4), "layer.bias": randn(6), "norm.weight": randn(4)}
    models = [{k: v + 0.2 * randn(*v.shape) for k, v in base.items()} for _ in range(N)]
    inputs = [randn(10 + 3 * i, 4) for i in range(N)]
    return base, models, inputs, randn


def _vectors(base, models):
    return [{k: m[k] - base[k] for k in base} for m in models]


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_regmean_matches_fusion_bench(alpha):
    base, models, inputs, _ = _checkpoints()
    grams = [x.t() @ x / len(x) for x in inputs]  # FusionBench keeps the per-token mean, as input_gram does
    theirs = regmean_api.merging_with_regmean_weights({k: [m[k] for m in models] for k in base},
                                                      [{"layer": g} for g in grams], reduce_non_diagonal_ratio=alpha)
    stats = {"input_gram": [{"layer.weight": g} for g in grams]}
    ours = merge_state(base, _vectors(base, models), [1.0] * N, "regmean", {"alpha": alpha}, stats=stats)
    torch.testing.assert_close(ours["layer.weight"], theirs["layer.weight"], rtol=1e-6, atol=1e-9)
    averaged = merge_state(base, _vectors(base, models), [1.0 / N] * N, "regmean", {"alpha": alpha}, stats=stats)
    for key in ("layer.bias", "norm.weight"):
        torch.testing.assert_close(averaged[key], theirs[key], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("smoothing", [1e-6, 0.0, 0.3])
def test_fisher_matches_fusion_bench(smoothing):
    base, models, _, randn = _checkpoints(1)
    fishers = [{k: randn(*v.shape).abs() for k, v in base.items()} for _ in range(N)]
    fishers[0]["layer.weight"][0, 0] = 0.0  # a zero Fisher entry, as for a parameter a model's data never used
    theirs = fisher_api.merging_with_fisher_weights({k: [m[k] for m in models] for k in base}, fishers,
                                                    torch.ones(N, dtype=torch.float64), normalize_fisher_weight=False,
                                                    minimal_fisher_weight=smoothing)
    ours = merge_state(base, _vectors(base, models), [1.0] * N, "fisher", {"smoothing": smoothing},
                       stats={"fisher_diag": fishers})
    for key in base:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-9)
