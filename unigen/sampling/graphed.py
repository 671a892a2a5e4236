"""CUDA-graph replay of a decoding ``model_fn``.

A decoding step of a small network over a few positions is launch-bound on a GPU: the prefix-cached
step of the 26M unified shapes model computes 40 positions in about the time its ~200 kernel
launches take (docs/performance.md).  A CUDA graph records those launches once and replays them
with one call, the way vLLM and SGLang decode.  The network, its inputs' shapes and every tensor
it reads (weights, the prefix KV cache) must stay put between replays; only the token values
change, and they are copied into the captured input buffer before each replay.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

ModelFn = Callable[[Tensor], Tensor]


def autocast_state() -> tuple[bool, torch.dtype]:
    """Whether CUDA autocast is on, and to what dtype: a graph replays the precision it was
    captured in, so graphs are kept per state."""
    return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")


def check_cuda_graphs(device: torch.device) -> None:
    """One clear error when CUDA graphs are asked for where there are none."""
    if device.type != "cuda":
        raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {device}")


class GraphedModelFn:
    """``model_fn`` wrapper: the first call for an input shape runs ``fn`` eagerly ``warmup``
    times on a side stream (allocations, lazy kernel choices, the eager checks), captures one
    call, and every later call of that shape copies the tokens in and replays.

    Returns a copy of the captured output, so a caller may keep logits across calls.  Autocast
    is re-entered without its weight-cast cache during capture: the cache's tensors would be
    freed when the caller's autocast region ends while the graph still reads them (PyTorch's
    CUDA-graph notes).
    """

    def __init__(self, fn: ModelFn, warmup: int = 2) -> None:
        self.fn = fn
        self.warmup = warmup
        # per input shape and autocast state
        self._graphs: dict[tuple, tuple[Tensor, torch.cuda.CUDAGraph, Tensor]] = {}

    def __call__(self, tokens: Tensor) -> Tensor:
        key = (*tokens.shape, *autocast_state())
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(tokens)
            self._graphs[key] = entry
        static_in, graph, static_out = entry
        static_in.copy_(tokens)
        graph.replay()
        return static_out.clone()

    @staticmethod
    def _autocast():
        enabled, dtype = autocast_state()
        return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)

    def _capture(self, tokens: Tensor) -> tuple[Tensor, torch.cuda.CUDAGraph, Tensor]:
        check_cuda_graphs(tokens.device)
        static_in = tokens.clone()
        side = torch.cuda.Stream(device=tokens.device)
        side.wait_stream(torch.cuda.current_stream(tokens.device))
        with torch.cuda.stream(side), self._autocast():
            for _ in range(self.warmup):
                self.fn(static_in)
        torch.cuda.current_stream(tokens.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), self._autocast():
            static_out = self.fn(static_in)
        return static_in, graph, static_out
