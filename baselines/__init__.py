"""The data-mixing arm: one model per mixture of the training distributions."""
