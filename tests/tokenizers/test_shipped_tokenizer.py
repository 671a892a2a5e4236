"""The image tokenizers shipped in assets/ (16x16 codes: what the shapes recipes and the GPU legs
load; 8x8 codes: the shorter-sequence alternative): they load without training, round-trip held-out
scenes, and the pixel checker reads them back."""

from pathlib import Path

import pytest
import torch

from unigen.data import checker
from unigen.data.shapes import ShapesWorld, render_tensor
from unigen.tokenizers import FSQTokenizer, ImageTokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, grid, min_psnr, min_read_back", [
    ("fsq_shapes", 16, 35.0, 23),      # 37.9 dB, 99.8 % of 1,000 held-out scenes (its README)
    ("fsq_shapes_8x8", 8, 32.5, 21),   # 35.9 dB, 90.8 % (23 of these 24)
])
def test_the_shipped_tokenizers_reconstruct_held_out_scenes(name, grid, min_psnr, min_read_back):
    tok = ImageTokenizer.from_pretrained(ROOT / "assets" / "tokenizers" / name)
    assert isinstance(tok, FSQTokenizer) and tok.codebook_size == 8 * 8 * 8 * 6 * 5
    world = ShapesWorld("heldout", seed=0)
    scenes = [world.scene(i) for i in range(24)]
    images = torch.stack([render_tensor(s, 64) for s in scenes])
    codes = tok.encode(images)
    assert codes.shape == (24, grid, grid) and 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size
    recon = tok.decode(codes)
    psnr = 10 * torch.log10(1.0 / ((recon - images) ** 2).mean())
    assert psnr > min_psnr, psnr
    read_back = sum(checker.check(img, scene).correct for img, scene in zip(recon, scenes))
    assert read_back >= min_read_back, read_back


@pytest.mark.parametrize("recipe", ["t2i_shapes", "understand_shapes", "unified_shapes", "ar_shapes",
                                    "unified_shards"])
def test_the_shapes_recipes_load_the_shipped_tokenizer(recipe):
    import yaml

    config = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())
    assert config["model"]["init_args"]["image_tokenizer"] == "assets/tokenizers/fsq_shapes"
