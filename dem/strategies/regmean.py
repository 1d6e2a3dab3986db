"""RegMean (Jin et al. 2023, https://arxiv.org/abs/2212.09849), as a DEM merge.

For a linear layer y = xWᵀ with input Gram matrices Gᵢ = XᵢᵀXᵢ (dem.statistics `input_gram`), RegMean is the
least-squares merge W* = (Σ Gᵢ Wᵢᵀ)ᵀ (Σ Gᵢ)⁻¹ = argmin_W Σᵢ ‖XᵢWᵀ − XᵢWᵢᵀ‖², with each Gᵢ's off-diagonal entries
scaled by α (α = 1: exact least squares; smaller α pulls toward plain averaging). In Δ terms that is
W₀ + Σ Δᵢ G̃ᵢ (Σ G̃)⁻¹, so the merge here is W₀ + Σ wᵢ Δᵢ G̃ᵢ (Σ G̃)⁻¹: every weight 1 is RegMean, identical Gram
matrices give plain averaging, and the searched weights scale each model's update as DEM's do. Tensors without a
Gram matrix (embeddings, norms, a tied LM head, GPT-2's Conv1D) are merged as `dem` does: θ₀ + Σ wᵢΔᵢ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dem.merge import Param, Params, Stats, dem_merge, register

Tensor = torch.Tensor


def regmean_updates(deltas: Sequence[Tensor], params: Params, generator: torch.Generator | None,
                    stats: Stats) -> list[Tensor]:
    """Δᵢ G̃ᵢ (Σ G̃)⁻¹ for a linear weight, in float64 (the solve is the precision-sensitive step); Δᵢ elsewhere."""
    grams = stats["input_gram"]
    if any(g is None for g in grams) or deltas[0].dim() != 2:
        return list(deltas)
    alpha = params["alpha"]
    scaled = []
    for g in grams:
        g = g.to(torch.float64)
        diagonal = torch.diag(torch.diagonal(g))
        scaled.append(alpha * g + (1 - alpha) * diagonal)
    total = sum(scaled)
    out = []
    for d, g in zip(deltas, scaled, strict=True):
        rhs = (d.to(torch.float64) @ g).t()  # (Δ G̃)ᵀ; Σ G̃ is symmetric, so (Δ G̃ (Σ G̃)⁻¹)ᵀ = (Σ G̃)⁻¹ (Δ G̃)ᵀ
        try:
            solved = torch.linalg.solve(total, rhs)
        except torch.linalg.LinAlgError:  # an input dimension no token ever used: the pseudo-inverse leaves it be
            solved = torch.linalg.pinv(total) @ rhs
        out.append(solved.t().to(d.dtype).contiguous())
    return out


@register("regmean", params=[Param("alpha", default=0.9, search=(0.0, 1.0), low=0.0, high=1.0,
                                   doc="scale of the Gram matrices' off-diagonal entries (1: exact least squares)")],
          prepare=regmean_updates, prepare_params=["alpha"], coefficients=lambda w, p: list(w),
          stats=["input_gram"], reference="https://arxiv.org/abs/2212.09849")
def regmean_merge(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], params: Params) -> Tensor:
    """RegMean on linear layers, dem elsewhere: W₀ + Σ wᵢ Δᵢ G̃ᵢ (Σ G̃)⁻¹ (all wᵢ = 1: RegMean)."""
    return dem_merge(base, deltas, weights, params)
