"""Output heads, picked by the recipe (``head: shared | separate``).

Every head maps hidden states to logits over the *whole* unified vocabulary; the transformer then adds
the per-modality legal bias so a text position can only emit text ids and an image position only
image codes.
- ``shared``: one projection over the whole vocabulary (Show-o).
- ``separate``: one projection per modality (UniDisc-style), concatenated into the unified id order.

A head is built as ``Head(dim, text_size, image_size, **head_kwargs)`` (:func:`build_head`; the
recipe's ``model.init_args.head_kwargs``, saved in the transformer's config), plus
``extra_sizes=(n1, n2, ...)`` (the codebook sizes of further modalities, :mod:`unigen.modalities`,
whose ids follow the image codes) only when the model has such segments.

``forward(hidden, vocab_limit=None)``: with ``vocab_limit`` only the first ``vocab_limit`` ids are
scored.  Decoding text passes the text vocabulary's size: every image code is illegal at a text
position, so skipping them loses nothing a sampler reads and saves the projection onto the
codebook (15,360 codes against ~100 words for the shapes world).  A new head takes the argument too.

On CUDA the shared head's projection runs with its output width padded to a multiple of 64
(:func:`aligned_linear`): a unified vocabulary is rarely a round number (15,360 codes + 79 words
= 15,439), and cuBLAS serves a bf16 matmul whose output rows are not 16-byte aligned with old
sm75 kernels (an H200 profile of the 219M step showed ``cutlass_75_tensorop_bf16`` kernels taking
9 ms a step for this one projection).  nanoGPT pads GPT-2's 50,257 ids to 50,304 for the same
reason.  Only the computation is padded: the weights and checkpoints keep the vocabulary's size.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigen.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("output head")

CUDA_OUTPUT_MULTIPLE = 64


def build_head(name: str, dim: int, text_size: int, image_size: int,
               extra: Mapping[str, int] | None = None, options: Mapping[str, Any] | None = None) -> nn.Module:
    """The registered head ``name`` with the recipe's ``options`` (``head_kwargs``), and
    ``extra_sizes`` when the model has further modalities (``extra``: name -> codebook size).  A head
    that cannot take them is refused in one line naming what it lacks, before anything is built."""
    cls = HEADS.get(name)
    options = dict(options or {})
    params = inspect.signature(cls).parameters
    any_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
    origin = f"head {name!r} ({cls.__module__}.{cls.__qualname__})"
    if extra and "extra_sizes" not in params and not any_keyword:
        raise ValueError(f"{origin} does not take extra_sizes, which a model with the further "
                         f"modalities {list(extra)} needs (docs/extending.md, 'A head')")
    reserved = sorted({"dim", "text_size", "image_size", "extra_sizes"} & set(options))
    if reserved:
        raise ValueError(f"head_kwargs: {', '.join(reserved)} come from the model, not the recipe")
    unknown = [k for k in options if k not in params and not any_keyword]
    if unknown:
        takes = [k for k in params if k not in ("dim", "text_size", "image_size", "extra_sizes")]
        raise ValueError(f"head_kwargs: {origin} does not take {', '.join(unknown)} "
                         f"(it takes {', '.join(takes) or 'no options'})")
    sizes: dict[str, Sequence[int]] = {"extra_sizes": tuple(extra.values())} if extra else {}
    try:
        return cls(dim, text_size, image_size, **sizes, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"head_kwargs {options}: {origin} cannot use them ({err})") from None


def aligned_linear(x: Tensor, weight: Tensor, multiple: int) -> Tensor:
    """``F.linear(x, weight)`` computed with the output width padded with zero rows to a multiple
    of ``multiple`` and the padding sliced off: the same values, with every row of the output
    (and of its gradient) aligned for the fast matmul kernels."""
    pad = -weight.shape[0] % multiple
    if pad == 0:
        return F.linear(x, weight)
    return F.linear(x, F.pad(weight, (0, 0, 0, pad)))[..., : weight.shape[0]]


@HEADS.register("shared")
class SharedHead(nn.Module):
    def __init__(self, dim: int, text_size: int, image_size: int,
                 extra_sizes: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, text_size + image_size + sum(extra_sizes), bias=False)

    def forward(self, hidden: Tensor, vocab_limit: int | None = None) -> Tensor:
        if type(self.proj) is not nn.Linear:  # wrapped (e.g. LoRA): score all, keep the first ids
            out = self.proj(hidden)
            return out if vocab_limit is None else out[..., :vocab_limit]
        weight = self.proj.weight if vocab_limit is None else self.proj.weight[:vocab_limit]
        # the CPU's kernels have no alignment cliff, so the padding would only cost a copy there
        return aligned_linear(hidden, weight, CUDA_OUTPUT_MULTIPLE if hidden.is_cuda else 1)


@HEADS.register("separate")
class SeparateHeads(nn.Module):
    def __init__(self, dim: int, text_size: int, image_size: int,
                 extra_sizes: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.text = nn.Linear(dim, text_size, bias=False)
        self.image = nn.Linear(dim, image_size, bias=False)
        # only with further modalities, so the state dict of a text + image model is unchanged
        if extra_sizes:
            self.extra = nn.ModuleList(nn.Linear(dim, n, bias=False) for n in extra_sizes)
        self.text_size = text_size

    def forward(self, hidden: Tensor, vocab_limit: int | None = None) -> Tensor:
        if vocab_limit is not None and vocab_limit <= self.text_size:
            return self.text(hidden)[..., :vocab_limit]
        parts = [self.text(hidden), self.image(hidden)]
        if hasattr(self, "extra"):
            parts += [proj(hidden) for proj in self.extra]
        logits = torch.cat(parts, dim=-1)
        return logits if vocab_limit is None else logits[..., :vocab_limit]
