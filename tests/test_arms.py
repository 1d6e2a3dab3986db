"""Arms as plug-ins and the stronger baselines: a toy arm registered from a test appears in the report with no
pipeline edit; RegMix trains its proxies, fits, trains one full run and is charged for all of them; under
`budget.mode=matched_total` every mixing method costs what DEM costs (within 1%); `plan_only` writes nothing;
and the embedded pipeline's numbers are those it had before arms became plug-ins (pinned)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from harness.arms import ARMS, Candidate, Context, Planned, register_arm
from harness.runs.cache import Entry
from harness.validate import validate
from tests.conftest import MICRO, compose_cfg

# The RegMix tests check what each row is charged and how it was chosen, not its scores: one task, one model scored
# (lm-eval on every task of each of ~10 models was most of their time)
COSTS_ONLY = ["eval.tasks=[mathqa_mc]", "eval.score_models=[dem]"]


class ToyArm:
    """Trains one run on 90% of the first distribution and reports it: the smallest possible baseline."""

    name = "toy"

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def _spec(self, ctx: Context):
        names = ctx.names
        return ctx.run_spec({names[0]: 0.9, names[-1]: 0.1})

    def plan(self, ctx: Context, done: Mapping[str, Entry]) -> list[Planned]:
        return [Planned(self.name, self._spec(ctx), "toy mixture")]

    def select(self, ctx: Context, done: Mapping[str, Entry]) -> list[Candidate]:
        run = done[self._spec(ctx).key]
        return [Candidate("toy", run.record["key"], lambda: ctx.load(run.path), [run.record["key"]], 0,
                          {"weights": self._spec(ctx).weights})]


@pytest.mark.slow
def test_an_arm_registered_from_a_test_is_reported_without_pipeline_edits(tmp_path):
    from harness.pipeline import run_comparison

    if "toy" not in ARMS:
        register_arm("toy")(ToyArm)
    cfg = validate(compose_cfg([*MICRO, "mixing.grid_step=1", "dem.n_trials=2", "arms=[data_mixing, dem, toy]",
                                "eval.tasks=[mathqa_mc]", f"output_dir={tmp_path / 'out'}",
                                f"cache_dir={tmp_path / 'cache'}"]))
    out = run_comparison(cfg, tmp_path / "out")
    summary = json.loads((out / "summary.json").read_text())
    toy = summary["methods"]["toy"]
    assert toy["runs"] == 1 and toy["train_tokens"] == 8192 and toy["selected"]["weights"]["mathqa"] == 0.9
    assert "| toy |" in (out / "report.md").read_text()
    assert "toy - data_mixing" in summary["statistics"]["paired"]  # every arm is compared with mixing


@pytest.mark.slow
def test_regmix_and_heuristics_at_dem_compute(tmp_path):
    """mixing=baselines: grid, regmix, uniform, proportional, temperature; matched_total gives each mixing method
    DEM's total training FLOPs; RegMix is charged for its K proxies and its full run."""
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, "mixing=baselines", "budget.mode=matched_total",
                           "mixing.proxies=4", "mixing.proxy_tokens=1024", "mixing.candidates=2000",
                           "mixing.top_k=20", "dem.n_trials=2", *COSTS_ONLY, f"output_dir={tmp_path / 'out'}",
                           f"cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    methods = summary["methods"]
    dem_flops = methods["dem"]["train_flops"]
    for row in ("data_mixing", "mixing_regmix", "mixing_uniform", "mixing_proportional", "mixing_temperature"):
        assert abs(methods[row]["train_flops"] / dem_flops - 1) < 0.01, (row, methods[row]["train_flops"], dem_flops)
    regmix = methods["mixing_regmix"]
    assert regmix["runs"] == 5  # 4 proxies + 1 full run, all charged
    assert regmix["selected"]["proxies"] == 4 and -1 <= regmix["selected"]["held_out_spearman"] <= 1
    assert regmix["search_forward_tokens"] > 0  # the proxies' validation passes are selection compute
    assert regmix["train_tokens"] == 4 * 1024 + (3 * 8192 - 4 * 1024) // 64 * 64
    assert sum(regmix["selected"]["weights"].values()) == pytest.approx(1)
    assert len(methods["data_mixing"]["selected"]["grid"]) == 6  # 6 runs of DEM's 3 runs' tokens / 6 each
    assert summary["cost_ratio_train"] == pytest.approx(1, abs=0.01)
    log = proc.stdout + proc.stderr
    assert "plan: " in log and "(to be chosen)" in log  # RegMix's full run is planned before its mixture is known
    assert "run 1/" in log and "ETA" in log


def test_plan_only_prints_every_run_and_writes_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, "mixing=baselines", "mixing.proxy_tokens=1024",
                           "plan_only=true",
                           f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plan: " in proc.stdout and "to train" in proc.stdout and "proxy 1/12" in proc.stdout
    assert "mixing_regmix" in proc.stdout and "(to be chosen)" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # no cache, no output, no runs/ folder


@pytest.mark.slow
def test_regmix_proxies_on_a_smaller_model_preset(tmp_path):
    """mixing.proxy_model: the proxies train (and are measured) on `pico`, the full run on the compared model,
    each charged at its own model's FLOPs."""
    proc = subprocess.run([sys.executable, "-m", "harness", *MICRO, "mixing=regmix", "mixing.proxy_model=pico",
                           "mixing.proxies=4", "mixing.proxy_tokens=1024", "mixing.candidates=2000", "mixing.top_k=20",
                           "mixing.grid_step=1", "dem.n_trials=2", *COSTS_ONLY,
                           f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mixing = json.loads((tmp_path / "out" / "summary.json").read_text())["methods"]["data_mixing"]
    assert mixing["selected"]["proxy_model"] == "pico" and mixing["runs"] == 5
    records = [json.loads(f.read_text()) for f in (tmp_path / "cache").glob("train/*/record.json")]
    per_token = {}  # training FLOPs per token of each base (pico proxies, micro runs)
    for r in records:
        per_token[r["spec"]["base"]] = r["train_flops"] / r["train_tokens"]
    assert len(per_token) == 2  # the pico proxies and the micro runs start from different bases
    proxy_fpt, full_fpt = sorted(per_token.values())
    full_tokens = mixing["train_tokens"] - 4 * 1024
    assert mixing["train_flops"] == pytest.approx(4 * 1024 * proxy_fpt + full_tokens * full_fpt)  # each at its own
    assert "on pico" in proc.stdout + proc.stderr  # the plan says where the proxies run


def test_the_shipped_arm_names_are_what_their_modules_register_and_a_config_check_imports_neither():
    """arm_registry.SHIPPED lets validate check `arms:` by name; it must list what the shipped modules register,
    and checking a config must not import them (they pull in torch, transformers and scipy: 10 s)."""
    script = (
        "import sys\n"
        "from harness.arms import ARMS\n"
        "from harness.arm_registry import SHIPPED, load_builtin_arms\n"
        "from harness.validate import validate\n"
        "from tests.conftest import MICRO, compose_cfg\n"
        "validate(compose_cfg(MICRO))\n"
        "assert not {'baselines.arm', 'dem.arm'} & set(sys.modules), 'validate imported an arm'\n"
        "load_builtin_arms()\n"
        "assert sorted(ARMS) == sorted(SHIPPED), (sorted(ARMS), SHIPPED)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
