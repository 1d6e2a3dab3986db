import copy
import logging
import math

import optuna
import pytest
import torch

from dem.merge import get_strategy, merge_state
from dem.search import MergeSession, _runs, search_weights, stacked_rows, storage_for
from dem.vectors import distribution_vector, load_vector, load_vectors, save_vector
from harness.data.builtin import generate_splits
from harness.data.tokens import encode, pack, pack_examples
from harness.evaluation.perplexity import perplexity
from harness.models.loading import copy_params


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


def test_a_smaller_budget_on_a_longer_study_reports_the_best_of_its_own_first_trials(base_model, tokenizer,
                                                                                        tmp_path, caplog):
    """One study, two budgets (a `-m dem.n_trials=2,6` sweep): the 2-trial search after the 6-trial one must
    report what a fresh 2-trial search reports, not the 6-trial study's best."""
    _, _, val, session, fixed = _setup(base_model, tokenizer)
    fresh = _search(session, fixed, val, tmp_path / "fresh", n_trials=2, sampler="random")
    scores = []
    _, _, val, session, fixed = _setup(base_model, tokenizer)
    long = _search(session, fixed, val, tmp_path / "shared", n_trials=6, sampler="random",
                   on_trial=lambda i, w, p: scores.append(p))
    with caplog.at_level(logging.INFO, logger="dem.search"):
        short = _search(session, fixed, val, tmp_path / "shared", n_trials=2, sampler="random")
    assert "the study has 6 finished trials; reporting the best of its first 2" in caplog.text  # not "resuming"
    assert long["n_trials"] == 6 and short["n_trials"] == 2
    assert short["val_ppl"] == pytest.approx(min(scores[:2])) and short["weights"] == fresh["weights"]
    assert short["search_forward_tokens"] == fresh["search_forward_tokens"] < long["search_forward_tokens"]
    if min(scores[2:]) < min(scores[:2]):  # the longer study found better: the short search must not report it
        assert short["val_ppl"] > long["val_ppl"]


def test_report_perplexity_keeps_each_example_whole_across_blocks(base_model, tokenizer):
    """Blocks cut examples apart; per-example sums put every labelled token back with its example."""
    examples = generate_splits("cot", 0, 1, 1, 1, n_report=12).report
    seqs = [encode(tokenizer, e) for e in examples]
    x, y, owners = pack_examples(seqs, 32, tokenizer.pad_token_id)
    assert len(x) > 1 and (owners[1:, 0] >= 0).any()  # some block starts inside an example
    by_example = perplexity(base_model, {"cot": (x, y, owners)})
    by_block = perplexity(base_model, {"cot": (x, y)})
    units = by_example["examples"]["cot"]
    # every labelled token counts for its own example, except one that opens a block (nothing predicts it there)
    assert units["tokens"] == [sum(t != -100 for t in labels) - int((owners[:, 0] == i).sum())
                               for i, (_, labels) in enumerate(seqs)]
    assert by_example["val_ppl"] == pytest.approx(by_block["val_ppl"], rel=1e-6)
    assert math.exp(sum(units["nll"]) / sum(units["tokens"])) == pytest.approx(by_block["val_ppl"], rel=1e-6)


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


@pytest.mark.parametrize("stacked", [True, False])  # one addmv over the stack, or a pass per separate vector
def test_drift_guard_200_incremental_trials_stay_on_the_fresh_merge(base_model, stacked):
    """θ ← θ + Σ (c′ᵢ − cᵢ)Δᵢ for 200 random trials ends within 1e-5 (relative) of a fresh θ₀ + Σ wᵢΔᵢ."""
    theta0 = copy_params(base_model)
    g = torch.Generator().manual_seed(1)
    vectors = [distribution_vector(theta0, {k: v + 0.05 * torch.randn(v.shape, generator=g)
                                            for k, v in theta0.items()}) for _ in range(3)]
    if stacked:  # the layout load_vectors gives: rows of one [n, *shape] buffer per tensor
        stacks = {k: torch.stack([v[k] for v in vectors]) for k in theta0}
        vectors = [{k: stack[i] for k, stack in stacks.items()} for i in range(3)]
    strategy = get_strategy("dem")
    session = MergeSession(base_model, vectors, strategy, {})
    assert session.theta0 is None  # no copy of θ₀ kept
    assert all(isinstance(rows, torch.Tensor) == stacked for rows in session.raw)  # stacked rows seen as a stack
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


