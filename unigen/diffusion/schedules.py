"""Masking (noise) schedules for masked discrete diffusion.

A schedule maps diffusion time ``t`` in [0, 1] to the fraction of target tokens that are masked,
``mask_rate(t)``: 0 at t=0 (clean) and 1 at t=1 (all masked).  Training samples ``t`` and masks that
fraction (MaskGIT, Chang et al. 2022; MDLM, Sahoo et al. 2024); samplers walk ``t`` from 1 to 0 and
unmask accordingly.  ``loss_weight`` gives the MDLM ELBO weight ``-alpha'(t) / (1 - alpha(t))`` where
``alpha(t) = 1 - mask_rate(t)``; for the linear schedule that is ``1 / t``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from unigen.registry import Registry

SCHEDULES: Registry[type["NoiseSchedule"]] = Registry("noise schedule")


class NoiseSchedule(ABC):
    """``mask_rate(t)`` with optional timestep shift (LaViDa / SD3-style ``shift``).

    ``shift > 1`` spends more time at high mask rates: ``t' = s t / (1 + (s - 1) t)``.
    """

    def __init__(self, shift: float = 1.0) -> None:
        if shift <= 0:
            raise ValueError(f"schedule shift must be > 0, got {shift}")
        self.shift = shift

    def shift_time(self, t: Tensor) -> Tensor:
        if self.shift == 1.0:
            return t
        return self.shift * t / (1 + (self.shift - 1) * t)

    @abstractmethod
    def _rate(self, t: Tensor) -> Tensor:
        """Mask rate for (already shifted) time ``t``; must be increasing with 0 -> 0 and 1 -> 1."""

    def mask_rate(self, t: Tensor) -> Tensor:
        return self._rate(self.shift_time(t.clamp(0.0, 1.0))).clamp(0.0, 1.0)

    def _rate_and_slope(self, t: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """``mask_rate(t)`` and ``d/dt mask_rate(t)``, by autograd so any schedule works."""
        t = t.detach().clone().clamp(eps, 1.0).requires_grad_(True)
        with torch.enable_grad():
            rate = self._rate(self.shift_time(t))  # unclamped: clamp would zero the grad at t=1
            (slope,) = torch.autograd.grad(rate.sum(), t)
        return rate.detach(), slope.detach()

    def loss_weight(self, t: Tensor, eps: float = 1e-4) -> Tensor:
        """MDLM ELBO weight ``d/dt mask_rate(t) / mask_rate(t)``."""
        rate, slope = self._rate_and_slope(t, eps)
        return slope / rate.clamp_min(eps)

    def share_weight(self, t: Tensor, share: Tensor, eps: float = 1e-3) -> Tensor:
        """ELBO weight of a row masked at ``t`` that masks ``share`` of its targets:
        ``d/dt mask_rate(t) / share``.  With ``share = mask_rate(t)`` this is :meth:`loss_weight`.
        LaViDa's complementary copy masks ``u = 1 - mask_rate(t)``, and with ``share = u``
        ``E_t[weight * u * f(u)]`` is ``integral_0^1 f``, as the first copy's is, for any per-token
        loss ``f`` of the masked share: the pair is two unbiased estimates of one ELBO (``1 / u``
        alone is right for the linear schedule only).  The share a row actually masks is what its
        loss sums over, so it makes the estimate exact where masking rounds a count
        (``max(1, round(rate * n))`` of ``n`` targets is more than ``mask_rate(t)`` at small ``t``)."""
        # only the share needs a floor: the slope (unbounded near t = 0 for arccos) is integrable
        _, slope = self._rate_and_slope(t, 1e-6)
        return slope / share.to(slope).clamp_min(eps)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shift={self.shift})"


@SCHEDULES.register("linear")
class LinearSchedule(NoiseSchedule):
    """``mask_rate = t`` (MDLM's log-linear schedule in mask-rate form)."""

    def _rate(self, t: Tensor) -> Tensor:
        return t


@SCHEDULES.register("cosine")
class CosineSchedule(NoiseSchedule):
    """``mask_rate = sin(pi t / 2)``, i.e. MaskGIT's ``cos`` schedule on the unmasked fraction."""

    def _rate(self, t: Tensor) -> Tensor:
        return torch.sin(t * math.pi / 2)


@SCHEDULES.register("polynomial")
class PolynomialSchedule(NoiseSchedule):
    """``mask_rate = 1 - (1 - t) ** power``; power 1 is linear, larger masks more aggressively."""

    def __init__(self, power: float = 2.0, shift: float = 1.0) -> None:
        super().__init__(shift)
        if power <= 0:
            raise ValueError(f"polynomial power must be > 0, got {power}")
        self.power = power

    def _rate(self, t: Tensor) -> Tensor:
        return 1 - (1 - t) ** self.power


@SCHEDULES.register("arccos")
class ArccosSchedule(NoiseSchedule):
    """``mask_rate = (2 / pi) arccos(1 - t)``: the arccos schedule of the Halton scheduler
    (Besnier et al., ICLR 2025).  Against ``cosine`` it reveals far more in the first steps (the
    first of 16 sampler steps reveals 4 % of the tokens, cosine's 0.5 %) and less in the last."""

    def _rate(self, t: Tensor) -> Tensor:
        return torch.arccos(1 - t) * (2 / math.pi)


def build_schedule(name: str = "cosine", **kwargs: float) -> NoiseSchedule:
    return SCHEDULES.get(name)(**kwargs)
