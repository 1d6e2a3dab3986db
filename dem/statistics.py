"""Per-model statistics that data-aware merge strategies need, computed from a fine-tuned model and rows of its own
training distribution: a registry of named statistics, each a function (model, sequences) → {parameter name:
tensor}, like the strategy registry in dem.merge.

Built in:

* `fisher_diag` — the diagonal of the empirical Fisher information (Matena & Raffel 2022): for every parameter,
  the mean over sequences of the squared gradient of that sequence's summed log-likelihood of its response tokens
  (one backward pass per sequence; the "empirical" Fisher, on the data's tokens, as their code computes it for LMs).
* `input_gram` — for every nn.Linear weight, the Gram matrix of the layer's inputs XᵀX over every token, divided
  by the number of tokens (RegMean, Jin et al. 2023; the scale cancels in the merge when each model's rows hold the
  same number of tokens, and keeps fp32 sums of a long run bounded). An LM head tied to the embeddings is left out
  (it is the embedding tensor; strategies merge it as they merge tensors without the statistic), and so are
  GPT-2's Conv1D layers (their weight is stored input-major; covering them is not done).

A plug-in adds a statistic with `@register_statistic("name", flops_per_token=...)` in its strategy file; the harness
computes each statistic once per fine-tuned model and keeps it in the run cache (dem.arm).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError

Tensor = torch.Tensor
STATS_FILE = "stat.safetensors"  # one statistic of one model in its cache entry: {parameter name: tensor}
Sequence_ = tuple[list[int], list[int]]  # token ids and labels (-100: not scored), as harness.runs.spec.read_pool gives
StatisticFn = Callable[[torch.nn.Module, Sequence[Sequence_]], dict[str, Tensor]]


class StatisticError(HarnessError, ValueError):
    """An unknown statistic or one that cannot be computed or read; one line."""


@dataclass(frozen=True)
class Statistic:
    name: str
    compute: StatisticFn
    version: int  # part of the cache key: bump when the computation changes
    # FLOPs per token beyond one forward pass, as multiples of the forward (fisher: a backward, 2×) ...
    backward: bool
    # ... and absolute FLOPs per token of its own arithmetic (input_gram: 2·in² per linear layer), from the model
    extra_flops_per_token: Callable[[torch.nn.Module], float]
    tensors: Callable[[torch.nn.Module], dict[str, tuple[int, ...]]]  # the tensors it holds for a model: shapes
    doc: str = ""


STATISTICS: dict[str, Statistic] = {}


def register_statistic(name: str, *, version: int = 1, backward: bool = False,
                       extra_flops_per_token: Callable[[torch.nn.Module], float] = lambda model: 0.0,
                       tensors: Callable[[torch.nn.Module], dict[str, tuple[int, ...]]] | None = None,
                       ) -> Callable[[StatisticFn], StatisticFn]:
    """Register `fn(model, sequences) -> {parameter name: tensor}` as statistic `name`: `backward` if it takes a
    backward pass per token (for its FLOPs), `extra_flops_per_token` its own arithmetic, `tensors(model)` the
    names and shapes it holds for a model (default: one tensor shaped like each parameter) — the plan sizes it
    and saved statistics are checked against it, both on a model built on the meta device."""

    def wrap(fn: StatisticFn) -> StatisticFn:
        if name in STATISTICS:
            raise StatisticError(f"statistic '{name}' is already registered (pick another name)")
        STATISTICS[name] = Statistic(name, fn, version, backward, extra_flops_per_token, tensors or _like_params,
                                     (fn.__doc__ or "").strip())
        return fn

    return wrap


def _like_params(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def meta_model(config: Any) -> torch.nn.Module:
    """The causal LM `config` describes, on the meta device: shapes without memory or weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(copy.deepcopy(config))


def stored_bytes(name: str, config: Any) -> int:
    """Bytes one model's statistic `name` takes (fp32), for the plan's disk line."""
    return 4 * sum(math.prod(shape) for shape in get_statistic(name).tensors(meta_model(config)).values())


def get_statistic(name: str) -> Statistic:
    if name not in STATISTICS:
        raise StatisticError(f"unknown statistic '{name}'; registered: {', '.join(sorted(STATISTICS))}")
    return STATISTICS[name]


def _batches(model: torch.nn.Module, sequences: Sequence[Sequence_]) -> Iterator[tuple[Tensor, Tensor]]:
    """Each sequence as a [1, len] batch on the model's device (no padding: every token is real)."""
    device = next(model.parameters()).device
    for ids, labels in sequences:
        yield (torch.tensor([ids], dtype=torch.long, device=device),
               torch.tensor([labels], dtype=torch.long, device=device))


