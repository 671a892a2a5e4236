"""The decode loop: the only place in :mod:`unigen.sampling` that calls the network.

``decode`` alternates network calls and sampler steps until nothing is masked or the step budget is
spent. With ``cache_unchanged=True`` a step whose network input equals the previous call's reuses that
call's logits instead of calling again: MDLM's / UniDisc's cached sampler, which makes ancestral
sampling with many steps cost only as many calls as steps that changed something. Calls are counted
honestly, so ``num_model_calls`` is what a benchmark should report; ``calls_per_row`` says what each
row cost on its own (adaptive samplers such as confident decoding finish easy rows early).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from einops import rearrange
from torch import Tensor
from tqdm.auto import tqdm

from unigen.sampling.base import Sampler, SamplerOutput, check_num_steps
from unigen.sampling.guidance import ClassifierFreeGuidance, GuidedBatch, step_progress
from unigen.sampling.rng import GeneratorArg, check_generator

ModelFn = Callable[[Tensor], Tensor]
StepCallback = Callable[[int, SamplerOutput], None]


@dataclass
class DecodeResult:
    tokens: Tensor  # [B, S] long, nothing masked
    num_model_calls: int  # network calls actually made
    steps_taken: int  # sampler steps run (<= num_steps; adaptive samplers stop early)
    num_model_rows: int = 0  # rows pushed through the network in total (guidance runs 2B per call)
    # [B] long: the calls each row would have cost decoded alone (batch invariant); None = every
    # row took part in every call (decoders without early exit, e.g. autoregressive)
    calls_per_row: Tensor | None = None

    def __post_init__(self) -> None:
        if self.calls_per_row is None:
            self.calls_per_row = torch.full((self.tokens.shape[0],), self.num_model_calls,
                                            dtype=torch.long, device=self.tokens.device)


class _RowCalls:
    """Counts, per row, the network calls that row needs: calls made while it still has a masked
    position and, with ``cache_unchanged``, whose input for that row changed since its last call
    (decoded alone the row's cache would have skipped the call).  Adaptive decoders (Dimple's
    confident decoding, Yu et al. 2025) stop paying for a row once it is done, which a batch-level
    count hides."""

    def __init__(self, batch_size: int, cached: bool, device: torch.device) -> None:
        self.counts = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.cached = cached
        self._last: Tensor | None = None  # [B, passes, S]: each row's input at its last call

    def add(self, inputs: Tensor, is_masked: Tensor) -> None:
        """Record one real call on ``inputs`` ([B or 2B, S], guided rows stacked after the
        conditional ones), made while ``is_masked`` ([B, S]) was still to be generated."""
        rows = rearrange(inputs, "(passes b) s -> b passes s", b=self.counts.shape[0])
        needed = is_masked.any(dim=1)
        if self.cached and self._last is not None and self._last.shape == rows.shape:
            needed &= (rows != self._last).flatten(1).any(dim=1)
        self.counts += needed
        if self.cached:
            self._last = rows.clone()


class _LogitsCache:
    """Remembers the last network input and output so an identical input is not recomputed."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._inputs: Tensor | None = None
        self._logits: Tensor | None = None

    def lookup(self, inputs: Tensor) -> Tensor | None:
        if self.enabled and self._inputs is not None and self._inputs.shape == inputs.shape:
            if torch.equal(self._inputs, inputs):
                return self._logits
        return None

    def store(self, inputs: Tensor, logits: Tensor) -> None:
        if self.enabled:
            self._inputs, self._logits = inputs.clone(), logits


def _check_inputs(tokens: Tensor, is_masked: Tensor, mask_id: int, cond_mask: Tensor | None) -> None:
    if tokens.dim() != 2 or tokens.dtype != torch.long:
        raise ValueError(f"tokens must be a LongTensor [B, S], got {tokens.dtype} {tuple(tokens.shape)}")
    if is_masked.shape != tokens.shape or is_masked.dtype != torch.bool:
        raise ValueError("is_masked must be a bool tensor shaped like tokens")
    if bool(((tokens == mask_id) & ~is_masked).any()):
        raise ValueError(f"tokens hold mask_id={mask_id} at positions is_masked marks as given")
    if cond_mask is not None and bool((cond_mask & is_masked).any()):
        raise ValueError("cond_mask overlaps is_masked: the condition to drop must be given tokens")


