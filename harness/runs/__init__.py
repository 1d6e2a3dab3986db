"""Training runs: a run as data (spec), the Trainer that executes it (trainer, train_run for torchrun), where runs go
(executor), the verified cache every result lives in (cache), the base model θ₀ (base), their FLOPs and bytes (cost,
accelerators), and what a run records about itself (provenance, stopwatch). May import data and models."""
