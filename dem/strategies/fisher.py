"""Fisher-weighted averaging (Matena & Raffel 2022, https://arxiv.org/abs/2111.09832), as a DEM merge.

Per parameter entry, model i's share is Pᵢ = (Fᵢ + s) / Σⱼ (Fⱼ + s), Fᵢ its diagonal Fisher (dem.statistics
`fisher_diag`) and s the smoothing floor; the merge is θ₀ + Σ wᵢ Pᵢ ⊙ Δᵢ. With every weight 1 this is the
paper's merge, Σ Pᵢθᵢ (the shares sum to 1, so θ₀ drops out); the searched weights scale each model's
Fisher-gated update as DEM's scale its Δᵢ. Identical Fishers give plain averaging; a model with zero Fisher on an
entry (s = 0) does not move it. Where every model's Fisher and s are zero the shares fall back to 1/n.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dem.merge import Param, Params, Stats, dem_merge, register

Tensor = torch.Tensor


def fisher_shares(deltas: Sequence[Tensor], params: Params, generator: torch.Generator | None,
                  stats: Stats) -> list[Tensor]:
    """Pᵢ ⊙ Δᵢ for each model; a tensor some model has no Fisher for is left as Δᵢ (merged as dem)."""
    fishers = stats["fisher_diag"]
    if any(f is None for f in fishers):
        return list(deltas)
    f = torch.stack([x.to(torch.float64) for x in fishers]) + params["smoothing"]
    total = f.sum(dim=0)
    shares = torch.where(total > 0, f / torch.where(total > 0, total, 1.0), 1.0 / len(deltas))
    return [(share * d.to(torch.float64)).to(d.dtype) for share, d in zip(shares, deltas, strict=True)]


@register("fisher", params=[Param("smoothing", default=1e-6, low=0.0,
                                  doc="added to every Fisher value before the shares (the paper's floor)")],
          prepare=fisher_shares, prepare_params=["smoothing"], coefficients=lambda w, p: list(w),
          stats=["fisher_diag"], reference="https://arxiv.org/abs/2111.09832")
def fisher_merge(base: Tensor, deltas: Sequence[Tensor], weights: Sequence[float], params: Params) -> Tensor:
    """Fisher merging: θ₀ + Σ wᵢ Pᵢ ⊙ Δᵢ with Fisher shares Pᵢ (all wᵢ = 1: the paper's Σ Pᵢθᵢ)."""
    return dem_merge(base, deltas, weights, params)