@register_statistic("fisher_diag", backward=True)
def fisher_diag(model: torch.nn.Module, sequences: Sequence[Sequence_]) -> dict[str, Tensor]:
    """Mean over sequences of (∂ log p(response | prompt) / ∂θ)², per parameter, in fp32."""
    params = dict(model.named_parameters())  # tied tensors appear once
    for p in params.values():
        p.requires_grad_(True)
    total = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    model.eval()  # no dropout: the Fisher of the model as it is
    for x, y in _batches(model, sequences):
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=x).logits[:, :-1].float()
        target = y[:, 1:]
        log_lik = -torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                     ignore_index=-100, reduction="sum")
        log_lik.backward()
        for n, p in params.items():
            if p.grad is not None:
                total[n].add_(p.grad.float().square())
    model.zero_grad(set_to_none=True)
    return {n: (t / max(1, len(sequences))).cpu() for n, t in total.items()}


def _linear_weights(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """nn.Linear modules by their weight's parameter name, for weights `named_parameters` lists (a tied LM head is
    the embedding's tensor and is not)."""
    listed = {id(p): n for n, p in model.named_parameters()}  # a tied tensor under its first name only
    out = {}
    for name, module in model.named_modules():
        weight = f"{name}.weight" if name else "weight"
        if isinstance(module, torch.nn.Linear) and listed.get(id(module.weight)) == weight:
            out[weight] = module
    return out


def _gram_flops(model: torch.nn.Module) -> float:
    return float(sum(2 * m.in_features**2 for m in _linear_weights(model).values()))


def _gram_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: (m.in_features, m.in_features) for n, m in _linear_weights(model).items()}


@register_statistic("input_gram", extra_flops_per_token=_gram_flops, tensors=_gram_shapes)
def input_gram(model: torch.nn.Module, sequences: Sequence[Sequence_]) -> dict[str, Tensor]:
    """XᵀX / tokens of every nn.Linear's input over every token of the sequences, in fp32 ([in, in] per weight)."""
    layers = _linear_weights(model)
    grams = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float32, device=m.weight.device)
             for n, m in layers.items()}
    tokens = 0

    def hook(name: str) -> Callable[..., None]:
        def add(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            grams[name].addmm_(x.t(), x)
        return add

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in _batches(model, sequences):
                model(input_ids=x)
                tokens += x.numel()
    finally:
        for h in handles:
            h.remove()
    return {n: (g / max(1, tokens)).cpu() for n, g in grams.items()}


def select_sequences(sequences: Sequence[Sequence_], n_tokens: int, seq_len: int, seed: int) -> list[Sequence_]:
    """A seeded draw of training sequences, each cut to seq_len, until n_tokens tokens are taken (the last one cut
    to fit): the rows a statistic is computed on. Sequences with no scored token are skipped."""
    if n_tokens <= 0:
        raise StatisticError(f"dem.stats.n_tokens must be a positive integer, not {n_tokens}")
    order = torch.randperm(len(sequences), generator=torch.Generator().manual_seed(seed)).tolist()
    out, taken = [], 0
    for i in order:
        ids, labels = sequences[i]
        keep = min(seq_len, len(ids), n_tokens - taken)
        if keep < 2 or all(label == -100 for label in labels[1:keep]):
            continue
        out.append((list(ids[:keep]), list(labels[:keep])))
        taken += keep
        if taken >= n_tokens:
            break
    if not out:
        raise StatisticError("no training sequence has a scored token to compute a statistic on")
    return out


class StatsFiles:
    """Statistics on disk, one safetensors file per (statistic, model), read one tensor at a time as a merge asks
    for it: a search holds its prepared vectors, never every model's statistics at once (a Gram matrix per linear
    layer of a large model does not fit beside it)."""

    def __init__(self, files: dict[str, list[Path]]) -> None:
        from safetensors import safe_open

        self.files = files
        self._open = {s: [safe_open(str(f), framework="pt") for f in paths] for s, paths in files.items()}
        self._keys = {s: [set(h.keys()) for h in handles] for s, handles in self._open.items()}

    def __call__(self, tensor: str) -> dict[str, list[Tensor | None]]:
        return {s: [h.get_tensor(tensor) if tensor in keys else None
                    for h, keys in zip(handles, self._keys[s], strict=True)]
                for s, handles in self._open.items()}


def check_stats_files(files: dict[str, list[Path]], names: list[str], model: torch.nn.Module) -> None:
    """Saved statistics against the model they are for (`model`: built on the meta device from the base's
    config): every file readable, every tensor one the statistic holds for that model, with its shape, and some
    tensor there. Raises StatisticError naming the file."""
    from safetensors import safe_open

    for stat, paths in files.items():
        expected = get_statistic(stat).tensors(model)
        for name, path in zip(names, paths, strict=True):
            try:
                with safe_open(str(path), framework="pt") as f:
                    found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            except Exception as err:  # safetensors raises its own error types for a damaged header
                raise StatisticError(f"{path}: not a readable safetensors file ({type(err).__name__})") from None
            for key, got in found.items():
                if expected.get(key) != got:
                    why = f"expected {list(expected[key])}" if key in expected else f"{stat} has no such tensor"
                    raise StatisticError(f"{path}: tensor {key!r} {list(got)} does not match the models ({why})")
            if not found:
                raise StatisticError(f"{path}: holds no tensor; {stat} of --model {name} covers nothing")
