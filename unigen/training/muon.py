"""Muon for the transformer's hidden weight matrices, AdamW for every other parameter: one optimizer.

Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") keeps SGD
momentum for each 2-D weight and steps along the nearest semi-orthogonal matrix to it, found with
five Newton-Schulz iterations: every direction of the update moves by about the same amount, where
Adam's update is dominated by a few.  Embeddings, output heads, norms and biases are not hidden
matrices and keep AdamW (as in the reference code and in Moonlight).

The update is scaled as in Moonlight (Liu et al. 2025, "Muon is Scalable for LLM Training"): by
``0.2 * sqrt(max(rows, cols))``, which gives it the RMS of a typical AdamW update, so a recipe keeps
its AdamW learning rate, schedule and decoupled weight decay when it switches optimizer.

PyTorch ships the same step as ``torch.optim.Muon`` (``adjust_lr_fn="match_rms_adamw"``), and a
test holds the two to float32 rounding.  This class exists beside it because a LightningModule
steps one optimizer (one ``state_dict``, one schedule, exact resume) where that one needs a second
for the non-matrix parameters; and because it orthogonalizes same-shaped matrices in one batched
iteration, in float32 on the CPU, where ``torch.optim.Muon`` loops over them in bf16.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

import torch
from torch import Tensor

# the quintic iteration's coefficients from the Muon reference code: they push every singular
# value into about [0.7, 1.2] in five steps, which trains as well as exact orthogonalization
NEWTON_SCHULZ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
RMS_MATCH = 0.2  # Moonlight's target update RMS (that of AdamW)


def orthogonalize(g: Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> Tensor:
    """Approximately the nearest semi-orthogonal matrix ``U V^T`` to each ``g[..., :, :]`` (whose
    SVD is ``U S V^T``), by Newton-Schulz iteration; batched over leading axes.  Computed in
    ``dtype``: by default bf16 on CUDA (the reference's choice: the iteration is robust to it),
    float32 elsewhere (CPUs gain nothing from bf16 matmuls)."""
    if g.ndim < 2:
        raise ValueError(f"orthogonalize needs matrices, got a tensor of shape {tuple(g.shape)}")
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    x = g.to(dtype or (torch.bfloat16 if g.is_cuda else torch.float32))
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """Muon on the param groups with ``use_muon: True`` (2-D tensors only), AdamW on the rest.

    The AdamW groups are stepped by :class:`torch.optim.AdamW` itself (fused on CUDA), sharing this
    optimizer's group dicts and state, so the schedule's ``lr`` reaches both and one ``state_dict``
    holds everything (exact resume).  Muon groups take ``lr``, ``weight_decay``, ``momentum``
    (Nesterov) and ``ns_steps``; same-shaped matrices are orthogonalized in one batched iteration.
    """

    def __init__(self, params: Iterable[dict[str, Any]], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.95, ns_steps: int = 5,
                 fused: bool | None = None) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"ns_steps must be at least 1, got {ns_steps}")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                        ns_steps=ns_steps, use_muon=False, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["use_muon"]:
                flat = [tuple(p.shape) for p in group["params"] if p.ndim != 2]
                if flat:
                    raise ValueError(f"Muon steps 2-D weight matrices only; its group holds "
                                     f"tensors of shapes {flat}: give those to AdamW")
        adam_groups = [g for g in self.param_groups if not g["use_muon"]]
        # AdamW fills its own defaults into these same dicts; with no AdamW group it is not built
        self._adamw = (torch.optim.AdamW(adam_groups, lr=lr, betas=betas, eps=eps, fused=fused)
                       if adam_groups else None)
        self._share_with_adamw()

    def _share_with_adamw(self) -> None:
        if self._adamw is not None:
            self._adamw.param_groups = [g for g in self.param_groups if not g["use_muon"]]
            self._adamw.state = self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # replaces the group dicts and the state
        self._share_with_adamw()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # GradScaler's on-device skip, which NonFiniteLossGuard hands to fused optimizers: a step
        # whose flag is 1 leaves weights and state as they were, with no host read
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group(group, found_inf)
        if self._adamw is not None:
            if found_inf is not None:
                self._adamw.found_inf = found_inf
            elif hasattr(self._adamw, "found_inf"):
                del self._adamw.found_inf
            self._adamw.step()
        return loss

    def _muon_group(self, group: dict[str, Any], found_inf: Tensor | None = None) -> None:
        lr, decay, beta = group["lr"], group["weight_decay"], group["momentum"]
        by_shape: dict[torch.Size, list[Tensor]] = defaultdict(list)
        for p in group["params"]:
            if p.grad is not None:
                by_shape[p.shape].append(p)
        for shape, params in by_shape.items():
            grads = [p.grad for p in params]
            skip = None if found_inf is None else found_inf.to(params[0].device, torch.bool)
            buffers = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers.append(state["momentum_buffer"])
            if skip is not None:  # a momentum lerped towards itself stays as it was
                grads = [torch.where(skip, b, g) for b, g in zip(buffers, grads)]
            torch._foreach_lerp_(buffers, grads, 1.0 - beta)
            # Nesterov: the gradient pulled towards the new momentum
            directions = torch._foreach_lerp(grads, buffers, beta)
            update = orthogonalize(torch.stack(directions), group["ns_steps"])
            if skip is not None:
                update = torch.where(skip, 0.0, update)
            if decay:
                torch._foreach_mul_(params, 1.0 - lr * decay if skip is None
                                    else torch.where(skip, 1.0, 1.0 - lr * decay).to(params[0].dtype))
            scale = RMS_MATCH * math.sqrt(max(shape))
            torch._foreach_add_(params, list(update.unbind(0)), alpha=-lr * scale)
