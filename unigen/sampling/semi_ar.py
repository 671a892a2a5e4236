"""Semi-autoregressive block decoding for text (LLaDA, Nie et al. 2025; MMaDA, Yang et al. 2025;
threshold-within-block as in Fast-dLLM, Wu et al. 2025).

The editable region of each row is cut, left to right, into blocks of ``block_length`` positions.
Only the leftmost unfinished block is decoded; later blocks stay masked (and visible to the network as
masks) until it is done. Inside a block an inner sampler's rule decides what to reveal, on its own
schedule. Rows advance independently.

The step budget: by default the blocks share ``num_steps`` as in LLaDA's semi-autoregressive
remasking (``steps_per_block = num_steps / num_blocks``): a row with ``n`` blocks must have block
``k`` fully revealed by the end of global step ``ceil((k + 1) * num_steps / n) - 1``, so every
block gets an equal share (to one step) and the last block ends with the budget.  With fewer steps
than blocks, the blocks that share a deadline are decoded together as one.  A row that finishes a
block early (an adaptive inner sampler such as ``confident``, or EOS padding) starts the next one
at once and keeps the steps it saved for it.  An explicit ``steps_per_block`` gives every block
that many steps instead, ``num_steps`` then being only a hard bound: its last step reveals
everything still masked, in all blocks.

Variable-length answers: once ``eos_id`` is revealed, every editable position after the first EOS is
filled with ``pad_id`` (``eos_id`` when no pad is given) and counts as decoded, so the row stops as
soon as the positions before its EOS are done.

The sampler tracks each row's step within its block, so a decode must begin at ``step_index == 0``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from unigen.sampling.base import SAMPLERS, Sampler, SamplerOutput, build_sampler
from unigen.sampling.rng import GeneratorArg, select_generators


@SAMPLERS.register("semi_ar")
class SemiARSampler(Sampler):
    """Args:
        block_length: positions per block (LLaDA uses 32).
        steps_per_block: inner sampler steps per block; None (the default) shares ``num_steps``
            among the row's blocks (LLaDA), a number gives each block that many steps.
        inner: the within-block rule, a registered sampler name or a :class:`Sampler` instance.
        inner_kwargs: constructor arguments when ``inner`` is a name.
        eos_id: end-of-text token; None disables variable-length handling.
        pad_id: token written after EOS (None = ``eos_id``).
        mask_id: the mask token id (propagated to the inner sampler).
    """

    needs_editable = True
    needs_special_ids = ("eos_id", "pad_id")  # the pipeline passes its <eos> and <pad> ids

    def __init__(
        self,
        block_length: int = 32,
        steps_per_block: int | None = None,
        inner: str | Sampler = "maskgit",
        inner_kwargs: dict[str, Any] | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
        mask_id: int | None = None,
    ) -> None:
        super().__init__(mask_id=mask_id)
        if block_length < 1:
            raise ValueError(f"block_length must be >= 1, got {block_length}")
        if isinstance(inner, Sampler):
            if inner_kwargs:
                raise ValueError("inner_kwargs only applies when inner is a sampler name")
            self.inner = inner
        else:
            self.inner = build_sampler(inner, **(inner_kwargs or {}))
        if isinstance(self.inner, SemiARSampler):
            raise ValueError("the inner sampler of semi_ar cannot itself be semi_ar")
        self.block_length = int(block_length)
        self.steps_per_block = None if steps_per_block is None else int(steps_per_block)
        if self.steps_per_block is not None and self.steps_per_block < 1:
            raise ValueError(f"steps_per_block must be >= 1, got {steps_per_block}")
        if pad_id is not None and eos_id is None:
            raise ValueError("pad_id needs eos_id: padding starts after the first EOS")
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._block: Tensor | None = None  # [B] block (group) each row worked on last step (-1 = finished)
        self._local_step: Tensor | None = None  # [B] steps spent so far in that block

    def set_timesteps(self, num_steps: int) -> None:
        super().set_timesteps(num_steps)
        if self.steps_per_block is not None:
            self.inner.set_timesteps(self.steps_per_block)
        self._block = self._local_step = None

    def block_deadlines(self, blocks: Tensor, editable: Tensor) -> Tensor:
        """``[B, S]`` the global step by whose end each editable position's block must be revealed
        when the blocks share the budget (LLaDA): block ``k`` of a row with ``n`` blocks ends at
        step ``ceil((k + 1) * num_steps / n) - 1``; -1 outside the editable region."""
        num_blocks = (editable.sum(-1, keepdim=True) + self.block_length - 1) // self.block_length
        ends = ((blocks + 1) * self.num_steps + num_blocks - 1) // num_blocks.clamp_min(1) - 1
        return torch.where(editable, ends, -1)

    def block_index(self, editable: Tensor) -> Tensor:
        """``[B, S]`` block of each editable position (by order among the row's editable positions), -1 elsewhere."""
        order = editable.long().cumsum(-1) - 1
        return torch.where(editable, torch.div(order, self.block_length, rounding_mode="floor"), -1)

    def step(
        self,
        logits: Tensor,
        tokens: Tensor,
        is_masked: Tensor,
        step_index: int,
        generator: GeneratorArg = None,
        editable: Tensor | None = None,
    ) -> SamplerOutput:
        self.validate_step(logits, tokens, is_masked, step_index, generator, editable)
        assert editable is not None
        self.inner.mask_id = self.mask_id
        active = is_masked.any(-1)
        blocks = self.block_index(editable)
        if self.steps_per_block is None:
            # blocks sharing a deadline (fewer steps than blocks) are decoded as one group
            groups = self.block_deadlines(blocks, editable)
        else:
            groups = blocks
        current = torch.where(active, groups.masked_fill(~is_masked, torch.iinfo(torch.long).max).amin(-1), -1)
        local = self._advance(current, step_index)
        if self.steps_per_block is None:
            # the steps left until the group's deadline, counted from when the row entered it
            budget = current - (step_index - local) + 1
        else:
            budget = torch.full_like(local, self.steps_per_block)
        if bool(((local >= budget) & active).any()):
            raise RuntimeError(
                f"inner sampler {type(self.inner).__name__} left a block unfinished after its last step"
            )

        if self.is_last_step(step_index):
            region = is_masked
            local = budget - 1
        else:
            region = editable & (groups == current.unsqueeze(-1))

        new_tokens, new_masked = tokens.clone(), is_masked.clone()
        confidence = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
        plans = torch.stack([budget, local], -1)[active]
        for steps, value in torch.unique(plans, dim=0).tolist():
            rows = torch.nonzero(active & (budget == steps) & (local == value)).squeeze(-1)
            self.inner.set_timesteps(steps)
            sub = self.inner.step(
                logits[rows],
                tokens[rows],
                is_masked[rows] & region[rows],
                int(value),
                generator=select_generators(generator, rows.tolist()),
                editable=region[rows],
            )
            new_tokens[rows] = sub.tokens
            new_masked[rows] = (is_masked[rows] & ~region[rows]) | sub.is_masked
            if sub.confidence is not None:
                confidence[rows] = sub.confidence.float()

        if self.eos_id is not None:
            new_tokens, new_masked = self._pad_after_eos(new_tokens, new_masked, editable)
        return SamplerOutput(new_tokens, new_masked, confidence)

    def _advance(self, current: Tensor, step_index: int) -> Tensor:
        """Per-row step index inside the current block (or deadline group); resets when a row
        moves to a new one."""
        if step_index == 0:
            self._local_step = torch.zeros_like(current)
        elif self._local_step is None or self._block is None or self._local_step.shape != current.shape:
            raise RuntimeError("SemiARSampler: a decode must start at step_index 0 with a fixed batch")
        else:
            self._local_step = torch.where(current == self._block, self._local_step + 1, 0)
        self._block = current.clone()
        return self._local_step

    def _pad_after_eos(self, tokens: Tensor, is_masked: Tensor, editable: Tensor) -> tuple[Tensor, Tensor]:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        is_eos = editable & ~is_masked & (tokens == self.eos_id)
        first_eos = torch.where(is_eos, positions, tokens.shape[1]).amin(-1, keepdim=True)
        after = editable & (positions > first_eos)
        fill = self.pad_id if self.pad_id is not None else self.eos_id
        return tokens.masked_fill(after, fill), is_masked & ~after

    def _repr_fields(self) -> dict[str, Any]:
        return {
            "block_length": self.block_length,
            "steps_per_block": self.steps_per_block,
            "inner": self.inner,
            "eos_id": self.eos_id,
            "pad_id": self.pad_id,
            **super()._repr_fields(),
        }
