import json
from argparse import ArgumentError
import logging
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonargparse import ArgumentParser
from PIL import Image

from unigen.data.imagefolder import (BadSampleError, ImageFolderDataModule, ImageFolderDataset,
                                     MetadataRow, fit_image, parse_metadata_line, read_metadata,
                                     seeded_split)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(size: tuple[int, int], color, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, color)


def write_folder(root: Path, images: dict[str, Image.Image], rows: list[dict | str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    images = {f"img{i}.png": solid((16, 16), (20 * i, 0, 0)) for i in range(10)}
    rows = [{"file_name": f"img{i}.png", "text": f"caption {i}"} for i in range(10)]
    rows[3].update(question="what is it?", answer="red")
    return write_folder(tmp_path / "data", images, rows)


def test_samples_follow_the_unigen_schema(folder):
    ds = ImageFolderDataset(folder, image_size=8)
    assert len(ds) == 10 and ds.num_skipped == 0
    sample = ds[3]
    assert set(sample) == {"image", "caption", "question", "answer", "scene", "index"}
    assert sample["image"].shape == (3, 8, 8) and sample["image"].dtype == torch.float32
    assert torch.allclose(sample["image"][0], torch.full((8, 8), 60 / 255))
    assert sample["image"][1:].abs().max() == 0
    assert (sample["caption"], sample["question"], sample["answer"]) == ("caption 3", "what is it?",
                                                                         "red")
    assert (sample["scene"], sample["index"]) == ("", 3)
    assert ds[0]["question"] == ds[0]["answer"] == ""
    assert "what is it?" in ds.texts() and len(ds.texts()) == 12


def test_center_crop_keeps_the_middle(tmp_path):
    img = solid((48, 32), GREEN)
    img.paste(solid((8, 32), RED), (0, 0))
    img.paste(solid((8, 32), RED), (40, 0))
    root = write_folder(tmp_path / "d", {"a.png": img}, [{"file_name": "a.png", "text": "x"}])
    out = ImageFolderDataset(root, image_size=32, resize="center_crop")[0]["image"]
    assert torch.equal(out, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 32, 32))
    assert ImageFolderDataset(root, image_size=16, resize="resize")[0]["image"].shape == (3, 16, 16)


def test_pad_policy_letterboxes_with_pad_value():
    out = fit_image(solid((32, 16), (255, 255, 255)), 16, "pad", pad_value=0.0)
    arr = np.asarray(out)
    assert out.size == (16, 16)
    assert (arr[:4] == 0).all() and (arr[12:] == 0).all() and (arr[4:12] == 255).all()


def test_resize_none_requires_exact_size(tmp_path):
    root = write_folder(tmp_path / "d", {"a.png": solid((16, 16), RED), "b.png": solid((16, 12), RED)},
                        [{"file_name": "a.png", "text": "x"}, {"file_name": "b.png", "text": "y"}])
    with pytest.raises(BadSampleError, match=r"b\.png is 16x12, not 16x16 .*line 2"):
        ImageFolderDataset(root, image_size=16, resize="none")
    ds = ImageFolderDataset(root, image_size=16, resize="none", skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1


def test_min_size_refuses_small_images(tmp_path):
    root = write_folder(tmp_path / "d", {"a.png": solid((6, 40), RED)},
                        [{"file_name": "a.png", "text": "x"}])
    with pytest.raises(BadSampleError, match=r"a\.png is 6x40, smaller than min_size=8"):
        ImageFolderDataset(root, image_size=8, min_size=8)


def test_mode_conversion_policy(tmp_path):
    rgba = solid((8, 8), (0, 0, 0, 0), "RGBA")  # fully transparent black
    rgba.paste(solid((4, 8), (0, 0, 255, 255), "RGBA"), (0, 0))
    images = {"gray.png": solid((8, 8), 128, "L"), "rgba.png": rgba}
    rows = [{"file_name": n, "text": n} for n in images]
    root = write_folder(tmp_path / "d", images, rows)
    ds = ImageFolderDataset(root, image_size=8)
    assert torch.allclose(ds[0]["image"], torch.full((3, 8, 8), 128 / 255))
    rgb = ds[1]["image"]
    assert torch.equal(rgb[:, :, :4], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 8, 4))
    assert torch.equal(rgb[:, :, 4:], torch.ones(3, 8, 4))  # composited onto white
    with pytest.raises(BadSampleError, match=r"gray\.png has mode 'L', not RGB"):
        ImageFolderDataset(root, image_size=8, convert_mode=False)


def test_high_bit_depth_is_refused(tmp_path):
    img = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    root = write_folder(tmp_path / "d", {"a.png": img}, [{"file_name": "a.png", "text": "x"}])
    with pytest.raises(BadSampleError, match=r"a\.png has mode 'I.*does not convert"):
        ImageFolderDataset(root, image_size=8)


@pytest.mark.parametrize("row, message", [
    ('{"file_name": "img0.png", "text": "ok"', r"metadata\.jsonl line 2 is not valid JSON"),
    ('["img0.png"]', "line 2 must be a JSON object"),
    ('{"file_name": "img1.png", "text": "  "}', r"line 2 \(img1\.png\) has an empty or missing"),
    ('{"file_name": "img1.png"}', "empty or missing 'text'"),
    ('{"text": "x"}', "line 2 has no 'file_name'"),
    ('{"file_name": "img1.png", "text": 3}', "'text' must be a string, got int"),
    ('{"file_name": "img1.png", "text": "x", "question": "q?"}', "question without an answer"),
    ('{"file_name": "./img0.png", "text": "x"}', "line 2 repeats file_name './img0.png' of line 1"),
    ('{"file_name": "../escape.png", "text": "x"}', "points outside"),
    ('{"file_name": "gone.png", "text": "x"}', r"image file not found: .*gone\.png"),
    ('{"file_name": "junk.png", "text": "x"}', r"cannot read image .*junk\.png"),
])
def test_bad_rows_raise_one_clear_error_or_are_skipped(tmp_path, caplog, row, message):
    images = {"img0.png": solid((8, 8), RED), "img1.png": solid((8, 8), BLUE)}
    root = write_folder(tmp_path / "d", images, [{"file_name": "img0.png", "text": "ok"}, row])
    (root / "junk.png").write_bytes(b"not a png at all")
    (tmp_path / "escape.png").write_bytes((root / "img0.png").read_bytes())
    with pytest.raises(BadSampleError, match=message) as err:
        ImageFolderDataset(root, image_size=8)
    assert "\n" not in str(err.value)
    with caplog.at_level(logging.WARNING, logger="unigen.data.imagefolder"):
        ds = ImageFolderDataset(root, image_size=8, skip_bad=True)
    assert len(ds) == 1 and ds.num_skipped == 1 and ds[0]["caption"] == "ok"
    assert "skipped 1 bad samples" in caplog.text
    assert ds.skipped[0][0].endswith("line 2")


def test_truncated_image_found_by_full_verify_or_at_load(tmp_path):
    images = {"good.png": solid((16, 16), RED), "cut.png": Image.effect_noise((64, 64), 60)}
    rows = [{"file_name": "good.png", "text": "a"}, {"file_name": "cut.png", "text": "b"}]
    root = write_folder(tmp_path / "d", images, rows)
    data = (root / "cut.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadSampleError, match=r"cannot decode image .*cut\.png"):
        ImageFolderDataset(root, image_size=8, verify="full")
    assert len(ImageFolderDataset(root, image_size=8, verify="full", skip_bad=True)) == 1
    lazy = ImageFolderDataset(root, image_size=8, verify="header", skip_bad=True)
    assert len(lazy) == 2  # the header alone looks fine
    with pytest.raises(BadSampleError, match=r"cannot decode image .*cut\.png"):
        lazy[1]


def test_folder_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"metadata file not found: .*metadata\.jsonl"):
        ImageFolderDataset(tmp_path / "empty")
    root = write_folder(tmp_path / "d", {}, ['{"file_name": "x.png", "text": "x"}'])
    with pytest.raises(ValueError, match=r"no usable samples .*\(1 skipped\)"):
        ImageFolderDataset(root, skip_bad=True)
    with pytest.raises(ValueError, match="unknown resize policy 'crop'"):
        ImageFolderDataset(root, resize="crop")


def test_subfolders_and_blank_lines(tmp_path):
    root = write_folder(tmp_path / "d", {"train/a.png": solid((8, 8), RED)},
                        ["", '{"file_name": "train/a.png", "text": "x", "extra": 1}', "  "])
    rows, skipped = read_metadata(root / "metadata.jsonl")
    assert rows == [MetadataRow(line=2, file_name="train/a.png", text="x")] and skipped == []
    assert ImageFolderDataset(root, image_size=4)[0]["image"].shape == (3, 4, 4)


_strings = st.text(min_size=1, max_size=20).filter(str.strip)


@settings(max_examples=200, deadline=None)
@given(file_name=_strings, text=_strings, qa=st.one_of(st.none(), st.tuples(_strings, _strings)),
       line=st.integers(1, 10_000))
def test_metadata_line_round_trip(file_name, text, qa, line):
    obj = {"file_name": file_name, "text": text}
    if qa is not None:
        obj["question"], obj["answer"] = qa
    row = parse_metadata_line(json.dumps(obj), line)
    assert (row.line, row.file_name, row.text) == (line, file_name, text)
    assert (row.question, row.answer) == (qa or ("", ""))


@settings(max_examples=200, deadline=None)
@given(raw=st.one_of(st.text(max_size=40), st.dictionaries(
    st.sampled_from(["file_name", "text", "question", "answer", "x"]),
    st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)),
).map(json.dumps)), line=st.integers(1, 99))
def test_metadata_parser_fails_only_with_a_located_error(raw, line):
    try:
        row = parse_metadata_line(raw, line)
    except BadSampleError as err:
        assert f"line {line}" in str(err)
    else:
        assert row.file_name.strip() and row.text.strip()


