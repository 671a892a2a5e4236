"""Reproducible, batch-invariant random draws for samplers.

Every random draw in :mod:`unigen.sampling` goes through :func:`rand_rows`.  A sampler receives either
ONE ``torch.Generator`` shared by the whole batch, or a LIST with one generator per row.  With a list,
row ``b`` is drawn from ``generator[b]`` alone and always in the same shape, so a sample's result does
not depend on which other samples share its batch (the batch-size dependence users of Show-o / MMaDA
report).  Draws happen on the generator's own device and are then moved, so a CPU generator gives the
same numbers whatever device the logits live on.  The global RNG is never used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

GeneratorArg = Union[torch.Generator, Sequence[torch.Generator], None]

# Keeps log(-log(u)) finite: u in [eps, 1 - eps].
_GUMBEL_EPS = 1e-20


def make_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded generator per row, for batch-invariant sampling."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def check_generator(generator: GeneratorArg, batch_size: int) -> None:
    """Raise a clear error for a generator list whose length is not the batch size."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise TypeError("generator must be a torch.Generator, a list of torch.Generator (one per row), or None")
    if len(generator) != batch_size:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch_size} rows; pass one per row")


def select_generators(generator: GeneratorArg, rows: Sequence[int]) -> GeneratorArg:
    """The generator argument for a sub-batch made of ``rows`` (a shared generator stays shared)."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return [generator[r] for r in rows]


def rand_rows(
    shape: Sequence[int],
    generator: GeneratorArg,
    *,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    purpose: str = "random draw",
) -> Tensor:
    """Uniform ``[0, 1)`` samples of ``shape`` (``shape[0]`` = batch rows) from ``generator``.

    With a generator list, row ``b`` is ``torch.rand(shape[1:], generator=generator[b])``.
    """
    shape = tuple(int(s) for s in shape)
    if generator is None:
        raise ValueError(
            f"{purpose} needs a generator: pass generator=torch.Generator().manual_seed(seed) "
            "(or one generator per row); unigen never samples from the global RNG"
        )
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    check_generator(generator, shape[0])
    if not generator:
        return torch.empty(shape, device=device, dtype=dtype)
    homes = {g.device for g in generator}
    if len(homes) == 1:  # stacked where drawn, then one copy: a decode step is one transfer, not B
        return torch.stack([torch.rand(shape[1:], generator=g, device=g.device, dtype=dtype)
                            for g in generator]).to(device)
    return torch.stack([torch.rand(shape[1:], generator=g, device=g.device, dtype=dtype).to(device)
                        for g in generator])


def gumbel_rows(
    shape: Sequence[int], generator: GeneratorArg, *, device: torch.device | str, purpose: str = "Gumbel noise"
) -> Tensor:
    """Standard Gumbel noise ``-log(-log(u))`` drawn with :func:`rand_rows`."""
    u = rand_rows(shape, generator, device=device, purpose=purpose).clamp(_GUMBEL_EPS, 1 - 1e-7)
    return -torch.log(-torch.log(u))
