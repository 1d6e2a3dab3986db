"""Linear merges of LoRA adapters without dense distribution vectors: the search session and the merged adapter.

A LoRA fine-tune i changes each adapted weight by Δᵢ = sᵢ·Bᵢ·Aᵢ (sᵢ = alphaᵢ/rᵢ, Bᵢ [out, rᵢ], Aᵢ [rᵢ, in]). A merge
θ₀ + Σ cᵢΔᵢ is then itself one LoRA update of rank Σrᵢ on every adapted module:

    Σ cᵢsᵢBᵢAᵢ = [c₁s₁B₁ | c₂s₂B₂ | …] · [A₁; A₂; …] = B_cat · A_cat      (scaling 1)

so `AdapterSession` keeps the base with that one adapter and a trial only rewrites B_cat's column blocks
(out × Σr numbers per module) before its forward pass: no Δ the size of the model exists at any point, and the
forward is the base plus one rank-Σr adapter matmul per module. `save_adapter` writes the same concatenation with
peft, so the merged model is ONE adapter that `PeftModel.from_pretrained(base, folder)` loads.

Only strategies that are θ₀ + Σ cᵢ(weights, params)Δᵢ with no weight-independent step on Δ can be done this way
(`is_linear`: dem, task_arithmetic, linear with normalize); sparsifying (dare_linear, breadcrumbs) and sign-
consensus strategies act on dense Δ entries, so they keep densifying (harness/models/lora.py dense_vector). Inputs are
plain LoRA adapters (peft's vanilla Linear LoRA: no DoRA or other variant, no trained biases or full modules) that
adapt the same modules of the same base.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dem.merge import Params, Strategy
from harness.errors import HarnessError
from harness.models.lora import ADAPTER, ADAPTER_CONFIG
from harness.runs.cache import sha256_file

WEIGHTS = "adapter_model.safetensors"  # what peft's save_pretrained writes (safetensors only is read here)


class AdapterMergeError(HarnessError, ValueError):
    """Adapters that cannot be merged as an adapter; one line saying why."""


def is_linear(strategy: Strategy, params: Params, n: int) -> bool:
    """Whether `strategy` with these (resolved) parameters is θ₀ + Σ cᵢΔᵢ with nothing done to Δ first: the merges
    an adapter of rank Σrᵢ expresses exactly."""
    return (strategy.prepare is None and strategy.coefficients is not None
            and strategy.coefficients([1.0] * n, params) is not None)


def adapter_config(folder: Path) -> dict[str, Any]:
    """A saved adapter's adapter_config.json, checked to be a plain LoRA adapter stored as safetensors."""
    folder = Path(folder)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterMergeError(f"{folder / ADAPTER_CONFIG}: unreadable ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterMergeError(f"{folder}: not a LoRA adapter (peft_type {config.get('peft_type')!r})"
                                if isinstance(config, dict) else f"{folder / ADAPTER_CONFIG}: not a JSON object")
    extras = [k for k in ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "target_parameters",
                          "layer_replication") if config.get(k)]
    if config.get("bias", "none") != "none":
        extras.append(f"bias={config['bias']}")
    if extras:
        raise AdapterMergeError(f"{folder}: only plain LoRA merges as an adapter; this one has {', '.join(extras)}")
    if not (folder / WEIGHTS).is_file():
        raise AdapterMergeError(f"{folder}: no {WEIGHTS} (adapters are read from safetensors only)")
    return config


def load_problem(err: BaseException) -> str:
    """What peft's failure to load an adapter onto a model says, in one short line: its first size mismatch (the
    usual cause, an adapter trained on another base), else the start of the message."""
    text = " ".join(str(err).split())
    if "size mismatch for " in text:
        text = text[text.index("size mismatch for ") + len("size mismatch for "):].split(" size mismatch for ")[0]
        text = text.replace("base_model.model.", "", 1).replace("copying a param with shape", "adapter has")
    return text[:200].rstrip(". ")


