"""The arms a comparison can name in `arms: [...]`: the shipped ones, imported here so they register, and any other
registered with `@register_arm` before a run starts. Kept apart from harness/arms.py (the protocol the arms import)
so an arm module never imports the module that imports it."""

from __future__ import annotations

from omegaconf import DictConfig

from harness.arms import ARMS, Arm, ArmError
from harness.config import did_you_mean

SHIPPED = ("data_mixing", "dem")  # what baselines/arm.py and dem/arm.py register (tests/test_arms.py checks it)


def load_builtin_arms() -> None:
    """Import the shipped arms (they register themselves); inside a function, as importing them takes torch,
    transformers and scipy (10 s on 2 cores) and neither `dem-bench --help` nor a config check needs them."""
    import baselines.arm  # noqa: F401  registers data_mixing
    import dem.arm  # noqa: F401  registers dem


def arm_names() -> list[str]:
    """Every arm a config may name, sorted: the shipped ones (by name, nothing imported) and any registered."""
    return sorted(set(SHIPPED) | set(ARMS))


def unknown_arm(name: str) -> str:
    """The one-line answer to an `arms:` entry no arm is registered as (validate and make_arm both give it)."""
    known = arm_names()
    return f"arms: unknown arm '{name}'.{did_you_mean(name, known)} Available: {', '.join(known)}"


def make_arm(name: str, cfg: DictConfig) -> Arm:
    """The arm registered as `name`, built from the whole config; ArmError (one line) for an unknown name."""
    load_builtin_arms()
    if name not in ARMS:
        raise ArmError(unknown_arm(name))
    return ARMS[name](cfg)
