"""harness.stats.intervals on synthetic per-item data with known answers: CIs, paired tests, perplexity, ECE, seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import intervals as stats
from harness.stats.intervals import (
    bootstrap_ci,
    choice_confidence,
    expected_calibration_error,
    mcnemar,
    mean_of_ratios,
    paired_difference,
    paired_log_ppl_difference,
    paired_mean_over_tasks,
    ppl_with_ci,
    ratio_of_sums,
    t_interval,
    win_tie_loss,
)


def bernoulli(p: float, n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


# ------------------------------------------------------------------------------------------- bootstrap CI


def test_bootstrap_ci_of_a_constant_is_degenerate():
    assert bootstrap_ci([0.7] * 50, n_boot=500) == pytest.approx((0.7, 0.7))
    low, high = bootstrap_ci([1, 1, 1], n_boot=100)
    assert low == high == 1.0


def test_bootstrap_ci_brackets_the_mean_and_matches_scipy_percentile():
    x = bernoulli(0.7, 300, seed=3)
    low, high = bootstrap_ci(x, n_boot=5000, seed=1)
    assert low < x.mean() < high
    ref = sps.bootstrap((x,), np.mean, n_resamples=5000, method="percentile", random_state=1).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.01) and high == pytest.approx(ref.high, abs=0.01)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    hits = 0
    for rep in range(200):
        low, high = bootstrap_ci(bernoulli(0.7, 200, seed=rep), n_boot=1000, seed=rep)
        hits += low <= 0.7 <= high
    assert 0.89 <= hits / 200 <= 0.99  # binomial SE of the coverage over 200 repetitions ≈ 1.5 points


def test_bootstrap_ci_width_shrinks_like_one_over_sqrt_n():
    def width(n: int) -> float:
        x = np.zeros(n)
        x[: int(0.7 * n)] = 1.0  # exactly 70% correct, so only n changes
        low, high = bootstrap_ci(x, n_boot=4000, seed=0)
        return high - low

    assert width(400) / width(1600) == pytest.approx(2.0, rel=0.1)


def test_same_seed_same_output_and_chunking_does_not_matter(monkeypatch):
    a, b = bernoulli(0.6, 500, 1), bernoulli(0.5, 500, 2)
    first = paired_difference(a, b, n_boot=2000, seed=7)
    assert paired_difference(a, b, n_boot=2000, seed=7) == first
    assert paired_difference(a, b, n_boot=2000, seed=8) != first
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1234)  # many small chunks: the same random stream
    assert paired_difference(a, b, n_boot=2000, seed=7) == first


# ------------------------------------------------------------------------------------------- paired tests


def test_identical_models_give_zero_difference_and_p_one():
    a = bernoulli(0.6, 100, seed=0).tolist()
    res = paired_difference(a, a, n_boot=1000)
    assert (res["diff"], res["low"], res["high"], res["p_value"]) == (0.0, 0.0, 0.0, 1.0)
    assert res["n"] == 100 and res["method"] == "paired-bootstrap"
    mc = mcnemar(a, a)
    assert (mc["b10"], mc["b01"], mc["p_value"], mc["diff"]) == (0, 0, 1.0, 0.0)


def test_model_right_wherever_the_other_is_wrong_is_significant():
    b = bernoulli(0.5, 50, seed=4)
    a = np.ones(50)  # right on every item b gets wrong, and on the rest
    res = paired_difference(a, b)
    assert res["diff"] == pytest.approx(1 - b.mean())
    assert res["low"] > 0 and res["p_value"] < 0.001
    assert res["p_value"] == pytest.approx(2 / 10_001)  # the smallest p 10k resamples can report
    mc = mcnemar(a, b)
    assert (mc["b10"], mc["b01"]) == (int((b == 0).sum()), 0)
    assert mc["p_value"] < 0.001
    # exactly opposite answers: every item discordant, all in a's favour
    assert mcnemar([True] * 50, [False] * 50)["p_value"] == pytest.approx(2 * 0.5**50)


def test_mcnemar_hand_case():
    # b10 = 3 (a right, b wrong), b01 = 1: two-sided exact binomial P = 2·P(X ≥ 3 | n=4) = 2·5/16
    res = mcnemar([1, 1, 1, 0, 1, 0], [0, 0, 0, 1, 1, 0])
    assert (res["b10"], res["b01"], res["n"]) == (3, 1, 6)
    assert res["p_value"] == pytest.approx(0.625)
    assert res["diff"] == pytest.approx(2 / 6)


def test_paired_bootstrap_p_value_agrees_with_its_ci_and_with_mcnemar():
    for seed, pb in enumerate([0.70, 0.66, 0.60, 0.55]):
        a, b = bernoulli(0.7, 400, 100 + seed), bernoulli(pb, 400, 200 + seed)
        res = paired_difference(a, b, n_boot=4000, seed=seed)
        excludes_zero = res["low"] > 0 or res["high"] < 0
        assert (res["p_value"] < 0.05) == excludes_zero
        assert res["p_value"] == pytest.approx(mcnemar(a, b)["p_value"], abs=0.05)


def test_paired_difference_works_for_continuous_per_item_metrics():
    rng = np.random.default_rng(0)
    f1_b = rng.random(300)
    res = paired_difference(f1_b + 0.05, f1_b, n_boot=500)
    assert res["diff"] == pytest.approx(0.05)
    assert res["low"] == pytest.approx(0.05) and res["high"] == pytest.approx(0.05)


# ------------------------------------------------------------------------------------------- over tasks


def test_mean_over_tasks_is_the_unweighted_mean_of_per_task_differences():
    pairs = {
        "big": (bernoulli(0.7, 1000, 1), bernoulli(0.6, 1000, 2)),
        "small": (bernoulli(0.4, 50, 3).tolist(), bernoulli(0.5, 50, 4).tolist()),
        "mid": (bernoulli(0.8, 200, 5), bernoulli(0.8, 200, 6)),
    }
    res = paired_mean_over_tasks(pairs, n_boot=2000, seed=3)
    per_task = [paired_difference(a, b, n_boot=10)["diff"] for a, b in pairs.values()]
    assert res["diff"] == pytest.approx(np.mean(per_task))
    assert res["low"] < res["diff"] < res["high"]
    assert (res["n_tasks"], res["n"], res["method"]) == (3, 1250, "stratified-paired-bootstrap")
    assert paired_mean_over_tasks(dict(reversed(pairs.items())), n_boot=2000, seed=3) == res


def test_mean_over_one_task_is_the_paired_difference():
    a, b = bernoulli(0.7, 300, 1), bernoulli(0.6, 300, 2)
    one = paired_mean_over_tasks({"t": (a, b)}, n_boot=1000, seed=5)
    ref = paired_difference(a, b, n_boot=1000, seed=5)
    assert {k: one[k] for k in ("diff", "low", "high", "p_value", "n")} == {
        k: ref[k] for k in ("diff", "low", "high", "p_value", "n")}


def test_mean_over_tasks_of_identical_models():
    a = bernoulli(0.6, 80, 0)
    res = paired_mean_over_tasks({"x": (a, a), "y": (a[:30], a[:30])}, n_boot=500)
    assert (res["diff"], res["low"], res["high"], res["p_value"]) == (0.0, 0.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------------- perplexity


def test_ppl_pooled_value_and_ci():
    assert ppl_with_ci([2.0, 4.0], [1, 3], n_boot=200)["ppl"] == pytest.approx(math.exp(6 / 4))
    empty_block = ppl_with_ci([2.0, 0.0, 4.0], [1, 0, 3], n_boot=200)  # all labels ignored: counts for nothing
    assert empty_block["ppl"] == pytest.approx(math.exp(6 / 4)) and empty_block["n"] == 2
    rng = np.random.default_rng(0)
    tokens = rng.integers(50, 200, size=300)
    nll = tokens * rng.normal(2.5, 0.3, size=300)
    res = ppl_with_ci(nll, tokens, n_boot=2000)
    assert res["ppl"] == pytest.approx(math.exp(nll.sum() / tokens.sum()))
    assert res["low"] < res["ppl"] < res["high"]
    assert (res["n"], res["tokens"]) == (300, int(tokens.sum()))


def test_paired_log_ppl_difference():
    rng = np.random.default_rng(1)
    tokens = rng.integers(50, 200, size=200)
    nll = tokens * rng.normal(2.5, 0.3, size=200)
    same = paired_log_ppl_difference(nll, nll, tokens, n_boot=500)
    assert (same["diff"], same["low"], same["high"], same["p_value"], same["ratio"]) == (0.0, 0.0, 0.0, 1.0, 1.0)
    # a is worse by exactly 0.1 nats per token on every sequence: ratio e^0.1, a degenerate CI
    worse = paired_log_ppl_difference(nll + 0.1 * tokens, nll, tokens.tolist(), n_boot=500)
    assert worse["diff"] == pytest.approx(0.1) and worse["ratio"] == pytest.approx(math.exp(0.1))
    assert worse["ratio_low"] == pytest.approx(math.exp(0.1)) and worse["ratio_high"] == pytest.approx(math.exp(0.1))
    assert worse["p_value"] < 0.01
    noisy = paired_log_ppl_difference(nll + tokens * rng.normal(0.02, 0.1, size=200), nll, tokens, n_boot=2000)
    assert noisy["low"] < noisy["diff"] < noisy["high"]
    assert noisy["ratio_low"] < noisy["ratio"] < noisy["ratio_high"]


# ------------------------------------------------------------------------------------------- ratios (retention)


def test_ratio_of_sums_is_the_ratio_of_means_and_pairs_the_items():
    """A model scoring exactly half the reference on every item: 0.5 on every resample, if and only if numerator
    and denominator are resampled together."""
    b = bernoulli(0.7, 60, seed=3) + 1.0
    half = ratio_of_sums(b / 2, b, n_boot=2000)
    assert half["value"] == pytest.approx(0.5) and (half["low"], half["high"]) == pytest.approx((0.5, 0.5))
    a = bernoulli(0.5, 60, seed=4)
    r = ratio_of_sums(a, b, n_boot=2000, seed=1)
    assert r["value"] == pytest.approx(a.mean() / b.mean())
    assert r["low"] < r["value"] < r["high"] and r["n"] == 60 and r["method"] == "paired-bootstrap"


def test_a_perplexity_ratio_is_the_inverse_of_the_paired_log_ppl_ratio():
    """ppl(b) ÷ ppl(a) from exp(Σ(nll_b − nll_a) / Σ tokens): the same replicates as paired_log_ppl_difference
    (same seed), so its value and ends are the inverses of that ratio's."""
    rng = np.random.default_rng(2)
    tokens = rng.integers(5, 40, size=80)
    nll_a = tokens * rng.normal(2.0, 0.3, size=80)
    nll_b = nll_a + tokens * rng.normal(0.1, 0.2, size=80)
    mine = ratio_of_sums(nll_b - nll_a, tokens, log_ratio=True, n_boot=3000, seed=5)
    ref = paired_log_ppl_difference(nll_a, nll_b, tokens, n_boot=3000, seed=5)
    assert mine["value"] == pytest.approx(1 / ref["ratio"])
    assert (mine["low"], mine["high"]) == pytest.approx((1 / ref["ratio_high"], 1 / ref["ratio_low"]))


