"""Image tokenizers (VQ, FSQ, LFQ, diffusers VQModel); importing this registers them all."""

from unigen.tokenizers.autoencoder import QuantizedAutoencoder
from unigen.tokenizers.base import IMAGE_TOKENIZERS, ImageTokenizer, TokenizerOutput
from unigen.tokenizers.codebook_metrics import CodebookUsage
from unigen.tokenizers.fsq import FSQTokenizer
from unigen.tokenizers.lfq import LFQTokenizer
from unigen.tokenizers.vq import VQTokenizer
from unigen.tokenizers.vqmodel import DiffusersVQTokenizer, export_to_diffusers

__all__ = [
    "IMAGE_TOKENIZERS", "CodebookUsage", "DiffusersVQTokenizer", "FSQTokenizer", "ImageTokenizer",
    "LFQTokenizer", "QuantizedAutoencoder", "TokenizerOutput", "VQTokenizer", "export_to_diffusers",
]