@dataclass
class Factors:
    """One adapted Linear module across the n adapters: A_cat [R, in] and [s₁B₁ | s₂B₂ | …] [out, R] in fp32 on
    the model's device, and each adapter's rank there (R = Σ ranks)."""

    a: torch.Tensor
    b: torch.Tensor
    ranks: tuple[int, ...]


def read_factors(model: torch.nn.Module, folders: list[Path], sha256: list[str] | None = None
                 ) -> tuple[torch.nn.Module, dict[str, Factors], dict[str, Any]]:
    """Each adapter's A, B and scaling on every module it adapts, read through peft onto `model` (which checks
    they fit it) and concatenated per module; returns the model as it was (the adapters unloaded), the factors by
    module name, and the settings the merged adapter takes from the inputs (task_type, base, fan_in_fan_out).
    `sha256`: what each folder's adapter_model.safetensors must hash to (a cache manifest's record)."""
    from peft import PeftModel
    from peft.tuners.lora import Linear, LoraLayer

    if not folders:
        raise AdapterMergeError("no adapters to merge")
    configs = [adapter_config(f) for f in folders]
    for key in ("fan_in_fan_out", "task_type"):
        if len({json.dumps(c.get(key)) for c in configs}) > 1:
            values = ", ".join(f"{f}: {c.get(key)!r}" for f, c in zip(folders, configs, strict=True))
            raise AdapterMergeError(f"adapters differ in {key}: {values}")
    bases = {c.get("base_model_name_or_path") for c in configs} - {None, ""}
    if len(bases) > 1:
        raise AdapterMergeError(f"adapters were trained on different bases: {', '.join(sorted(map(str, bases)))} "
                                "(if these name one model, make base_model_name_or_path in adapter_config.json agree)")
    for folder, expected in zip(folders, sha256 or [], strict=bool(sha256)):
        weights = Path(folder) / WEIGHTS
        if sha256_file(weights) != expected:
            raise AdapterMergeError(f"{weights}: sha256 differs from the run's record; refusing to merge it")
    names = [f"dem{i}" for i in range(len(folders))]
    peft_model = None
    for name, folder in zip(names, folders, strict=True):
        try:
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
            else:
                peft_model.load_adapter(str(folder), adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as err:
            raise AdapterMergeError(f"{folder}: does not fit the base model ({load_problem(err)})") from None
    factors = {}
    for module_name, module in peft_model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, Linear) or set(module.lora_variant) & set(names):
            raise AdapterMergeError(f"{module_name}: {type(module).__name__} LoRA is not a plain Linear adapter")
        missing = [str(f) for n, f in zip(names, folders, strict=True) if n not in module.lora_A]
        if missing:
            raise AdapterMergeError(f"adapters adapt different modules: {module_name} is not adapted by "
                                    f"{', '.join(missing)}")
        for n, folder in zip(names, folders, strict=True):
            if not all(torch.isfinite(p.weight).all() for p in (module.lora_A[n], module.lora_B[n])):
                raise AdapterMergeError(f"{folder}: the adapter of {module_name} contains NaN or Inf")
        with torch.no_grad():
            factors[module_name] = Factors(
                a=torch.cat([module.lora_A[n].weight.float() for n in names]),
                b=torch.cat([module.lora_B[n].weight.float() * module.scaling[n] for n in names], dim=1),
                ranks=tuple(module.lora_A[n].weight.shape[0] for n in names))
    settings = {"task_type": configs[0].get("task_type"), "fan_in_fan_out": bool(configs[0].get("fan_in_fan_out")),
                "base_model_name_or_path": configs[0].get("base_model_name_or_path")}
    return peft_model.unload(), factors, settings


def concatenated_config(factors: dict[str, Factors], settings: dict[str, Any]) -> Any:
    """The peft LoraConfig of the rank-Σr adapter: alpha = r on every module (scaling 1, the sᵢ live in B), exact
    module names as targets, per-module ranks as patterns where they are not all alike."""
    from peft import LoraConfig

    ranks = {name: sum(f.ranks) for name, f in factors.items()}
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {re.escape(name): r for name, r in ranks.items() if r != common}  # peft matches keys as regexes
    return LoraConfig(r=common, lora_alpha=common, rank_pattern=pattern, alpha_pattern=dict(pattern),
                      target_modules=sorted(ranks), lora_dropout=0.0, bias="none",
                      fan_in_fan_out=settings["fan_in_fan_out"], task_type=settings["task_type"],
                      base_model_name_or_path=settings["base_model_name_or_path"])


