"""The paper's cost on paper: `plan_only=true` prints device-hours per reported model on a named accelerator, equal
to FLOPs ÷ (peak × MFU) computed here from the presets and the harness's FLOP count; it does so for an OpenLLaMA
preset with neither the hub nor the data (no connection is even attempted); a bad plan.accelerator or plan.mfu
stops in one line with exit 2 and nothing created; and a real run of the same preset still needs its model."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from harness.runs.cost import forward_flops, train_flops
from tests.conftest import MICRO, compose_cfg

ROOT = Path(__file__).resolve().parent.parent
PAPER = ["model=openllama_3b_v2", "budget=gpu", "eval=paper", "data=paper", "plan_only=true"]
A100_BF16_DENSE = 312e12  # NVIDIA A100 data sheet: BFLOAT16 Tensor Core 312 TFLOPS (624 with sparsity)
# open_llama_3b_v2's config.json, written out here rather than read from the preset under test
OPENLLAMA_3B = LlamaConfig(hidden_size=3200, intermediate_size=8640, num_hidden_layers=26, num_attention_heads=32,
                           num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048,
                           tie_word_embeddings=False)
# Any connection attempt in the CLI process is written down (then refused): a plan must never reach for a network.
NO_NETWORK = '''import os, socket
def _refuse(*args, **kwargs):
    with open(os.environ["DEM_BENCH_NET_LOG"], "a") as f:
        f.write(repr(args[1:2]) + "\\n")
    raise OSError("network disabled by the test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
'''


def cli(tmp_path: Path, args: list[str], *, offline: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m harness ARGS` in an empty folder, with the hub and datasets offline and sockets refused."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(NO_NETWORK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(ROOT)]),
           "DEM_BENCH_NET_LOG": str(tmp_path / "network.log")}
    if offline:
        env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args, f"output_dir={work / 'out'}",
                           f"cache_dir={work / 'cache'}"], capture_output=True, text=True, timeout=timeout, cwd=work,
                          env=env)


def table(stdout: str) -> dict[str, list[float]]:
    """The device-hours table: label -> [runs, training h, search h, evaluation h, total h, FLOPs]."""
    lines = stdout[stdout.index("device-hours on one"):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "runs"])
    rows = {}
    for line in lines[start + 1:]:
        match = re.match(r"\s+(\S.*?)\s+(\d+)((?:\s+\S+){5})$", line)
        if not match:
            break
        rows[match.group(1)] = [float(match.group(2)), *map(float, match.group(3).split())]
    return rows


def expected_flops(cfg) -> dict[str, tuple[float, float, float]]:
    """(training, search, evaluation) FLOPs per reported model, from the presets' numbers and the harness's FLOP
    count, written out independently of harness/plan.py."""
    seq = cfg.budget.seq_len
    run = train_flops(OPENLLAMA_3B, cfg.budget.train_tokens, seq)
    val = report = 0
    for name in cfg.data.distributions:
        source = cfg.data.sources[name]
        rows_val = source.n_val or cfg.data.n_val
        rows_report = source.n_report or cfg.data.n_report or rows_val
        val += math.ceil(rows_val * source.tokens_per_row / seq) * seq
        report += math.ceil(rows_report * source.tokens_per_row / seq) * seq
    lm_eval = 0.0
    for task in cfg.eval.tasks:
        c = cfg.eval.cost[task]
        per_item = c.requests * forward_flops(OPENLLAMA_3B, c.prompt_tokens, c.prompt_tokens)
        if c.generated_tokens:
            per_item += forward_flops(OPENLLAMA_3B, c.generated_tokens, c.prompt_tokens + c.generated_tokens)
        lm_eval += c.n_items * per_item * (2 if c.perturbed and cfg.eval.helm.robustness else 1)
    evaluation = lm_eval + forward_flops(OPENLLAMA_3B, val + report, seq)
    one_pass = forward_flops(OPENLLAMA_3B, val, seq)
    grid_points = 6  # mixing.grid_step 0.5 over three distributions
    return {"base": (0.0, 0.0, evaluation),
            **{f"only_{n}": (run, 0.0, evaluation) for n in cfg.data.distributions},
            "data_mixing": (grid_points * run, grid_points * one_pass, evaluation),
            "dem": (3 * run, cfg.dem.n_trials * one_pass, evaluation)}


def test_plan_only_device_hours_equal_flops_over_peak_times_mfu_offline(tmp_path):
    """The paper preset on an A100 at 50% MFU, with neither hub nor data: every row's hours are its FLOPs ÷
    (312 TFLOP/s × 0.5), training, search and evaluation separately; no connection attempted; nothing created."""
    args = [*PAPER, "plan.accelerator=a100", "plan.mfu=0.5"]
    proc = cli(tmp_path, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert not (tmp_path / "network.log").exists(), (tmp_path / "network.log").read_text()
    assert list((tmp_path / "work").iterdir()) == []  # no output, no cache, no runs/ folder
    assert "data of mathqa, sni, cot not read" in out and "no run can show as cached" in out
    assert "not found locally" in out and "model.architecture" in out
    rows = table(out)
    cfg = compose_cfg([*args, "output_dir=x", "cache_dir=y"])
    rate = A100_BF16_DENSE * 0.5 * 3600  # FLOPs per device-hour
    want = expected_flops(cfg)
    assert set(want) <= set(rows), rows
    for label, flops in want.items():
        hours = [f / rate for f in flops]
        assert rows[label][1:4] == pytest.approx(hours, rel=1e-3, abs=1e-4), label
        assert rows[label][4] == pytest.approx(sum(hours), rel=1e-3), label
    assert rows["data_mixing"][0] == 6 and rows["dem"][0] == 3
    total = rows["all (each run once)"]  # the grid's corners are DEM's fine-tunes: 6 distinct runs, not 9
    assert total[0] == 6 and total[1] == pytest.approx(6 * want["dem"][0] / 3 / rate, rel=1e-3)
    assert rows["data_mixing"][1] > rows["dem"][1] > 0 and rows["dem"][2] > rows["data_mixing"][2] > 0


def test_the_13b_plan_says_one_h100_cannot_hold_its_training_but_an_h200_can(tmp_path):
    """A full bf16 fine-tune of 13B with AdamW needs ≈ 8 bytes per parameter before activations (bf16 weights,
    gradients, two AdamW states): 104 GB, over an H100's 80 GB; the search holds 3 vectors beside the weights.
    One sweep plans both accelerators, each job's table and the sweep's total per accelerator."""
    proc = cli(tmp_path, ["-m", "model=openllama_13b", "budget=gpu", "eval=paper", "data=paper", "plan_only=true",
                          "plan.accelerator=h100,h200"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    h100, h200 = proc.stdout.split("sweep job 2 of 2 (plan.accelerator=h200):")
    assert "of its 80 GB, does NOT fit" in h100 and "(dem.vectors_on=device), does NOT fit" in h100
    assert "of its 141 GB, fits" in h200 and "does NOT fit" not in h200
    assert table(h100)["dem"][1] > 0
    assert table(h200) == table(h100)  # the H200 has the H100's compute: the same hours
    totals = proc.stdout[proc.stdout.index("sweep device-hours"):]
    assert "on one NVIDIA H100 SXM 80GB at 40% MFU, 1 job(s)" in totals and "NVIDIA H200 SXM 141GB" in totals
    assert table(totals)["all (each run once)"] == table(h100)["all (each run once)"]
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize("override,expected", [
    ("plan.accelerator=h1000", "plan.accelerator=h1000: allowed: h100, h100_pcie, h200, a100. Did you mean 'h100'?"),
    ("plan.mfu=0", "plan.mfu=0.0: must be in (0, 1]"),
    ("plan.mfu=1.5", "plan.mfu=1.5: must be in (0, 1]"),
])
def test_a_bad_plan_setting_stops_in_one_line_and_creates_nothing(tmp_path, override, expected):
    proc = cli(tmp_path, [*MICRO, "plan_only=true", override], timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and list((tmp_path / "work").iterdir()) == []


def test_a_real_run_of_the_paper_preset_still_needs_its_model(tmp_path):
    """The architecture in the preset serves plans only: without plan_only the model must be found, as before."""
    proc = cli(tmp_path, PAPER[:-1], timeout=120)
    assert proc.returncode == 2 and "the hub has no such model or cannot be reached" in proc.stderr, proc.stderr
    assert list((tmp_path / "work").iterdir()) == []
