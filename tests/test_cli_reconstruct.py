"""``unigen reconstruct``: images through an image tokenizer and back, with PSNR / SSIM per image."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from cli_testkit import fails_with

from unigen.cli import main

SIZE = 32


@pytest.fixture(scope="module")
def dirs(tokenizer_dirs, tmp_path_factory):
    """The tiny FSQ tokenizer (4x downsampling), a pipeline exported with it, two 32x32 scenes and
    images of other sizes."""
    from unigen.data.shapes import ShapesWorld, render
    from unigen.training.unified_module import UnifiedModule

    root = tmp_path_factory.mktemp("reconstruct")
    torch.manual_seed(0)
    UnifiedModule(**tokenizer_dirs, image_size=SIZE, dim=32, depth=1, heads=4).export(root / "pipe")
    world = ShapesWorld("val")
    for i in range(2):
        render(world.scene(i), SIZE).save(root / f"x{i}.png")
    render(world.scene(2), 36).save(root / "big.png")  # another size, still a multiple of 4
    render(world.scene(3), 30).save(root / "odd.png")  # not a multiple of 4
    return root


def _tokenizer(tokenizer_dirs):
    from unigen.tokenizers.base import ImageTokenizer

    return ImageTokenizer.from_pretrained(tokenizer_dirs["image_tokenizer"])


def _argv(tokenizer, out, *images, extra=()) -> list[str]:
    argv = ["reconstruct", "--tokenizer", str(tokenizer), "--out", str(out), "--device", "cpu"]
    for image in images:
        argv += ["--image", str(image)]
    return [*argv, *extra]


def test_help_lists_the_verb(capsys):
    assert main(["--help"]) == 0
    assert "  reconstruct " in capsys.readouterr().out


def test_the_grid_settings_and_codes_are_the_tokenizers_round_trip(dirs, tokenizer_dirs, tmp_path,
                                                                   capsys):
    from torchmetrics.functional.image import structural_similarity_index_measure

    from unigen import io
    from unigen.commands import _load_images
    from unigen.visual import captioned_grid

    images = [dirs / "x0.png", dirs / "x1.png"]
    out, codes_file = tmp_path / "recon.png", tmp_path / "codes.safetensors"
    assert main(_argv(tokenizer_dirs["image_tokenizer"], out, *images,
                      extra=["--codes", str(codes_file)])) == 0
    printed = capsys.readouterr().out.strip()

    tok = _tokenizer(tokenizer_dirs)
    x = _load_images([str(p) for p in images], SIZE, "none", False)
    codes = tok.encode(x)
    recon = tok.decode(codes)
    mse = ((recon - x) ** 2).mean(dim=(1, 2, 3))
    psnr = (10 * torch.log10(1.0 / mse)).tolist()

    settings = json.loads((tmp_path / "recon.settings.json").read_text())
    results = settings["results"]
    assert [r["image"] for r in results] == [str(p) for p in images]
    assert [r["psnr"] for r in results] == pytest.approx(psnr, abs=1e-4)
    assert [r["distinct_codes"] for r in results] == [int(c.unique().numel()) for c in codes]
    # SSIM of each image alone (an untrained tokenizer's can be negative)
    ssim = [float(structural_similarity_index_measure(recon[i:i + 1], x[i:i + 1], data_range=1.0))
            for i in range(2)]
    assert [r["ssim"] for r in results] == pytest.approx(ssim, abs=1e-5)
    assert settings["mean_psnr"] == pytest.approx(sum(psnr) / 2, abs=1e-4)
    assert settings["mean_distinct_codes"] == sum(int(c.unique().numel()) for c in codes) / 2
    assert settings["tokenizer_type"] == "fsq" and settings["codebook_size"] == 125
    assert settings["image_size"] == SIZE and settings["code_grid"] == [8, 8]
    assert settings["resize"] == "none"

    # the codes file decodes to the same reconstructions
    saved = io.load_safetensors(codes_file)["codes"]
    assert saved.dtype == torch.int64 and saved.shape == (2, 8, 8) and torch.equal(saved, codes)
    assert torch.equal(tok.decode(saved), recon)

    # original | reconstruction per row, scaled 2x and captioned: 2 x (64 + 8) + 8 wide,
    # 2 x (64 + 36 + 8) + 8 high
    grid = Image.open(out).convert("RGB")
    assert grid.size == (152, 224)
    tiles = torch.stack([x[0], recon[0], x[1], recon[1]])
    labels = ["x0.png", f"recon {psnr[0]:.1f} dB", "x1.png", f"recon {psnr[1]:.1f} dB"]
    assert list(grid.getdata()) == list(captioned_grid(tiles, labels, ncol=2).getdata())

    mean_ssim = sum(r["ssim"] for r in results) / 2
    assert settings["mean_ssim"] == pytest.approx(sum(ssim) / 2, abs=1e-5)
    assert printed == (f"wrote {out} (2 images, mean {sum(psnr) / 2:.1f} dB PSNR, SSIM "
                       f"{mean_ssim:.2f}; settings in {tmp_path / 'recon.settings.json'}; codes in "
                       f"{codes_file})")


def test_a_pipeline_directory_uses_its_image_tokenizer(dirs, tokenizer_dirs, tmp_path):
    images = [dirs / "x0.png", dirs / "x1.png"]
    by_pipe, by_tok = tmp_path / "pipe.png", tmp_path / "tok.png"
    assert main(_argv(dirs / "pipe", by_pipe, *images)) == 0
    assert main(_argv(tokenizer_dirs["image_tokenizer"], by_tok, *images)) == 0
    pipe = json.loads(by_pipe.with_suffix(".settings.json").read_text())
    tok = json.loads(by_tok.with_suffix(".settings.json").read_text())
    assert pipe["tokenizer_dir"] == str(dirs / "pipe" / "image_tokenizer")
    assert pipe["results"] == tok["results"] and pipe["mean_ssim"] == tok["mean_ssim"]
    assert by_pipe.read_bytes() == by_tok.read_bytes()


def test_image_size_and_resize_bring_mixed_sizes_to_one(dirs, tokenizer_dirs, tmp_path):
    out = tmp_path / "g.webp"
    assert main(_argv(tokenizer_dirs["image_tokenizer"], out, dirs / "x0.png", dirs / "big.png",
                      extra=["--image-size", "16", "--resize", "resize"])) == 0
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["image_size"] == 16 and settings["code_grid"] == [4, 4]
    assert Image.open(out).format == "WEBP"


def test_an_exact_reconstruction_is_written_as_strict_json(dirs, tokenizer_dirs, tmp_path,
                                                           monkeypatch):
    """Infinite PSNR (nothing lost) is null in the settings, which strict JSON readers accept."""
    from unigen import reconstruct_command

    def exact(reconstructions, originals):
        return [float("inf")] * len(originals), [1.0] * len(originals)

    monkeypatch.setattr(reconstruct_command, "per_image_metrics", exact)
    out = tmp_path / "g.png"
    assert main(_argv(tokenizer_dirs["image_tokenizer"], out, dirs / "x0.png")) == 0
    text = out.with_suffix(".settings.json").read_text()
    settings = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-JSON {name}"))
    assert settings["results"][0]["psnr"] is None and settings["mean_psnr"] is None
    assert settings["mean_ssim"] == 1.0


# (extra flags, the error's words, whether it must come before the tokenizer loads)
BAD = [
    (["--image", "{d}/missing.png"], "cannot decode image {d}/missing.png", True),
    (["--image", "{d}/odd.png"],
     "the images' size 30 is not a multiple of the tokenizer's downsample factor 4", False),
    (["--image", "{d}/x0.png", "--image-size", "30", "--resize", "resize"],
     "--image-size 30 is not a multiple of the tokenizer's downsample factor 4", False),
    (["--image", "{d}/x0.png", "--image", "{d}/big.png"],
     "--image {d}/big.png is 36x36, but the first image ({d}/x0.png) is 32x32; without "
     "--image-size", True),
    (["--image", "{d}/x0.png", "--image-size", "0"], "--image-size must be at least 1, got 0", True),
    (["--image", "{d}/x0.png", "--resize", "stretch"], "--resize 'stretch': use one of", True),
    (["--image", "{d}/x0.png", "--device", "tpu"], "--device 'tpu'", True),
    (["--image", "{d}/x0.png", "--codes", "{t}/codes.pt"],
     "--codes {t}/codes.pt: the codes are written as safetensors", True),
    (["--image", "{d}/x0.png", "--out", "{t}/g.txt"],
     "--out {t}/g.txt: the extension picks the image format", True),
    (["--image", "{d}/x0.png", "--out", "{t}/sub"], "--out {t}/sub is a directory", True),
    (["--image", "{d}/x0.png", "--out", "{d}/x0.png"],
     "--out {d}/x0.png is an input of this command; give another file", True),
    (["--image", "{d}/x0.png", "--out", "{d}/x0.png/g.png"],
     "--out {d}/x0.png/g.png: {d}/x0.png is a file, not a directory", True),
    (["--image", "{d}/x0.png", "--out", "{t}/" + "x" * 300 + ".png"],
     "a name in it is longer than this file system's", True),
    (["--image", "{d}/x0.png", "--tokenizer", "{t}/nowhere"],
     "image tokenizer directory not found: {t}/nowhere", False),
]


@pytest.mark.parametrize("extra, message, before_loading", BAD)
def test_bad_input_is_one_line_and_writes_nothing(extra, message, before_loading, dirs,
                                                  tokenizer_dirs, tmp_path, capsys, monkeypatch):
    from unigen.tokenizers.base import ImageTokenizer

    (tmp_path / "sub").mkdir()
    if before_loading:
        def no_loading(cls, *args, **kwargs):
            raise AssertionError("the tokenizer was loaded before the check")

        monkeypatch.setattr(ImageTokenizer, "from_pretrained", classmethod(no_loading))

    def fill(text: str) -> str:
        return text.replace("{d}", str(dirs)).replace("{t}", str(tmp_path))

    # a later --out or --tokenizer in extra wins over _argv's (argparse keeps the last)
    argv = _argv(tokenizer_dirs["image_tokenizer"], tmp_path / "g.png",
                 extra=[fill(e) for e in extra])
    line = fails_with(argv, capsys)
    assert fill(message) in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub"]