class AdapterSession:
    """The search session (the interface `dem.search.search_weights` uses: `model`, `strategy`, `replays`,
    `set(weights, params)`) for LoRA fine-tunes and a linear strategy: the base with one rank-Σrᵢ adapter whose
    B blocks `set` rescales to cᵢsᵢBᵢ. A trial's model depends only on its weights (nothing accumulates), so a
    resumed search need not replay the finished trials.

    `model` (the base, on its device and dtype) becomes the session's peft model; `sha256` as in read_factors."""

    replays = False

    def __init__(self, model: torch.nn.Module, adapters: list[Path], strategy: Strategy, params: Params,
                 seed: int = 0, *, sha256: list[str] | None = None) -> None:
        from peft import get_peft_model

        if not is_linear(strategy, params, len(adapters)):
            raise AdapterMergeError(f"merge '{strategy.name}' is not θ₀ + Σ cᵢΔᵢ with these parameters; it needs "
                                    "the dense vectors")
        self.strategy, self.seed, self.n = strategy, seed, len(adapters)
        base, factors, self.settings = read_factors(model, [Path(a) for a in adapters], sha256)
        self.config = concatenated_config(factors, self.settings)
        self.model = get_peft_model(base, self.config, adapter_name=ADAPTER)
        self.model.eval()
        modules = dict(self.model.base_model.model.named_modules())
        self.targets: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        with torch.no_grad():
            for name, f in factors.items():
                lora_a, lora_b = modules[name].lora_A[ADAPTER].weight, modules[name].lora_B[ADAPTER].weight
                lora_a.copy_(f.a)
                lora_b.zero_()  # the model starts as θ₀: all coefficients zero
                dst, src = self.targets.setdefault(f.ranks, ([], []))
                dst.append(lora_b)
                src.append(f.b.to(lora_b.device))
        self.coeffs = [0.0] * self.n

    def held_bytes(self) -> int:
        """Bytes of the tensors this session holds: the model with its rank-Σr adapter, and each B it rescales."""
        tensors = [*self.model.parameters(), *(b for _, src in self.targets.values() for b in src)]
        return sum(t.numel() * t.element_size() for t in tensors)

    @torch.no_grad()
    def set(self, weights: list[float], params: Params) -> None:
        """B_cat ← [c₁s₁B₁ | c₂s₂B₂ | …] for cᵢ = strategy.coefficients(weights, params): one multiply per
        adapted module, written straight into its B (out × Σr numbers; nothing the size of a weight)."""
        coeffs = self.strategy.coefficients(weights, params)
        if coeffs is None:
            raise AdapterMergeError(f"merge '{self.strategy.name}' is not θ₀ + Σ cᵢΔᵢ for parameters {params}")
        for ranks, (dst, src) in self.targets.items():
            scale = torch.repeat_interleave(torch.tensor(coeffs, dtype=torch.float32), torch.tensor(ranks))
            scale = scale.to(src[0].device)
            for b, scaled in zip(dst, src, strict=True):
                torch.mul(scaled, scale, out=b)
        self.coeffs = list(coeffs)

    def save_adapter(self, folder: Path, base: str | None = None) -> None:
        """The current merge as one peft adapter (adapter_config.json, adapter_model.safetensors); `base`: the base
        model's name or folder to record in it (default: the one the input adapters record)."""
        if base is not None:
            self.model.peft_config[ADAPTER].base_model_name_or_path = base
        self.model.save_pretrained(str(folder))

    def merged_model(self) -> torch.nn.Module:
        """The base with the current merge folded into its weights (peft's merge_and_unload): a plain model. Ends
        the session (its model is that plain model now)."""
        return self.model.merge_and_unload()
