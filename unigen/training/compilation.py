"""``torch.compile`` of the transformer blocks, as the training modules' ``compile`` option asks.

``compile: true`` compiles each block with the default mode (fused kernels, one graph per block:
short compile times, and the head's dynamic shapes stay outside).  A mode name picks another of
``torch.compile``'s modes; ``reduce-overhead`` also replays each block's kernels as a CUDA graph,
which removes the per-kernel launch cost that bounds a small model's step on a GPU (the 26M
shapes model was host-bound at 90 ms a step with about 48 ms of kernels, docs/performance.md).
Blocks see fixed shapes in training (text padded to ``max_text_len``, a fixed image grid), which is
what a CUDA graph needs; the masked-position head runs eagerly after them.
"""

from __future__ import annotations

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def compile_mode(value: bool | str | None) -> str | None:
    """The ``torch.compile`` mode a ``compile`` option names: ``None`` (eager) for false, ``default``
    for true, else the mode itself; one error naming the choices for anything else."""
    if value is None or value is False:
        return None
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ValueError(f"compile must be true, false or one of {list(COMPILE_MODES)}, got {value!r}")


def compile_blocks(blocks: nn.ModuleList, value: bool | str | None) -> None:
    """Compile every block in place (``nn.Module.compile``: parameters and state dict keys are
    unchanged, so checkpoints load either way)."""
    mode = compile_mode(value)
    if mode is None:
        return
    for block in blocks:
        block.compile(mode=None if mode == "default" else mode)


def mark_step_begin(value: bool | str | None) -> None:
    """Tell CUDA graph trees that a new training iteration starts (``torch.compile``'s graphs then
    reuse their memory for it).  Without the mark they infer iterations from forward/backward
    order, which validation's gradient-free forwards and sampling in between training steps make
    ambiguous."""
    if compile_mode(value) in CUDA_GRAPH_MODES:
        torch.compiler.cudagraph_mark_step_begin()


__all__ = ["COMPILE_MODES", "CUDA_GRAPH_MODES", "compile_blocks", "compile_mode", "mark_step_begin"]
