"""Lightning training modules and helpers."""

from unigen.training.ema import EMACallback, ModelEMA
from unigen.training.tokenizer_module import TokenizerModule

__all__ = ["EMACallback", "ModelEMA", "TokenizerModule"]