def test_a_ratio_of_means_over_tasks_keeps_the_task_sizes():
    """Items weighted 1/(task size) and resampled within their task: the value is mean-over-tasks ÷
    mean-over-tasks, and tasks whose items are all alike leave no spread."""
    x = np.array([1.0 / 30] * 30 + [1.0 / 3] * 3)  # the model: 1.0 on each of the 30 items, 1.0 on each of the 3
    y = np.array([0.5 / 30] * 30 + [1.0 / 3] * 3)  # the base: 0.5 on each of the 30 items, 1.0 on each of the 3
    strata = ["big"] * 30 + ["small"] * 3
    r = ratio_of_sums(x, y, strata=strata, n_boot=500)
    assert r["value"] == pytest.approx((1.0 + 1.0) / (0.5 + 1.0))
    assert (r["low"], r["high"]) == pytest.approx((r["value"], r["value"])) and r["method"].startswith("stratified")
    pooled = ratio_of_sums(x, y, n_boot=500)  # resampled across tasks, the task sizes (and so the ratio) vary
    assert pooled["high"] - pooled["low"] > 0.05


def test_mean_of_ratios_by_hand_and_for_one_part():
    a, b = bernoulli(0.5, 40, seed=6), bernoulli(0.8, 40, seed=7) + 0.5
    one = mean_of_ratios({"d": (a, b)}, n_boot=1000, seed=2)
    alone = ratio_of_sums(a, b, n_boot=1000, seed=2)
    assert (one["value"], one["low"], one["high"]) == pytest.approx((alone["value"], alone["low"], alone["high"]))
    tokens = np.array([3, 4, 5])
    two = mean_of_ratios({"task": ([0.5, 0.5], [1.0, 1.0]), "ppl": (-0.1 * tokens, tokens)}, log_ratio=["ppl"],
                         n_boot=500)
    assert two["value"] == pytest.approx((0.5 + math.exp(-0.1)) / 2) and two["n_parts"] == 2 and two["n"] == 5
    assert two["low"] == pytest.approx(two["value"]) == pytest.approx(two["high"])  # every item alike per part


