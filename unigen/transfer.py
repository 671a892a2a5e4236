"""Host-to-device copies that do not make the host wait for the GPU."""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(x: Tensor, device: torch.device | str | None) -> Tensor:
    """``x`` on ``device`` (unchanged when ``device`` is None).

    A CPU tensor bound for a CUDA device is staged in pinned memory and copied with
    ``non_blocking=True``.  A copy from pageable memory first waits for all the work queued on the
    stream, so each of a training step's small copies (text ids, masks, noise) would hold the host
    until the GPU had finished the previous step, instead of letting it prepare the next one.
    The pinned staging buffer is recycled only after the copy ran (PyTorch's host allocator
    records the copy on the stream).
    """
    if device is None:
        return x
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
