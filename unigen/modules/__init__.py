"""Transformer building blocks: norms, attention, MLPs, position encodings, output heads, LoRA."""