def test_a_reference_scoring_zero_on_a_resample_leaves_the_interval_unbounded():
    """b is 0 on 4 of 5 items: about 1 replicate in 3 draws none of its 1, so Σb* = 0 there and the ratio is
    infinite; the upper end is then infinite, not a number interpolated from infinities (NaN)."""
    r = ratio_of_sums([1, 1, 1, 1, 1], [0, 0, 0, 0, 1], n_boot=2000)
    assert r["value"] == 5.0 and r["high"] == math.inf and 0 < r["low"] <= 5.0
    both = ratio_of_sums([0, 0, 0, 0, 1], [0, 0, 0, 0, 1], n_boot=2000)  # 0/0 replicates are undefined: left out
    assert (both["value"], both["low"], both["high"]) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------- calibration


def test_stratified_ppl_keeps_each_replicate_s_mix_of_distributions():
    """Two distributions whose examples are each identical: resampled within each distribution, every replicate
    is the observed sample, so the CI collapses to the point; pooled resampling mixes them differently each time."""
    nll = [2.0] * 10 + [30.0] * 5
    tokens = [4] * 10 + [10] * 5
    strata = ["a"] * 10 + ["b"] * 5
    flat = ppl_with_ci(nll, tokens, n_boot=500, seed=0)
    strat = ppl_with_ci(nll, tokens, n_boot=500, seed=0, strata=strata)
    assert strat["ppl"] == pytest.approx(flat["ppl"]) == pytest.approx(math.exp(170 / 90))
    assert strat["low"] == pytest.approx(strat["high"]) == pytest.approx(strat["ppl"])
    assert flat["high"] / flat["low"] > 1.1
    d = stats.paired_log_ppl_difference(nll, [n - 1 for n in nll], tokens, n_boot=500, strata=strata)
    assert d["low"] == pytest.approx(d["high"]) == pytest.approx(15 / 90) and d["method"].startswith("stratified")
    with pytest.raises(ValueError, match="strata"):
        ppl_with_ci(nll, tokens, strata=["a"])