def test_stacked_rows_sees_the_layout_load_vectors_gives_and_nothing_else(tmp_path):
    records = [save_vector({"w": torch.full((4, 2), float(i)), "b": torch.ones(3)}, tmp_path / f"v{i}.safetensors")
               for i in range(3)]
    loaded = load_vectors([tmp_path / f"v{i}.safetensors" for i in range(3)], [r["sha256"] for r in records])
    stack = stacked_rows([v["w"] for v in loaded])
    assert stack is not None and stack.shape == (3, 8) and stack[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert stacked_rows([v["w"] for v in reversed(loaded)]) is None  # wrong order: not one stride
    assert stacked_rows([torch.zeros(8), torch.zeros(8)]) is None  # two allocations
    assert _runs([0, 1, 3, 5, 6, 7]) == [(0, 2), (3, 4), (5, 8)] and _runs([]) == []


def _vectors(theta0, n, seed, dtype=torch.float32, tmp_path=None, stacked=True):
    """n distribution vectors; with tmp_path, saved in `dtype` and loaded back (stacked, or one by one), with their
    records."""
    g = torch.Generator().manual_seed(seed)
    deltas = [distribution_vector(theta0, {k: v + 0.05 * torch.randn(v.shape, generator=g)
                                           for k, v in theta0.items()}) for _ in range(n)]
    if tmp_path is None:
        return deltas, [None] * n
    paths = [tmp_path / f"v{seed}_{i}.safetensors" for i in range(n)]
    records = [save_vector(d, p, dtype=dtype) for d, p in zip(deltas, paths, strict=True)]
    hashes = [r["sha256"] for r in records]
    if stacked:
        return load_vectors(paths, hashes), records
    return [load_vector(p, h) for p, h in zip(paths, hashes, strict=True)], records


def _reference(theta0, vectors, w):
    """θ₀ + Σ wᵢΔᵢ in float64: what every fp32 merge approximates."""
    return {k: t.double() + sum(wi * v[k].double() for wi, v in zip(w, vectors, strict=True))
            for k, t in theta0.items()}


# weight sequences whose steps change all, one, two (not adjacent) and none of the coefficients
TRIALS = [[0.5, -0.3, 1.2], [0.5, 0.7, 1.2], [0.1, 0.7, -0.4], [0.1, 0.7, -0.4], [0.0, 0.0, 0.0], [0.9, 0.2, 0.3]]


@pytest.mark.parametrize("vectors_on", ["device", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stacked,stage_elements", [(True, None), (True, 1000), (False, None)])
def test_update_matches_a_float64_reference(base_model, tmp_path, vectors_on, dtype, stacked, stage_elements):
    """Stacked or separately loaded vectors, staged in blocks of 1000 or whole, in fp32 or bf16, on the device or
    streamed: every step lands on θ₀ + Σ wᵢΔᵢ within fp32 rounding of the stored Δ, and bf16 vectors within the
    recorded cast error of the fp32 Δ."""
    theta0 = copy_params(base_model)
    vectors, records = _vectors(theta0, 3, 3, dtype, tmp_path, stacked)
    session = MergeSession(base_model, vectors, get_strategy("dem"), {}, vectors_on=vectors_on,
                           stage_elements=stage_elements)
    live = dict(base_model.named_parameters())
    for w in TRIALS:
        session.set(w, {})
        ref = _reference(theta0, vectors, w)  # the stored (possibly bf16) Δ, exactly
        for k in ref:
            # fp32 arithmetic: ≤ 4 roundings per step (3 products summed, then added), half an ulp of |θ| + Σ|Δ| each
            scale = ref[k].abs().max().item() + sum(v[k].double().abs().max().item() for v in vectors)
            tol = 4 * len(TRIALS) * 2**-24 * scale
            assert (live[k].detach().double() - ref[k]).abs().max().item() <= tol, k
            assert live[k].dtype == torch.float32
    if dtype == torch.bfloat16:  # against the fp32 Δ the cast adds at most Σ|wᵢ|·(recorded error) on its tensor
        exact, _ = _vectors(theta0, 3, 3)
        name = records[0]["error_tensor"]
        ref = _reference(theta0, exact, w)[name]
        bound = sum(abs(wi) * r["max_abs_error"] for wi, r in zip(w, records, strict=True))
        assert (live[name].detach().double() - ref).abs().max().item() <= bound + 1e-6
    staged = vectors_on == "cpu" or dtype != torch.float32
    assert bool(session.buffers) == staged  # in θ's dtype and on its device, vectors are read where they lie


def test_a_vector_whose_coefficient_did_not_change_is_not_read(base_model):
    """A NaN vector poisons any update that reads it (0 · NaN = NaN); kept at weight 0 it must not be touched, even
    between two vectors that change."""
    theta0 = copy_params(base_model)
    (a, b), _ = _vectors(theta0, 2, 4)
    poison = {k: torch.full_like(v, float("nan")) for k, v in theta0.items()}
    session = MergeSession(base_model, [a, poison, b], get_strategy("dem"), {})
    for w in ([0.3, 0.0, 0.1], [0.6, 0.0, 0.2], [-0.2, 0.0, 0.2]):
        session.set(w, {})
    live = dict(base_model.named_parameters())
    for k, t in theta0.items():
        torch.testing.assert_close(live[k].detach(), t - 0.2 * a[k] + 0.2 * b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,params", [("dem", {}), ("dare_linear", {"density": 0.6}), ("ties", {"density": 0.5})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vectors_on_cpu_gives_the_same_merge_as_on_device(base_model, tmp_path, method, params, dtype):
    theta0 = copy_params(base_model)
    vectors, _ = _vectors(theta0, 3, 5, dtype, tmp_path)
    strategy = get_strategy(method)
    models = {"device": base_model, "cpu": copy.deepcopy(base_model)}
    sessions = {on: MergeSession(m, vectors, strategy, strategy.resolve(params, 3), seed=1, vectors_on=on,
                                 stage_elements=1000) for on, m in models.items()}
    for i, w in enumerate(TRIALS):
        p = strategy.resolve({**params, "density": 0.4} if i == 3 and params else params, 3)  # re-prepare twice
        for s in sessions.values():
            s.set(w, p)
        cpu = dict(models["cpu"].named_parameters())
        for k, t in models["device"].named_parameters():
            assert torch.equal(t, cpu[k]), (w, k)
    if dtype == torch.float32:  # sparsified bf16 vectors are re-rounded to bf16 as stored: no fp32 merge to match
        expected = merge_state(theta0, vectors, w, method, params, seed=1)
        for k, t in models["cpu"].named_parameters():
            torch.testing.assert_close(t.detach(), expected[k], rtol=1e-5, atol=1e-6)


def test_vectors_on_must_name_a_place(base_model):
    theta0 = copy_params(base_model)
    with pytest.raises(ValueError, match="vectors_on must be 'device' or 'cpu'"):
        MergeSession(base_model, _vectors(theta0, 1, 0)[0], get_strategy("dem"), {}, vectors_on="gpu")


def test_non_contiguous_and_bf16_parameters_are_updated_in_fp32_arithmetic():
    """A transposed weight is made contiguous in place (the same Parameter, so ties hold); a bf16 θ is widened per
    block, so the step is rounded to bf16 once and its coefficient never is."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 4)).bfloat16()
    model[0].weight.data = model[0].weight.data.t().contiguous().t()
    weight = model[0].weight
    theta0 = copy_params(model)
    g = torch.Generator().manual_seed(0)
    delta = {k: 0.1 * torch.randn(v.shape, generator=g) for k, v in theta0.items()}  # fp32 Δ, as saved by default
    MergeSession(model, [delta], get_strategy("dem"), {}, stage_elements=5).set([0.3], {})
    assert model[0].weight is weight and weight.is_contiguous()
    for k, p in model.named_parameters():
        assert p.dtype == torch.bfloat16
        torch.testing.assert_close(p.detach(), (theta0[k].float() + 0.3 * delta[k]).bfloat16(), rtol=0, atol=0)
