import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from harness.config import GROUPS, ConfigError, presets, validate
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