def test_ece_hand_cases():
    assert expected_calibration_error([1.0] * 5, [1] * 5) == 0.0
    assert expected_calibration_error([0.8] * 5, [1, 1, 1, 1, 0]) == pytest.approx(0.0)
    # bin (0.8, 0.9]: 4 items, acc 0.5, gap 0.4; bin (0.2, 0.3]: 6 items, acc 0.5, gap 0.2 → 0.4·0.4 + 0.6·0.2
    conf = [0.9] * 4 + [0.3] * 6
    corr = [1, 1, 0, 0, 1, 1, 1, 0, 0, 0]  # 2/4 then 3/6 correct
    assert expected_calibration_error(conf, corr) == pytest.approx(0.28)
    assert expected_calibration_error(conf, corr, n_bins=1) == pytest.approx(abs(0.5 - 0.54))


def test_ece_bins_are_right_closed_and_zero_goes_to_the_first_bin():
    # 0.1 shares (0, 0.1] with 0.05: one bin, acc 0.5, conf 0.075 → 0.425 (separate bins would give 0.475)
    assert expected_calibration_error([0.05, 0.1], [0, 1]) == pytest.approx(0.425)
    assert expected_calibration_error([0.0, 0.1], [0, 1]) == pytest.approx(0.45)  # one bin: |0.5 − 0.05|
    assert expected_calibration_error([0.3, 0.3], [1, 1]) == pytest.approx(0.7)


def test_choice_confidence():
    lls = [
        np.log([0.2, 0.5, 0.3]).tolist(),  # predicts 1 with p 0.5, target 1
        [0.0, 0.0],  # tie: first max (0), p 0.5, target 1 → wrong
        [-1.0, -2.0],  # unnormalised: p = 1 / (1 + e^-1)
        [-3.0],  # a single choice is certain
    ]
    conf, correct = choice_confidence(lls, [1, 1, 0, 0])
    assert conf == pytest.approx([0.5, 0.5, 1 / (1 + math.exp(-1)), 1.0])
    assert correct.tolist() == [True, False, True, True]
    assert expected_calibration_error(conf, correct) >= 0


