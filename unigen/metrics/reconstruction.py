"""Tokenizer reconstruction quality: PSNR and SSIM (Wang et al., 2004) via torchmetrics, on images
in [0, 1]; PSNR is the mean of per-image values (as tokenizer papers such as LlamaGen report).
rFID lives in :mod:`unigen.metrics.fid`."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from unigen.metrics.base import RECONSTRUCTION, register_metric
from unigen.metrics.features import check_image_pair


@register_metric("psnr", RECONSTRUCTION)
class PSNR(PeakSignalNoiseRatio):
    """Mean per-image PSNR in dB for data range 1."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_range=1.0, dim=(1, 2, 3), **kwargs)

    def update(self, reconstruction: Tensor, original: Tensor) -> None:
        check_image_pair(reconstruction, original)
        super().update(reconstruction.float(), original.float())


SSIM_WINDOW = 11  # torchmetrics' default Gaussian kernel


@register_metric("ssim", RECONSTRUCTION)
class SSIM(StructuralSimilarityIndexMeasure):
    """Mean SSIM (11x11 Gaussian window) for data range 1."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_range=1.0, **kwargs)

    def update(self, reconstruction: Tensor, original: Tensor) -> None:
        check_image_pair(reconstruction, original)
        height, width = original.shape[-2:]
        if min(height, width) <= SSIM_WINDOW // 2:  # the window's reflect padding needs more
            raise ValueError(f"SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window needs images of at least "
                             f"{SSIM_WINDOW // 2 + 1}x{SSIM_WINDOW // 2 + 1} pixels, got {height}x{width}")
        super().update(reconstruction.float(), original.float())


def evaluate_reconstruction(tokenizer: Any, batches: Iterable[Tensor | Mapping[str, Any]],
                            metrics: Mapping[str, Any]) -> dict[str, float]:
    """Encode and decode every batch with an image tokenizer (``encode`` -> codes, ``decode`` ->
    images in [0, 1]) and feed ``(reconstruction, original)`` to each reconstruction metric
    (``rfid``, ``psnr``, ``ssim``; built with :func:`unigen.metrics.build_metrics`). Batches are
    image tensors or dicts with ``image``; metrics must be on the tokenizer's device."""
    from unigen.metrics.report import compute_metrics

    wrong = [n for n, m in metrics.items() if getattr(m, "kind", None) != RECONSTRUCTION]
    if wrong:
        raise ValueError(f"metrics {wrong} are not reconstruction metrics")
    for batch in batches:
        images = batch["image"] if isinstance(batch, Mapping) else batch
        images = images.to(tokenizer.device)
        reconstruction = tokenizer.decode(tokenizer.encode(images))
        for metric in metrics.values():
            metric.update(reconstruction, images)
    return compute_metrics(metrics)
