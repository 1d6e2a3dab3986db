"""`dem-bench` / `python -m harness`: the Hydra app that runs the comparison.

Bad input ends with exit code 2 and one line naming the key and what is allowed — checked before any
heavy import or training. Hydra's own flags (--help, --cfg job, -m …) work as usual.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from harness.config import CONF_DIR, ConfigError, check_presets, validate

log = logging.getLogger("harness")


def _fail(message: str) -> None:
    print(f"dem-bench: error: {message}", file=sys.stderr)
    sys.exit(2)


def precheck(overrides: list[str]) -> None:
    """Compose and validate the config the way Hydra will, so typos fail in a second, not after training."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_presets(overrides)
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(" ".join(str(err).split())) from None
    validate(cfg)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    try:
        cfg = validate(cfg)
    except ConfigError as err:
        _fail(str(err))
    from harness.pipeline import run_comparison  # heavy imports (torch, transformers) only past validation

    out = run_comparison(cfg, Path(HydraConfig.get().runtime.output_dir))
    log.info("report: %s", out / "report.md")
    print(f"dem-bench: done; results in {out}")


def main() -> None:
    args = sys.argv[1:]
    try:
        if not any(a.startswith("-") for a in args):  # a plain run: check everything before Hydra starts
            precheck(args)
        else:  # Hydra flags (multirun, --cfg…): at least the presets; each job validates its own config
            check_presets([a for a in args if not a.startswith("-")])
    except ConfigError as err:
        _fail(str(err))
    app()


if __name__ == "__main__":
    main()