# ------------------------------------------------------------------------------------------- across seeds


def test_t_interval_against_scipy():
    res = t_interval([1.0, 2.0, 3.0, 4.0])
    low, high = sps.t.interval(0.95, df=3, loc=2.5, scale=np.std([1, 2, 3, 4], ddof=1) / 2)
    assert res["low"] == pytest.approx(low) and res["high"] == pytest.approx(high)
    assert res["low"] == pytest.approx(0.44574, abs=1e-5) and res["high"] == pytest.approx(4.55426, abs=1e-5)
    assert (res["mean"], res["n"]) == (2.5, 4) and res["sd"] == pytest.approx(1.290994)
    same = t_interval([0.5, 0.5, 0.5])
    assert (same["low"], same["high"], same["sd"]) == (0.5, 0.5, 0.0)


def test_t_interval_of_one_seed_has_no_interval():
    res = t_interval([0.61])
    assert res["mean"] == 0.61 and res["n"] == 1
    assert math.isnan(res["low"]) and math.isnan(res["high"]) and math.isnan(res["sd"])


def test_win_tie_loss():
    assert win_tie_loss([0.5, 0.6, 0.7, 0.4], [0.4, 0.6, 0.8, 0.4]) == (1, 2, 1)
    assert win_tie_loss([0.50, 0.61, 0.70], [0.49, 0.60, 0.80], tol=0.02) == (0, 2, 1)


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_ci([]), "values: is empty"),
        (lambda: bootstrap_ci([[1, 0], [0, 1]]), "expected a 1-D sequence"),
        (lambda: bootstrap_ci([1, float("nan")]), "NaN or infinite"),
        (lambda: bootstrap_ci(["a", "b"]), "expected a 1-D sequence of numbers"),
        (lambda: bootstrap_ci([1, 0], n_boot=0), "n_boot=0"),
        (lambda: bootstrap_ci([1, 0], alpha=1.5), "alpha=1.5"),
        (lambda: paired_difference([1, 0], [1]), "lengths 2 != 1"),
        (lambda: mcnemar([1, 0.5], [1, 0]), "a_correct: expected 0/1"),
        (lambda: paired_mean_over_tasks({}), "pairs: is empty"),
        (lambda: paired_mean_over_tasks({"t": ([1, 0],)}), "pairs['t']: expected (a, b)"),
        (lambda: paired_mean_over_tasks({"t": ([1, 0], [1])}), "lengths 2 != 1"),
        (lambda: ppl_with_ci([1.0, 2.0], [3, 0]), "0 scored tokens must have nll 0"),
        (lambda: ppl_with_ci([0.0], [0]), "no sequence has a scored token"),
        (lambda: ppl_with_ci([1.0], [2.5]), "non-negative integers"),
        (lambda: ppl_with_ci([-1.0], [3]), "must be >= 0"),
        (lambda: paired_log_ppl_difference([1.0], [1.0, 2.0], [3, 4]), "lengths 1 != 2"),
        (lambda: expected_calibration_error([1.2], [1]), "must lie in [0, 1]"),
        (lambda: expected_calibration_error([0.5], [1], n_bins=0), "n_bins=0"),
        (lambda: expected_calibration_error([0.5, 0.4], [1]), "lengths 2 != 1"),
        (lambda: choice_confidence([], []), "loglikelihoods: is empty"),
        (lambda: choice_confidence([[0.0, 1.0]], [2]), "target[0]=2"),
        (lambda: choice_confidence([[]], [0]), "loglikelihoods[0]: is empty"),
        (lambda: choice_confidence([[0.0]], [0, 1]), "lengths 1 != 2"),
        (lambda: ratio_of_sums([1.0], [0.0]), "y: sums to 0"),
        (lambda: ratio_of_sums([1.0, 2.0], [1.0]), "lengths 2 != 1"),
        (lambda: mean_of_ratios({}), "parts: is empty"),
        (lambda: mean_of_ratios({"d": ([1.0], [1.0])}, log_ratio=["e"]), "log_ratio: names no part"),
        (lambda: mean_of_ratios({"d": ([1.0],)}), "parts['d']: expected (x, y)"),
        (lambda: t_interval([]), "values: is empty"),
        (lambda: win_tie_loss([1.0], [1.0], tol=-1), "tol=-1"),
        (lambda: win_tie_loss([1.0, 2.0], []), "b: is empty"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)
