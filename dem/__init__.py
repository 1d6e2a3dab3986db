"""The DEM arm: one model per distribution, merged as θ₀ + Σ wᵢΔᵢ with weights searched on validation data."""
