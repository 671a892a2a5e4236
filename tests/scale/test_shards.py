"""Pretokenized shards: write/read round trip, resume after a crash, manifest checks, data module."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from unigen.data.shards import (
    JOB, JOURNAL, MANIFEST, ShardDataModule, ShardDataset, check_tokenizer, read_manifest,
    write_shards,
)
from unigen.tokenizers.fsq import FSQTokenizer

DEBUG = Path(__file__).resolve().parents[2] / "recipes" / "debug"


def test_round_trip_holds_the_tokenizer_codes_and_texts(shard_dir, shapes_32, image_tokenizer):
    manifest = read_manifest(shard_dir)
    assert manifest["num_samples"] == 40 and manifest["num_shards"] == 3
    assert manifest["image_size"] == 32 and manifest["grid"] == [8, 8]
    assert manifest["code_dtype"] == "uint16"
    assert manifest["tokenizer"]["codebook_size"] == 125
    assert sorted(p.name for p in shard_dir.glob("chunk-*.bin")) == [
        "chunk-0-0.bin", "chunk-0-1.bin", "chunk-0-2.bin"]
    assert not (shard_dir / JOB).exists() and not (shard_dir / JOURNAL).exists()
    shards = ShardDataset(str(shard_dir))
    assert len(shards) == 40
    images = torch.stack([shapes_32[i]["image"] for i in range(40)])
    expected = image_tokenizer.encode(images)
    for i in range(40):
        item, original = shards[i], shapes_32[i]
        assert item["codes"].dtype == torch.long and torch.equal(item["codes"], expected[i])
        assert item["index"] == i
        for field in ("caption", "description", "question", "answer", "scene"):
            assert item[field] == original[field]
    assert "image" not in shards[0]
    with Image.open(shard_dir / "reconstructions.png") as grid:
        assert grid.size == (2 * 32, 8 * 32)  # 8 rows of original | decoded


class CrashAt(Dataset):
    """The data set, but reading sample ``at`` fails: a run killed in the middle of a shard."""

    def __init__(self, dataset: Dataset, at: int) -> None:
        self.dataset, self.at = dataset, at

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index == self.at:
            raise RuntimeError("killed")
        return self.dataset[index]


def test_shards_written_before_descriptions_read_them_as_empty(tmp_path, shapes_32, image_tokenizer,
                                                             monkeypatch):
    from unigen.data import shards as shards_module
    from unigen.data.shards import write_shards

    monkeypatch.setattr(shards_module, "TEXT_FIELDS", ("caption", "question", "answer", "scene"))
    write_shards(shapes_32, image_tokenizer, tmp_path / "old", 32, shard_size=8, batch_size=8,
                 source={"data": "shapes"}, progress=False)
    monkeypatch.undo()
    item = ShardDataset(str(tmp_path / "old"))[3]
    assert item["description"] == "" and item["caption"] == shapes_32[3]["caption"]


def test_a_killed_run_resumes_where_it_stopped(tmp_path, shard_dir, shapes_32, image_tokenizer,
                                              monkeypatch):
    out = tmp_path / "shards"
    args = dict(image_size=32, shard_size=16, batch_size=8, source={"data": "shapes"}, progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        write_shards(CrashAt(shapes_32, at=20), image_tokenizer, out, **args)  # inside shard 1
    assert (out / JOURNAL / "0.index.json").is_file() and not (out / MANIFEST).exists()
    assert list(out.glob(".shard-1.tmp"))  # the interrupted shard's partial state is there
    # a kill between moving a chunk in place and journaling it leaves an unjournaled chunk file
    (out / "chunk-0-1.bin").write_bytes(b"garbage from a killed write")

    encoded = []
    encode = image_tokenizer.encode
    monkeypatch.setattr(image_tokenizer, "encode", lambda x: encoded.append(len(x)) or encode(x))
    manifest = write_shards(shapes_32, image_tokenizer, out, **args)
    assert sum(encoded) == 24  # shards 1 and 2 only: shard 0 was not encoded again
    assert manifest == read_manifest(shard_dir)
    for chunk in ("chunk-0-0.bin", "chunk-0-1.bin", "chunk-0-2.bin"):  # as if never interrupted
        assert (out / chunk).read_bytes() == (shard_dir / chunk).read_bytes()
    index, reference = (json.loads((d / "index.json").read_text()) for d in (out, shard_dir))
    assert index["chunks"] == reference["chunks"] and index["config"] == reference["config"]
    assert not list(out.glob(".shard-*")) and not (out / JOB).exists()

    encoded.clear()  # a finished directory is not encoded again
    write_shards(shapes_32, image_tokenizer, out, **args)
    assert encoded == []


def test_resuming_with_other_settings_is_refused(tmp_path, shapes_32, image_tokenizer):
    out = tmp_path / "shards"
    args = dict(image_size=32, batch_size=8, source={"data": "shapes"}, progress=False)
    with pytest.raises(RuntimeError, match="^killed$"):
        write_shards(CrashAt(shapes_32, at=20), image_tokenizer, out, shard_size=16, **args)
    with pytest.raises(ValueError, match="differ in shard_size"):
        write_shards(shapes_32, image_tokenizer, out, shard_size=8, **args)
    other = FSQTokenizer(levels=[4, 4], block_out_channels=[16, 16, 32], latent_channels=8,
                         norm_num_groups=8)
    with pytest.raises(ValueError, match="code_dtype|tokenizer"):
        write_shards(shapes_32, other, out, shard_size=16, **args)


def test_a_foreign_non_empty_directory_is_refused(tmp_path, shapes_32, image_tokenizer):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_shards(shapes_32, image_tokenizer, tmp_path, 32, progress=False)


def test_missing_manifest_names_the_file_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest\.json.*unigen tokenize"):
        ShardDataset(str(tmp_path))


def _other_tokenizers():
    fsq = dict(block_out_channels=[16, 16, 32], latent_channels=8, norm_num_groups=8)
    retrained = FSQTokenizer(levels=[5, 5, 5], **fsq)  # the shards' config and init...
    with torch.no_grad():
        next(retrained.parameters()).add_(1e-3)  # ...but other weights
    return {
        "codebook size mismatch": FSQTokenizer(levels=[4, 4], **fsq),
        "code grid mismatch": FSQTokenizer(levels=[5, 5, 5], block_out_channels=[16, 32],
                                           latent_channels=8, norm_num_groups=8),
        "another image tokenizer": retrained,
    }


@pytest.mark.parametrize("problem", list(_other_tokenizers()))
def test_tokenizer_check_names_the_mismatch(shard_dir, problem):
    manifest = read_manifest(shard_dir)
    with pytest.raises(ValueError, match=problem):
        check_tokenizer(manifest, _other_tokenizers()[problem], str(shard_dir))


def test_tokenizer_check_accepts_the_shards_own_tokenizer(shard_dir, image_tokenizer_dir):
    from unigen.tokenizers.base import ImageTokenizer

    check_tokenizer(read_manifest(shard_dir), ImageTokenizer.from_pretrained(image_tokenizer_dir),
                    str(shard_dir))
    # precision: bf16-true casts the model's frozen tokenizer: still the shards' own
    for dtype in (torch.bfloat16, torch.float16):
        cast = ImageTokenizer.from_pretrained(image_tokenizer_dir).to(dtype)
        check_tokenizer(read_manifest(shard_dir), cast, str(shard_dir))
    other = _other_tokenizers()["another image tokenizer"].to(torch.bfloat16)
    with pytest.raises(ValueError, match="another image tokenizer"):
        check_tokenizer(read_manifest(shard_dir), other, str(shard_dir))


def test_datamodule_checks_the_models_tokenizer_at_the_first_batch(shard_dir, image_tokenizer):
    dm = ShardDataModule(str(shard_dir), image_size=32, batch_size=4, num_val=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(image_tokenizer=image_tokenizer))
    assert dm.on_before_batch_transfer(batch, 0) is batch
    dm = ShardDataModule(str(shard_dir), image_size=32, batch_size=4, num_val=8)
    dm.setup()
    other = _other_tokenizers()["codebook size mismatch"]
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(image_tokenizer=other))
    with pytest.raises(ValueError, match="codebook size mismatch"):
        dm.on_before_batch_transfer(batch, 0)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace())
    with pytest.raises(ValueError, match="no image_tokenizer"):
        dm.on_before_batch_transfer(batch, 0)


def test_datamodule_yields_codes_and_covers_the_train_split_once_per_epoch(shard_dir):
    dm = ShardDataModule(str(shard_dir), image_size=32, batch_size=4, num_val=8, seed=3)
    dm.setup()
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 8  # 32 training samples
    first = batches[0]
    assert first["codes"].shape == (4, 8, 8) and first["codes"].dtype == torch.long
    assert len(first["caption"]) == 4 and len(first["question"]) == 4 and "image" not in first
    train = [int(i) for b in batches for i in b["index"]]
    val = [int(i) for b in dm.val_dataloader() for i in b["index"]]
    assert len(set(train)) == 32 and len(val) == 8 and not set(train) & set(val)
    assert sorted(train + val) == list(range(40))
    again = ShardDataModule(str(shard_dir), image_size=32, batch_size=4, num_val=8, seed=3)
    again.setup()
    assert [int(i) for b in again.train_dataloader() for i in b["index"]] == train  # seeded
    loader.sampler.set_epoch(1)
    assert [int(i) for b in loader for i in b["index"]] != train  # a new order every epoch


def test_test_and_predict_read_the_test_shards_in_order(shard_dir):
    dm = ShardDataModule(str(shard_dir), image_size=32, batch_size=16, num_val=8,
                         test_path=str(shard_dir))
    dm.setup()
    for loader in (dm.test_dataloader(), dm.predict_dataloader()):
        assert [int(i) for b in loader for i in b["index"]] == list(range(40))
    without = ShardDataModule(str(shard_dir), image_size=32, batch_size=4, num_val=8)
    with pytest.raises(ValueError, match="data.init_args.test_path"):
        without.test_dataloader()
    with pytest.raises(ValueError, match="data.init_args.test_path"):
        without.predict_dataloader()


def test_datamodule_refuses_another_image_size(shard_dir):
    dm = ShardDataModule(str(shard_dir), image_size=64, batch_size=4)
    with pytest.raises(ValueError, match="image_size: 32"):
        dm.setup()


def test_fit_from_shards_never_runs_the_image_encoder(shard_dir, tokenizer_dirs, tmp_path,
                                                     monkeypatch):
    from unigen.cli import main
    from unigen.pipeline import UnifiedPipeline
    from unigen.tokenizers.base import ImageTokenizer
    from unigen.training.unified_module import UnifiedModule

    steps, in_step = [], []
    encode, training_step = ImageTokenizer.encode, UnifiedModule.training_step

    def guarded_encode(self, images):
        assert not in_step, "the image tokenizer encoded images in a training step"
        return encode(self, images)

    def traced_step(self, batch, batch_idx):
        in_step.append(True)
        try:
            steps.append(batch["codes"].shape)
            return training_step(self, batch, batch_idx)
        finally:
            in_step.pop()

    monkeypatch.setattr(ImageTokenizer, "encode", guarded_encode)
    monkeypatch.setattr(UnifiedModule, "training_step", traced_step)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(DEBUG / "unified_shards_debug.yaml"),
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
          "--data.init_args.path", str(shard_dir), "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
          "--export_dir", str(tmp_path / "model")])
    assert steps == [(8, 8, 8)] * 2
    assert "train/loss" in next(tmp_path.rglob("metrics.csv")).read_text()
    assert list(tmp_path.rglob("samples/t2i_step*.png"))  # validation decoded the codes
    assert UnifiedPipeline.from_pretrained(tmp_path / "model").image_size == 32


def test_tokenize_command(tmp_path, image_tokenizer_dir, capsys):
    from unigen.cli import main

    out = tmp_path / "shards"
    assert main(["tokenize", "--tokenizer", str(image_tokenizer_dir), "--data", "shapes",
                 "--num-samples", "6", "--image-size", "32", "--shard-size", "4",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert "wrote 6 samples (8x8 codes of 125) in 2 shards" in capsys.readouterr().out
    manifest = read_manifest(out)
    assert manifest["source"] == {"data": "shapes", "seed": 0, "num_samples": 6, "image_size": 32}
    with pytest.raises(SystemExit) as exit_info:
        main(["tokenize", "--tokenizer", str(image_tokenizer_dir), "--data", "imagenet",
              "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 1
    assert "unknown shard source 'imagenet'" in capsys.readouterr().err


def test_tokenize_an_image_folder(tmp_path, image_tokenizer_dir):
    from unigen.commands import tokenize_data

    root = tmp_path / "photos"
    root.mkdir()
    rows = []
    for i, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (40, 30), color).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"a {color} picture"})
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    manifest = tokenize_data(str(image_tokenizer_dir), "folder", str(tmp_path / "shards"),
                             root=str(root), image_size=32, shard_size=2, progress=False)
    assert manifest["num_samples"] == 3 and manifest["num_shards"] == 2
    shards = ShardDataset(str(tmp_path / "shards"))
    assert [shards[i]["caption"] for i in range(3)] == ["a red picture", "a green picture",
                                                        "a blue picture"]
    with pytest.raises(ValueError, match="no splits"):
        tokenize_data(str(image_tokenizer_dir), "folder", str(tmp_path / "x"), root=str(root),
                      split="train")


def test_training_from_shards_resumes_exactly_mid_epoch(shard_dir, tokenizer_dirs, tmp_path,
                                                       monkeypatch):
    """6 steps in one go == resumed from that run's step-3 checkpoint (an epoch is 8 batches)."""
    import yaml

    from unigen.cli import main
    from unigen.io import load_safetensors

    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [{
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"every_n_train_steps": 1, "save_top_k": -1}}]}}))

    def fit(root: str, *extra: str) -> dict[str, torch.Tensor]:
        main(["fit", "--config", str(DEBUG / "unified_shards_debug.yaml"), "--config", str(overlay),
              "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
              "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
              "--data.init_args.path", str(shard_dir), "--data.init_args.batch_size", "4",
              "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
              "--trainer.default_root_dir", root, "--trainer.max_steps", "6",
              "--export_dir", f"{root}/model", *extra])
        return load_safetensors(tmp_path / root / "model" / "transformer" / "model.safetensors")

    def saved_steps(root: str) -> list[int]:
        return sorted(int(p.stem.rsplit("step=", 1)[1]) for p in (tmp_path / root).rglob("*step=*.ckpt"))

    straight = fit("straight")
    (mid,) = (tmp_path / "straight").rglob("*step=3.ckpt")
    resumed = fit("resumed", "--ckpt_path", str(mid))
    assert saved_steps("straight") == [1, 2, 3, 4, 5, 6]
    # it went on from step 3 (a fresh 6-step run of the same seed would give the same weights)
    assert saved_steps("resumed") == [4, 5, 6]
    assert straight and resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_chunk_missing_or_cut_short_after_the_run_is_named(tmp_path, shard_dir, shapes_32, image_tokenizer):
    import shutil

    from unigen.data.shards import ShardDataset, write_shards

    for damage, message in (("delete", "is missing"), ("truncate", "bytes, its index says")):
        copy = tmp_path / damage
        shutil.copytree(shard_dir, copy)
        chunk = sorted(copy.glob("chunk-*.bin"))[1]
        if damage == "delete":
            chunk.unlink()
        else:
            chunk.write_bytes(chunk.read_bytes()[:-5])
        with pytest.raises(ValueError, match=f"shard chunk {chunk} .*{message}"):
            ShardDataset(str(copy))
        with pytest.raises(ValueError, match=message):  # tokenize again: no longer "wrote 40 samples"
            write_shards(shapes_32, image_tokenizer, copy, 32, shard_size=16, batch_size=8,
                         source={"data": "shapes"}, progress=False)
