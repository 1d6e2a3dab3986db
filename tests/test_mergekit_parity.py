"""Every strategy that mergekit 0.1.5 also has gives the same tensors as mergekit itself (tolerance 1e-6;
DARE and DELLA draw the same drop mask from the same seed)."""

import pytest
import torch

from dem.merge import STRATEGIES, get_strategy

mergekit_api = pytest.importorskip("mergekit.merge_methods.api", reason="install the test extra: .[test]")

WEIGHTS = [0.6, 0.3, 0.8]
CASES = [  # (our strategy, parameters) — numbers exercise every declared parameter away from its default
    ("dem", {}),
    ("linear", {}),
    ("linear", {"normalize": False}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("task_arithmetic", {"lambda": 1.3, "normalize": True}),
    ("ties", {"density": 0.5}),
    ("ties", {"density": [0.3, 0.6, 0.9], "lambda": 0.8, "normalize": False}),
    ("dare_linear", {"density": 0.5}),
    ("dare_linear", {"density": 0.7, "rescale": False}),
    ("dare_ties", {"density": 0.4, "lambda": 1.1}),
    ("breadcrumbs", {"density": 0.8, "gamma": 0.05}),
    ("della", {"density": 0.5, "epsilon": 0.1}),
]


def _models(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    tuned = [base + 0.05 * torch.randn(shape, generator=g) for _ in WEIGHTS]
    return base, tuned


@pytest.mark.parametrize("shape", [(48, 40), (40,)], ids=["matrix", "vector"])
@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_matches_mergekit(name, params, shape):
    strategy = get_strategy(name)
    base, tuned = _models(shape)
    deltas = [t - base for t in tuned]  # the same subtraction mergekit does
    ours = strategy.merge(base, deltas, WEIGHTS, strategy.resolve(params, len(WEIGHTS)),
                          torch.Generator().manual_seed(1234))

    theirs_params = {"weight": {i + 1: w for i, w in enumerate(WEIGHTS)}}
    for key, value in params.items():
        theirs_params[key] = {i + 1: v for i, v in enumerate(value)} if isinstance(value, list) else value
    torch.manual_seed(1234)
    if name == "linear":
        theirs = mergekit_api.merge_tensors(tuned, "linear", parameters={**theirs_params,
                                            "weight": WEIGHTS})
    elif name == "dem":
        theirs = mergekit_api.merge_tensors([base, *tuned], "task_arithmetic", parameters=theirs_params,
                                            base_index=0)
    else:
        theirs = mergekit_api.merge_tensors([base, *tuned], strategy.mergekit, parameters=theirs_params,
                                            base_index=0)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert not torch.allclose(ours, base)  # the merge did something


def test_every_strategy_with_a_mergekit_twin_is_covered():
    covered = {name for name, _ in CASES}
    assert {s.name for s in STRATEGIES.values() if s.mergekit} <= covered


def test_sparsifying_strategies_really_sparsify():
    base, tuned = _models((100, 100))
    deltas = [t - base for t in tuned]
    for name in ("ties", "dare_linear", "breadcrumbs"):
        s = get_strategy(name)
        prepared = s.prepare(deltas, s.resolve({"density": 0.3}, 3), torch.Generator().manual_seed(0))
        nonzero = [int((d != 0).sum()) for d in prepared]
        if name == "ties":
            assert nonzero == [3000, 3000, 3000]  # exactly int(density * numel) kept
        elif name == "breadcrumbs":
            assert nonzero == [3000, 3000, 3000]
        else:
            assert all(2700 < n < 3300 for n in nonzero)
