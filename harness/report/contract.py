"""The summary.json contract (README, "Results": what every comparison writes) as pydantic models, checked field
by field before a report is rebuilt, so a summary with a null perplexity or a negative FLOP count is refused in one
line instead of rewriting report.md and results.csv from it. Extra fields are allowed: the contract is what every
summary holds at least."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.errors import HarnessError

Count = Annotated[int, Field(ge=0, strict=True)]
Amount = Annotated[float, Field(ge=0, allow_inf_nan=False)]  # FLOPs, seconds: finite, never negative
Perplexity = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Score = Annotated[float, Field(allow_inf_nan=True)]  # a stderr over one item is NaN in lm-eval


class SummaryError(HarnessError, ValueError):
    """A summary.json that breaks the contract; nothing is written."""


class Method(BaseModel):
    """One model's row: `methods.<name>` (the arms, the base, each `only_<distribution>`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    train_tokens: Count
    train_flops: Amount
    train_wall_s: Amount
    search_forward_tokens: Count | None = None  # renamed selection_forward_tokens; either one must be there
    selection_forward_tokens: Count | None = None
    val_ppl: Perplexity
    val_ppl_by_dist: dict[str, Perplexity]
    scores: dict[str, Score]
    selected: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def forward_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("search_forward_tokens", data.get("selection_forward_tokens")) is None:
            raise ValueError("missing 'search_forward_tokens' (or 'selection_forward_tokens')")
        return data


Finite = Annotated[float, Field(allow_inf_nan=False)]


class Retained(BaseModel):
    """One retention value with its 95% CI: null where it could not be computed (a model not scored: its
    `note` says why)."""

    model_config = ConfigDict(extra="allow", strict=True)

    value: Finite | None
    ci_low: Finite | None
    ci_high: Finite | None


class ModelRetention(BaseModel):
    """`retention.models.<name>` (harness/stats/retention.py)."""

    model_config = ConfigDict(extra="allow", strict=True)

    in_distribution: dict[str, Retained]
    in_distribution_mean: Retained
    general: Retained


class Retention(BaseModel):
    """`retention`: each distribution's basis (`task:<name>` or `val_ppl`) and every model's values; summaries
    written before it existed have none."""

    model_config = ConfigDict(extra="allow", strict=True)

    basis: dict[str, str]
    models: dict[str, ModelRetention]


class Summary(BaseModel):
    """The top level: every model, the cost ratio, and what the report's text reads."""

    model_config = ConfigDict(extra="allow", strict=True)

    methods: dict[str, Method]
    cost_ratio: Amount
    chance: dict[str, float]
    seed: int
    provenance: dict[str, Any]
    wall_s: Amount
    retention: Retention | None = None


def check_summary(summary: Any) -> None:
    """SummaryError naming the first field that breaks the contract: "methods.dem.val_ppl: a positive finite
    number, got null"."""
    if not isinstance(summary, dict) or not isinstance(summary.get("methods"), dict):
        raise SummaryError("missing 'methods'")
    for name in ("data_mixing", "dem"):
        if name not in summary["methods"]:
            raise SummaryError(f"missing 'methods.{name}'")
    try:
        Summary.model_validate(summary)
    except ValidationError as err:
        raise SummaryError(_first(err)) from None


def _first(err: ValidationError) -> str:
    e = err.errors(include_url=False)[0]
    where = ".".join(str(p) for p in e["loc"])
    if e["type"] == "missing":
        return f"missing '{where}'"
    message = e["msg"].removeprefix("Value error, ")
    if message.startswith("missing '"):  # a model-level rule: name the model
        return message.replace("missing '", f"missing '{where}.", 1)
    return f"'{where}': {message} (got {json.dumps(e.get('input'), default=str)[:60]})"