def test_seeded_split_is_a_deterministic_partition():
    train, val = seeded_split(50, 7, seed=3)
    assert len(val) == 7 and sorted(train + val) == list(range(50))
    assert (train, val) == seeded_split(50, 7, seed=3)
    assert val != seeded_split(50, 7, seed=4)[1]
    with pytest.raises(ValueError, match="cannot hold out 5 of 5"):
        seeded_split(5, 5, seed=0)


def test_datamodule_split_and_seeded_shuffle(folder):
    def order(seed: int) -> tuple[list[int], list[int]]:
        dm = ImageFolderDataModule(str(folder), image_size=8, batch_size=4, val_fraction=0.2,
                                   seed=seed)
        dm.setup("fit")
        train = [i for b in dm.train_dataloader() for i in b["index"].tolist()]
        val = [i for b in dm.val_dataloader() for i in b["index"].tolist()]
        return train, val

    train, val = order(0)
    assert len(val) == 2 and sorted(train + val) == list(range(10))
    assert order(0) == (train, val)
    assert order(1) != (train, val)
    dm = ImageFolderDataModule(str(folder), image_size=8, batch_size=4, val_fraction=0.0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8) and len(batch["caption"]) == 4
    assert dm.val_dataloader() == []


def test_a_folder_has_no_test_split_and_says_so(folder):
    dm = ImageFolderDataModule(str(folder), image_size=8, batch_size=4)
    dm.setup("test")
    for loader in (dm.test_dataloader, dm.predict_dataloader):
        with pytest.raises(ValueError, match="ImageFolderDataModule has no test set"):
            loader()


def test_datamodule_builds_from_a_recipe(folder):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    cfg = parser.parse_string(f"""
data:
  class_path: unigen.data.imagefolder.ImageFolderDataModule
  init_args: {{root: {folder}, image_size: 8, batch_size: 2, resize: pad, val_fraction: 0.1}}
""")
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, ImageFolderDataModule) and dm.hparams.resize == "pad"
    with pytest.raises(ArgumentError, match="Got value: squash"):
        parser.parse_string(f"data: {{class_path: unigen.data.imagefolder.ImageFolderDataModule, "
                            f"init_args: {{root: {folder}, resize: squash}}}}")


def test_the_command_lines_loader_refuses_high_bit_depth_even_when_converting(tmp_path):
    """``--convert`` once clipped a 16-bit PNG to 0/255 and went on; the data sets always refused."""
    from unigen.data.imagefolder import load_image

    path = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(path)
    for convert in (True, False):
        with pytest.raises(BadSampleError, match=r"g16\.png has mode 'I.*does not convert"):
            load_image(path, convert)
