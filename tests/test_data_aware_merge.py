"""Fisher merging and RegMean (dem/strategies) and the statistics they learn from (dem/statistics.py): correct by
construction on small tensors, statistics checked against a direct computation on a tiny random Llama."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dem.merge import MergeConfigError, get_strategy, load_strategy_file, merge_state, register
from dem.statistics import StatisticError, fisher_diag, input_gram, select_sequences
from tests.conftest import MICRO


def _randn(*shape: int) -> torch.Tensor:  # float64: the merges' exactness is what is tested, not fp32 rounding
    return torch.randn(*shape, dtype=torch.float64)


def _rand(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, dtype=torch.float64)


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).to(torch.float32)


def _merge(name, base, deltas, weights, stats, **params):
    strategy = get_strategy(name)
    return strategy.merge(base, deltas, weights, strategy.resolve(params, len(deltas)), None, stats)


def test_regmean_with_alpha_1_is_the_least_squares_merge_of_a_linear_layer():
    torch.manual_seed(1)
    out_f, in_f, n = 5, 4, 3
    w0 = _randn(out_f, in_f)
    ws = [w0 + 0.3 * _randn(out_f, in_f) for _ in range(n)]
    xs = [_randn(20 + 5 * i, in_f) for i in range(n)]  # each model's inputs, different counts
    grams = [x.t() @ x for x in xs]
    merged = _merge("regmean", w0, [w - w0 for w in ws], [1.0] * n, {"input_gram": grams}, alpha=1.0)
    # argmin_W Σᵢ ‖Xᵢ Wᵀ − Xᵢ Wᵢᵀ‖², solved directly as one stacked least-squares problem
    direct = torch.linalg.lstsq(torch.cat(xs), torch.cat([x @ w.t() for x, w in zip(xs, ws, strict=True)])).solution.t()
    torch.testing.assert_close(merged, direct, rtol=1e-6, atol=1e-9)


def test_regmean_with_identical_grams_is_plain_averaging_and_leaves_other_tensors_to_dem():
    torch.manual_seed(2)
    w0 = _randn(3, 4)
    deltas = [_randn(3, 4) for _ in range(3)]
    x = _randn(10, 4)
    for alpha in (1.0, 0.5, 0.0):
        merged = _merge("regmean", w0, deltas, [1.0] * 3, {"input_gram": [x.t() @ x] * 3}, alpha=alpha)
        torch.testing.assert_close(merged, torch.stack([w0 + d for d in deltas]).mean(0))
    norm0, norm_deltas = _randn(4), [_randn(4) for _ in range(3)]  # no Gram: θ₀ + Σ wᵢΔᵢ
    merged = _merge("regmean", norm0, norm_deltas, [0.2, 0.3, 0.5], {"input_gram": [None] * 3})
    torch.testing.assert_close(merged, norm0 + 0.2 * norm_deltas[0] + 0.3 * norm_deltas[1] + 0.5 * norm_deltas[2])


def test_fisher_with_identical_fishers_is_averaging_and_zero_fisher_does_not_move_an_entry():
    torch.manual_seed(3)
    theta0 = _randn(6)
    deltas = [_randn(6) for _ in range(2)]
    same = _rand(6)
    merged = _merge("fisher", theta0, deltas, [1.0, 1.0], {"fisher_diag": [same, same]})
    torch.testing.assert_close(merged, theta0 + (deltas[0] + deltas[1]) / 2)
    f0, f1 = _rand(6) + 0.1, _rand(6) + 0.1
    f0[2] = 0.0  # model 0 carries no information on entry 2: the merge takes model 1's value there
    merged = _merge("fisher", theta0, deltas, [1.0, 1.0], {"fisher_diag": [f0, f1]}, smoothing=0.0)
    assert merged[2] == pytest.approx((theta0 + deltas[1])[2].item(), rel=1e-12)
    expected = (f0 * (theta0 + deltas[0]) + f1 * (theta0 + deltas[1])) / (f0 + f1)  # the paper's Σ Fᵢθᵢ / Σ Fᵢ
    torch.testing.assert_close(merged, expected)
    half = _merge("fisher", theta0, deltas, [0.5, 0.5], {"fisher_diag": [f0, f1]}, smoothing=0.0)
    torch.testing.assert_close(half - theta0, (merged - theta0) / 2)  # the weights scale the gated update


def test_merge_state_hands_each_tensor_its_statistics_and_the_coefficients_stay_linear():
    torch.manual_seed(4)
    base = {"w": _randn(3, 4), "norm": _randn(4)}
    vectors = [{k: torch.randn_like(v) for k, v in base.items()} for _ in range(2)]
    xs = [_randn(8, 4), _randn(9, 4)]
    stats = {"input_gram": [{"w": x.t() @ x} for x in xs]}  # no Gram for "norm"
    merged = merge_state(base, vectors, [0.7, 0.4], "regmean", {"alpha": 1.0}, stats=stats)
    torch.testing.assert_close(merged["norm"], base["norm"] + 0.7 * vectors[0]["norm"] + 0.4 * vectors[1]["norm"])
    single = _merge("regmean", base["w"], [v["w"] for v in vectors], [0.7, 0.4],
                    {"input_gram": [x.t() @ x for x in xs]}, alpha=1.0)
    torch.testing.assert_close(merged["w"], single)
    with pytest.raises(MergeConfigError, match="needs the statistic"):
        merge_state(base, vectors, [0.7, 0.4], "regmean")


def test_fisher_diag_is_the_mean_squared_gradient_of_each_sequence_log_likelihood():
    model = _tiny_llama()
    seqs = [([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5]), ([6, 7, 8], [-100, 7, 8])]
    fisher = fisher_diag(model, seqs)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for ids, labels in seqs:
        model.zero_grad()
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss  # mean over scored tokens
        (loss * sum(label != -100 for label in labels[1:])).backward()  # × tokens: the summed log-likelihood
        for n, p in model.named_parameters():
            expected[n] += p.grad.square() / len(seqs)
    assert set(fisher) == set(expected)  # the tied LM head is the embedding tensor, listed once
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-10)


def test_input_gram_is_xtx_over_tokens_of_each_linear_input():
    model = _tiny_llama()
    seqs = [([1, 2, 3, 4], [1, 2, 3, 4]), ([5, 6, 7], [5, 6, 7])]
    grams = input_gram(model, seqs)
    assert "lm_head.weight" not in grams and "model.layers.0.self_attn.q_proj.weight" in grams
    assert len(grams) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    layer = model.model.layers[0]
    with torch.no_grad():
        xs = [layer.input_layernorm(model.model.embed_tokens(torch.tensor(ids))) for ids, _ in seqs]
    x = torch.cat(xs)
    torch.testing.assert_close(grams["model.layers.0.self_attn.q_proj.weight"], (x.t() @ x) / 7, rtol=1e-4,
                               atol=1e-6)
    assert grams["model.layers.0.mlp.down_proj.weight"].shape == (32, 32)


def test_rows_are_a_seeded_draw_cut_to_the_token_budget():
    seqs = [(list(range(10)), [-100] * 3 + list(range(3, 10))) for _ in range(20)]
    rows = select_sequences(seqs, n_tokens=25, seq_len=8, seed=0)
    assert [len(ids) for ids, _ in rows] == [8, 8, 8]  # a 1-token remainder has nothing to predict: skipped
    assert rows == select_sequences(seqs, n_tokens=25, seq_len=8, seed=0)
    with pytest.raises(StatisticError, match="positive"):
        select_sequences(seqs, n_tokens=0, seq_len=8, seed=0)


def test_a_strategy_asking_for_an_unknown_statistic_is_refused_in_one_line(tmp_path):
    with pytest.raises(MergeConfigError, match=r"unknown statistic.*hessian"):
        register("needs_hessian", stats=["hessian"], prepare=lambda d, p, g, s: list(d))(lambda b, d, w, p: b)
    plugin = tmp_path / "bad_stat.py"
    plugin.write_text("from dem.merge import register\n"
                      "@register('bad_stat', stats=['gram_of_everything'], prepare=lambda d, p, g, s: list(d))\n"
                      "def bad(base, deltas, weights, params):\n    return base\n")
    with pytest.raises(MergeConfigError) as err:
        load_strategy_file(str(plugin))
    assert "gram_of_everything" in str(err.value) and "\n" not in str(err.value)


DATA_AWARE = [*MICRO, "data.distributions=[mathqa, sni]", "eval.tasks=[mathqa_mc]", "eval.limit=4",
              "budget.train_tokens=4096", "dem.stats.n_tokens=256"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def data_aware_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data_aware")
    proc = _run([*DATA_AWARE, "dem.compare=[{merge: fisher}, {merge: regmean}]", f"output_dir={root / 'a'}",
                 f"cache_dir={root / 'cache'}"])
    return root, proc.stdout + proc.stderr


@pytest.mark.slow
def test_fisher_and_regmean_rows_are_charged_for_their_statistics(data_aware_run):
    root, log = data_aware_run
    assert log.count("cache miss stats/") == 4  # fisher_diag and input_gram, for each of the two fine-tunes
    summary = json.loads((root / "a" / "summary.json").read_text())
    for label in ("dem_fisher", "dem_regmean"):
        m = summary["methods"][label]
        assert m["merge_cost"]["stats_flops"] > 0 and m["merge_cost"]["stats_wall_s"] > 0
        assert m["merge_cost"]["held_bytes"] > 0 and m["merge_cost"]["search_wall_s"] > 0
        search_flops = m["selection_flops"] - m["merge_cost"]["stats_flops"]  # the statistics are charged
        assert search_flops == pytest.approx(summary["methods"]["dem"]["selection_flops"])
    assert summary["methods"]["dem"]["merge_cost"]["stats_flops"] == 0  # data-free: no statistics
    assert summary["methods"]["dem_fisher"]["selected"]["weights"] != summary["methods"]["dem"]["selected"]["weights"]
    header = (root / "a" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"stats_flops", "stats_wall_s", "search_wall_s", "merge_held_MB"} <= set(header)
    assert "stats_flops" in (root / "a" / "report.md").read_text()


def _merge_cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dem.merge_cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_dem_bench_merge_rebuilds_the_rows_from_saved_statistics_and_refuses_ones_that_do_not_fit(data_aware_run,
                                                                                                   tmp_path):
    from safetensors.torch import load_file, save_file

    root, _ = data_aware_run
    summary = json.loads((root / "a" / "summary.json").read_text())
    base = next((root / "cache" / "base").glob("*/record.json")).parent
    for label, method, stat in (("dem_fisher", "fisher", "fisher_diag"), ("dem_regmean", "regmean", "input_gram")):
        stats = root / "a" / "models" / label / "stats"
        runs = {}
        for link in (stats / stat).glob("*.safetensors"):
            record = json.loads((link.resolve().parent / "record.json").read_text())
            runs[link.stem] = root / "cache" / "train" / record["spec"]["run"]
        selected = summary["methods"][label]["selected"]
        args = ["--base", str(base), "--method", method, "--stats", str(stats), "--out", str(tmp_path / label)]
        args += [a for n, run in runs.items() for a in ("--model", f"{n}={run}", "--weight",
                                                       f"{n}={selected['weights'][n]}")]
        args += [a for k, v in selected["params"].items() for a in ("--param", f"{k}={v}")]
        proc = _merge_cli(args)
        assert proc.returncode == 0, proc.stderr
        got = load_file(str(tmp_path / label / "model.safetensors"))
        want = load_file(str(root / "a" / "models" / label / "model.safetensors"))
        for key, tensor in want.items():
            torch.testing.assert_close(got[key], tensor, rtol=1e-5, atol=1e-6)
    # statistics that do not fit the models, or none: exit 2, one line, nothing written
    stats = root / "a" / "models" / "dem_regmean" / "stats"
    bad = tmp_path / "bad"
    for n in runs:
        grams = load_file(str(stats / "input_gram" / f"{n}.safetensors"))
        key = next(iter(grams))
        grams[key] = grams[key][:-1, :-1].contiguous()
        (bad / "input_gram").mkdir(parents=True, exist_ok=True)
        save_file(grams, str(bad / "input_gram" / f"{n}.safetensors"))
    model_args = [a for n, run in runs.items() for a in ("--model", f"{n}={run}")]
    for extra, message in (([], "learns from data"), (["--stats", str(bad)], "does not match the models"),
                           (["--stats", str(tmp_path / "none")], "no input_gram/")):
        proc = _merge_cli(["--base", str(base), "--method", "regmean", *model_args, *extra,
                           "--out", str(tmp_path / "refused")])
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_statistics_are_reused_across_strategies_and_a_corrupt_one_is_rebuilt(data_aware_run, tmp_path):
    root, _ = data_aware_run
    cache = tmp_path / "cache"
    shutil.copytree(root / "cache", cache, symlinks=True)
    records = {json.loads(f.read_text())["statistic"]: f.parent for f in (cache / "stats").glob("*/record.json")}
    gram = records["input_gram"]
    data = bytearray((gram / "stat.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (gram / "stat.safetensors").write_bytes(bytes(data))
    # a new fisher row (another smoothing) and regmean again: nothing is trained, the corrupt entry alone is rebuilt
    second = _run([*DATA_AWARE, "dem.compare=[{merge: fisher, params: {smoothing: 0.001}}, {merge: regmean}]",
                   f"output_dir={tmp_path / 'b'}", f"cache_dir={cache}"])
    log = second.stdout + second.stderr
    assert "cache miss train/" not in log
    assert log.count("cache miss stats/") == 1 and f"rebuilding stats/{gram.name}" in log
    line = next(x for x in log.splitlines() if f"rebuilding stats/{gram.name}" in x)
    assert "stat.safetensors" in line  # the damaged file, named


@pytest.mark.parametrize("args", [["dem.stats.n_tokens=0"], ["dem.stats.n_tokens=-5"]])
def test_bad_statistics_settings_exit_2_in_one_line(tmp_path, args):
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, *args, f"output_dir={tmp_path / 'o'}",
                           f"cache_dir={tmp_path / 'c'}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "dem.stats.n_tokens" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_a_plugin_registers_its_own_statistic_and_a_strategy_that_uses_it(tmp_path):
    plugin = tmp_path / "magnitude_gate.py"
    plugin.write_text('''
import torch
from dem.merge import dem_merge, register
from dem.statistics import register_statistic

@register_statistic("weight_magnitude")
def weight_magnitude(model, sequences):
    return {n: p.detach().abs().float() for n, p in model.named_parameters()}

def gate(deltas, params, generator, stats):
    return [d * (m > 0.5) if m is not None else d for d, m in zip(deltas, stats["weight_magnitude"])]

@register("magnitude_gated", prepare=gate, coefficients=lambda w, p: list(w), stats=["weight_magnitude"])
def magnitude_gated(base, deltas, weights, params):
    return dem_merge(base, deltas, weights, params)
''')
    from dem.merge import STRATEGIES
    from dem.statistics import STATISTICS, get_statistic

    load_strategy_file(str(plugin))
    try:
        model = _tiny_llama()
        magnitudes = get_statistic("weight_magnitude").compute(model, [])
        name = "model.layers.0.mlp.up_proj.weight"
        base = {name: dict(model.named_parameters())[name].detach().double()}
        deltas = [{name: torch.ones_like(base[name])}]
        merged = merge_state(base, deltas, [1.0], "magnitude_gated", stats={"weight_magnitude": [magnitudes]})
        torch.testing.assert_close(merged[name] - base[name], (magnitudes[name] > 0.5).double())
    finally:  # the registries are process-wide: leave them as the other tests expect
        STRATEGIES.pop("magnitude_gated", None)
        STATISTICS.pop("weight_magnitude", None)


def test_the_plan_sizes_each_statistic_as_it_is_stored(tmp_path):
    from dem.statistics import get_statistic, stored_bytes

    model = _tiny_llama()
    seqs = [([1, 2, 3, 4], [1, 2, 3, 4])]
    for name, compute in (("fisher_diag", fisher_diag), ("input_gram", input_gram)):
        tensors = compute(model, seqs)
        assert {k: tuple(v.shape) for k, v in tensors.items()} == get_statistic(name).tensors(model)
        assert stored_bytes(name, model.config) == sum(v.numel() * 4 for v in tensors.values())
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, "dem.compare=[{merge: regmean}]", "plan_only=true",
                           f"output_dir={tmp_path / 'o'}", f"cache_dir={tmp_path / 'c'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if "new disk" in x)
    assert ", statistics " in line, line
