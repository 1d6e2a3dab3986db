"""LoRA through peft: wrap a model for adapter training, open a trained adapter as a plain model, and turn an
adapter into the dense distribution vector it applies — so that everything downstream of training (perplexity,
lm-eval, every merge strategy) sees ordinary weights, and the cache stores only the adapter (peft's own format,
loadable anywhere with `PeftModel.from_pretrained(base, folder)`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes beside adapter_model.safetensors
ADAPTER = "default"  # peft's name for a model's single adapter
# In every LoRA run's key: bump when a change alters what a LoRA run trains (full runs' keys never hold it).
# 2: each adapter's initialisation is seeded (before, it followed whatever the process had run first)
LORA_VERSION = 2


def settings(training: Any) -> dict[str, Any]:
    """The LoRA part of a run spec from the `training` config: empty for full fine-tuning (so full runs keep
    their keys), else the method and every setting that changes the trained adapter."""
    if training.method == "full":
        return {}
    lora = training.lora
    return {"method": "lora", "version": LORA_VERSION,
            "lora": {"r": int(lora.r), "alpha": float(lora.alpha), "dropout": float(lora.dropout),
                     "target_modules": sorted(str(t) for t in lora.target_modules)}}


def matches(name: str, targets: list[str] | tuple[str, ...]) -> bool:
    """peft's rule for a list of target_modules: the module's name is one of them or ends in ".<one of them>"."""
    return any(name == t or name.endswith(f".{t}") for t in targets)


@dataclass(frozen=True)
class Layers:
    """What `target_modules` can name in a model, by full module name."""

    linear: dict[str, tuple[int, int]]  # each nn.Linear and GPT-2 Conv1D: (in, out) features
    tied: dict[str, str]  # linear layers whose weight is another module's parameter (a tied LM head): -> that one
    other: dict[str, str]  # every other module: its class


def layers(config: Any) -> Layers:
    """The layers of the causal LM `config` describes, built on the meta device (no memory, no weights read)."""
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    owner = {id(p): name for name, p in model.named_parameters()}  # a tied tensor under its first name only
    linear, tied, other = {}, {}, {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linear[name] = (module.in_features, module.out_features)
        elif isinstance(module, Conv1D):
            linear[name] = (module.weight.shape[0], module.weight.shape[1])  # Conv1D stores its weight (in, out)
        else:
            if name:
                other[name] = type(module).__name__
            continue
        if owner[id(module.weight)] != f"{name}.weight":
            tied[name] = owner[id(module.weight)]
    return Layers(linear, tied, other)


def target_problem(config: Any, targets: list[str], model: str) -> str:
    """"" when every name in `targets` (training.lora.target_modules) adapts linear layers of the model `config`
    describes (`model` names it in the message), else one line: the names that match no layer, a layer that is not
    linear (peft fails on it) or a weight tied to another (peft trains the adapter on that layer alone but merges
    it into the shared weight, so evaluation and DEM's vector would see another model), and the names that work.
    peft alone fails only when no name matches, and then only as the first run starts."""
    found = layers(config)
    problems, unknown = [], []
    for t in targets:
        tied = [n for n in found.tied if matches(n, [t])]
        other = [f"{n} ({kind})" for n, kind in found.other.items() if matches(n, [t])]
        if tied:
            problems.append(f"'{t}' names {tied[0]}, whose weight is tied to {found.tied[tied[0]]} "
                            "(tie_word_embeddings): its adapter would be trained on one layer and merged into both")
        elif other:
            problems.append(f"'{t}' names {other[0]}, not a linear layer")
        elif not any(matches(n, [t]) for n in found.linear):
            unknown.append(f"'{t}'")
    if unknown:
        problems.insert(0, f"{', '.join(unknown)} name{'s' if len(unknown) == 1 else ''} no layer")
    if not problems:
        return ""
    names = dict.fromkeys(n.rsplit(".", 1)[-1] for n in found.linear if n not in found.tied)
    return f"in {model}, {', '.join(problems)}; the linear layers LoRA can adapt there: {', '.join(names)}"


def wrap(model: torch.nn.Module, lora: dict[str, Any], gradient_checkpointing: bool = False) -> Any:
    """The model with LoRA adapters on `lora["target_modules"]` and every base weight frozen (peft)."""
    from peft import LoraConfig, get_peft_model

    if gradient_checkpointing:  # recomputed blocks need an input that requires grad when the embedding is frozen
        model.enable_input_require_grads()
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=list(lora["target_modules"]), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_params(model: torch.nn.Module) -> int:
    """Parameters the optimizer updates (the adapters' A and B under LoRA)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_adapter(folder: Path) -> bool:
    """Whether a saved run is a peft adapter rather than a full checkpoint."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def merged(base: torch.nn.Module, folder: Path) -> torch.nn.Module:
    """The base with the adapter in `folder` folded into its weights: a plain transformers model again."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(folder)).merge_and_unload()


def dense_vector(base: torch.nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    """The distribution vector an adapter applies, for every parameter of the base: Δ = scale·B·A on each adapted
    weight (peft's get_delta_weight, the update merge_and_unload adds), zero elsewhere; fp32 like every Δ.
    `base` is consumed (peft injects the adapter into it)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = [k for k, _ in base.named_parameters()]  # a tied tensor once, as copy_params lists it
    shapes = {k: v.shape for k, v in base.named_parameters()}
    model = PeftModel.from_pretrained(base, str(folder))
    delta = {}
    for name, module in model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            delta[f"{name}.weight"] = module.get_delta_weight(ADAPTER).detach().float()
    missing = set(delta) - set(names)
    if missing:
        raise ValueError(f"{folder}: adapted weights {sorted(missing)[:3]} are not parameters of the base")
    return {k: (delta[k] if k in delta else torch.zeros(shapes[k], dtype=torch.float32)).contiguous()
            for k in names}
