"""Evaluation: task names and their per-task settings (tasks), what `eval.*` needs before training (checks), one
lm-eval call per model (runner), HELM-style calibration and robustness (helm, perturb), results as stored (results),
validation perplexity (perplexity), and the train/test overlap check (contamination). May import data, models, runs
and stats."""