def decode(
    model_fn: ModelFn,
    tokens: Tensor,
    is_masked: Tensor,
    sampler: Sampler,
    *,
    num_steps: int,
    guidance: ClassifierFreeGuidance | None = None,
    cond_mask: Tensor | None = None,
    generator: GeneratorArg = None,
    cache_unchanged: bool = False,
    progress: bool = False,
    callback: StepCallback | None = None,
    positions: Tensor | None = None,
    uncond_tokens: Tensor | None = None,
) -> DecodeResult:
    """Generate every ``is_masked`` position of ``tokens`` with ``sampler``; given positions are kept.

    Args:
        model_fn: ``tokens [N, S] -> logits [N, S, V]``, rows independent (illegal tokens at -inf).
        tokens: ``[B, S]`` long; values at masked positions are ignored (set to ``sampler.mask_id``).
        is_masked: ``[B, S]`` bool, the positions to generate.
        sampler: a :class:`Sampler` with ``mask_id`` set.
        num_steps: step budget (``set_timesteps`` is called with it).
        guidance: optional classifier-free guidance; needs ``cond_mask``.
        cond_mask: ``[B, S]`` bool, given positions to drop (replace by ``mask_id``) in the unconditional pass.
        generator: one ``torch.Generator`` or a list with one per row (batch-invariant results).
        cache_unchanged: reuse the last logits when the network input did not change.
        progress: show a tqdm bar.
        callback: ``callback(step_index, sampler_output)`` after every step.
        positions: optional ``[P]`` sequence positions that hold every masked position; then
            ``model_fn`` returns logits for those positions only (``[N, P, V]``) and the sampler works
            on that compact view, so no work is spent on the given rest of the sequence.  Choose them
            per task, not per batch (e.g. the image segment), or results would depend on the batch.
        uncond_tokens: optional ``[B, S]`` tokens the unconditional pass holds at ``cond_mask``
            instead of ``mask_id``: a negative prompt, which guidance steers away from.
    """
    num_steps = check_num_steps(num_steps)
    mask_id = sampler.require_mask_id()
    _check_inputs(tokens, is_masked, mask_id, cond_mask)
    if guidance is not None and cond_mask is None:
        raise ValueError("guidance needs cond_mask= (the condition positions to drop for the unconditional pass)")
    if uncond_tokens is not None:
        if guidance is None:
            raise ValueError("uncond_tokens (a negative prompt) only act through guidance; pass guidance=")
        if uncond_tokens.shape != tokens.shape or uncond_tokens.dtype != tokens.dtype:
            raise ValueError(f"uncond_tokens must be shaped and typed like tokens {tuple(tokens.shape)} "
                             f"{tokens.dtype}, got {tuple(uncond_tokens.shape)} {uncond_tokens.dtype}")
    check_generator(generator, tokens.shape[0])
    sampler.set_timesteps(num_steps)

    if positions is not None:
        positions = positions.to(tokens.device)
        outside = torch.ones(tokens.shape[1], dtype=torch.bool, device=tokens.device)
        outside[positions] = False
        if bool(is_masked[:, outside].any()):
            raise ValueError("positions= must include every masked position")
    view = (lambda x: x) if positions is None else (lambda x: x[:, positions])  # noqa: E731
    tokens = tokens.masked_fill(is_masked, mask_id)
    editable = is_masked.clone()
    given = tokens.clone()
    cache = _LogitsCache(cache_unchanged)
    per_row = _RowCalls(tokens.shape[0], cache_unchanged, tokens.device)
    calls = rows = steps = 0
    with torch.no_grad():
        for step_index in tqdm(range(num_steps), disable=not progress, desc="decode", leave=False):
            if sampler.done(is_masked):
                break
            batch = (
                GuidedBatch(tokens, "cond", 1.0)
                if guidance is None
                else guidance.prepare(tokens, cond_mask, mask_id, step_progress(step_index, num_steps),
                                      uncond_tokens)
            )
            raw = cache.lookup(batch.inputs)
            if raw is None:
                raw = model_fn(batch.inputs)
                calls += 1
                rows += batch.inputs.shape[0]
                per_row.add(batch.inputs, is_masked)
                cache.store(batch.inputs, raw)
            logits = raw if guidance is None else guidance.combine(raw, batch)
            out = sampler.step(logits, view(tokens), view(is_masked), step_index, generator=generator,
                               editable=view(editable))
            _check_step(out, view(given), view(editable), mask_id, type(sampler).__name__)
            if positions is None:
                tokens, is_masked = out.tokens, out.is_masked
            else:
                tokens, is_masked = tokens.clone(), is_masked.clone()
                tokens[:, positions], is_masked[:, positions] = out.tokens, out.is_masked
            steps += 1
            if callback is not None:
                callback(step_index, out)
    if bool(is_masked.any()):
        raise RuntimeError(
            f"{type(sampler).__name__} left {int(is_masked.sum())} positions masked after {num_steps} steps"
        )
    return DecodeResult(tokens, calls, steps, rows, per_row.counts)


def _check_step(out: SamplerOutput, given: Tensor, editable: Tensor, mask_id: int, name: str) -> None:
    """Catch a sampler that breaks the contract before its output propagates."""
    if not torch.equal(out.tokens[~editable], given[~editable]) or bool((out.is_masked & ~editable).any()):
        raise RuntimeError(f"{name} changed a given (non-editable) position")
    if not torch.equal(out.tokens == mask_id, out.is_masked):
        raise RuntimeError(f"{name} returned tokens whose mask_id positions disagree with is_masked")
