"""Models: opening a causal LM on a device and dtype (loading) and its LoRA adapters (lora). Imports only
harness.errors from the rest of the harness."""
