import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from harness.config import GROUPS, presets
from harness.errors import ConfigError
from harness.validate import validate
from tests.conftest import compose_cfg
from tests.test_sources import REAL

# presets meant to be used together (their headers say so)
COMPANIONS = {("budget", "gpu"): ["model=openllama_7b_v2"], ("executor", "slurm"): ["executor.partition=gpu"]}


def test_every_shipped_preset_validates():
    """Each preset of each group, composed over the defaults, passes the schema (no config left unchecked)."""
    unchecked = []
    for group in GROUPS:
        for name in presets(group):
            if (group, name) == ("data", "real") and not REAL.is_dir():  # its paths are checked to exist
                unchecked.append("data=real")
                continue
            validate(compose_cfg([f"{group}={name}", *COMPANIONS.get((group, name), [])]))
    if unchecked:
        pytest.skip(f"every other preset validates; {unchecked} not checked: {REAL} is not present")


def test_micro_presets_validate_together():
    cfg = validate(compose_cfg(["model=micro", "data=micro", "budget=micro"]))
    assert cfg.budget.train_tokens == 8192 and cfg.model.preset == "micro"


def test_all_problems_are_reported_together():
    cfg = compose_cfg(["budget.train_tokens=0", "dem.n_trials=0", "mixing.grid_step=0.3"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert "budget.train_tokens=0: must be a positive integer" in msg
    assert "dem.n_trials=0: must be >= 1" in msg
    assert "mixing.grid_step=0.3: must divide 1" in msg
    assert "\n" not in msg


def test_unknown_key_is_rejected_by_the_schema():
    cfg = OmegaConf.create(OmegaConf.to_container(compose_cfg([])))  # a plain dict, as a YAML typo would give
    cfg.budget.epochs = 3
    with pytest.raises(ConfigError, match=r"budget.epochs: Key 'epochs' not in 'BudgetConfig'"):
        validate(cfg)


@pytest.mark.parametrize("step,ok", [(1, True), (0.5, True), (0.25, True), (0.2, True), (0.1, True),
                                     (0.3, False), (0.4, False), (0, False), (1.5, False), (-0.5, False)])
def test_grid_step_must_divide_one(step, ok):
    cfg = compose_cfg([f"mixing.grid_step={step}"])
    if ok:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=r"mixing\.grid_step"):
            validate(cfg)


def test_cli_help_explains_the_app():
    proc = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert "dem-bench" in proc.stdout and "data" in proc.stdout and "model: hf, micro, openllama_13b" in proc.stdout


def test_group_names_match_the_conf_tree():
    from harness.config import CONF_DIR

    assert sorted(GROUPS) == sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
    assert all(presets(g) for g in GROUPS)


def test_the_paper_cpu_preset_resolves_and_validates_against_a_mirror_of_its_datasets(tmp_path):
    """eval=paper_cpu on a hub mirror in miniature (every MMLU subject, every BBH subtask, BoolQ, OpenBookQA,
    TruthfulQA): its task names, shots, per-task limits and score_models validate, every file its tasks read is
    checked, and its bounded BBH generation fits the model's context."""
    from harness.evaluation.checks import task_datasets
    from harness.evaluation.tasks import generation_limits, resolve_tasks
    from harness.preflight import check_data_files, check_generation_lengths
    from tests.conftest import MICRO
    from tests.fixtures_hub import write_mirror

    mirror = write_mirror(tmp_path / "mirror", every_mmlu_subject=True)
    cfg = validate(compose_cfg([*MICRO, "eval=paper_cpu", f"hub_mirror={mirror}", f"output_dir={tmp_path / 'o'}",
                                f"cache_dir={tmp_path / 'c'}"]))
    tasks = list(cfg.eval.tasks)
    assert tasks == ["mmlu", "bbh_fewshot", "boolq", "openbookqa", "truthfulqa_mc1"]
    assert resolve_tasks(tasks).stock == tuple(tasks)
    assert set(cfg.eval.limit) == set(tasks) and all(v > 0 for v in cfg.eval.limit.values())
    assert list(cfg.eval.score_models) == ["base", "data_mixing", "dem"]
    assert dict(cfg.eval.num_fewshot) == {"mmlu": 5, "bbh_fewshot": 3}
    subjects = {d.name for d in task_datasets(["mmlu"])}
    assert len(subjects) == 57 and all((mirror / "cais/mmlu" / s / "test.jsonl").exists() for s in subjects)
    assert set(generation_limits(["bbh_fewshot"], dict(cfg.eval.gen_kwargs)).values()) == {32}  # all 27 subtasks
    check_data_files(cfg)  # every mirrored file the five tasks read, line by line
    check_generation_lengths(cfg)  # 32 new tokens < the micro model's 256
    with pytest.raises(ConfigError, match=r"eval\.score_models: no arm produces 'only_mathqa'"):
        validate(compose_cfg([*MICRO, "eval=paper_cpu", "data.distributions=[sni,cot]", f"hub_mirror={mirror}",
                              "eval.score_models=[base,only_mathqa]"]))
