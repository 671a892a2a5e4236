"""Mixing data sets by ratio: exact per-epoch counts, seeded and resumable order, checks."""

from __future__ import annotations

from collections import Counter
from functools import partial

import pytest
import torch

from unigen.data.mixture import MixtureDataModule, mixture_counts, mixture_order, source_draws
from unigen.data.shapes import ShapesDataset


@pytest.mark.parametrize("ratios, total, expected", [
    ([3, 1], 64, [48, 16]), ([1, 1, 1], 10, [4, 3, 3]), ([0.5, 0.25, 0.25], 7, [3, 2, 2]),
    ([2, 0, 1], 9, [6, 0, 3]), ([1, 1], 1, [1, 0]),
])
def test_counts_are_proportional_and_add_up(ratios, total, expected):
    assert mixture_counts(ratios, total) == expected


@pytest.mark.parametrize("ratios", [[], [0, 0], [1, -1]])
def test_bad_ratios_are_refused(ratios):
    with pytest.raises(ValueError, match="ratios"):
        mixture_counts(ratios, 10)


def test_every_epoch_holds_each_source_at_its_ratio():
    lengths, counts = [10, 50, 7], mixture_counts([2, 1, 1], 40)
    offsets = [0, 10, 60]
    for epoch in range(3):
        order = mixture_order(lengths, counts, seed=0, epoch=epoch)
        source = torch.bucketize(order, torch.tensor(offsets[1:]), right=True)
        assert Counter(source.tolist()) == {0: 20, 1: 10, 2: 10}
        assert all(0 <= i - offsets[k] < lengths[k] for i, k in zip(order.tolist(), source.tolist()))
    assert torch.equal(mixture_order(lengths, counts, 0, 1), mixture_order(lengths, counts, 0, 1))
    assert not torch.equal(mixture_order(lengths, counts, 0, 1), mixture_order(lengths, counts, 0, 2))
    assert not torch.equal(mixture_order(lengths, counts, 0, 1), mixture_order(lengths, counts, 1, 1))


def test_a_source_is_walked_pass_by_pass_without_repeats():
    stream = source_draws(length=7, start=0, count=21, seed=3, source=0)
    for p in range(3):  # 3 passes: each a permutation, and a new one each time
        assert sorted(stream[7 * p:7 * (p + 1)].tolist()) == list(range(7))
    assert not torch.equal(stream[:7], stream[7:14])
    # the stream continues across epochs: draws 5..12 are the same wherever they are requested
    assert torch.equal(source_draws(7, 5, 8, 3, 0), stream[5:13])


def _shapes(split: str, n: int, size: int = 16):
    return partial(ShapesDataset, split, n, size, 0)


def test_datamodule_batches_follow_the_ratios():
    dm = MixtureDataModule({"a": _shapes("train", 12), "b": _shapes("val", 30)},
                           {"a": 1.0, "b": 3.0}, image_size=16, batch_size=4,
                           samples_per_epoch=32, seed=0)
    dm.setup()
    assert dm.counts == [8, 24]
    batches = list(dm.train_dataloader())
    assert len(batches) == 8 and batches[0]["image"].shape == (4, 3, 16, 16)
    sources = Counter(int(s) for b in batches for s in b["source"])
    assert sources == {0: 8, 1: 24}
    index = [int(i) for b in batches for i in b["index"]]
    assert len(set(index)) == 32  # no sample twice within an epoch (both sources large enough)
    a_first = ShapesDataset("train", 12, 16, 0)
    b = next(b for b in batches if int(b["source"][0]) == 0)
    assert b["caption"][0] == a_first[int(b["index"][0])]["caption"]
    dm2 = MixtureDataModule({"a": _shapes("train", 12), "b": _shapes("val", 30)},
                            {"a": 1.0, "b": 3.0}, image_size=16, batch_size=4,
                            samples_per_epoch=32, seed=0)
    assert [int(i) for b in dm2.train_dataloader() for i in b["index"]] == index  # reproducible


def test_test_sources_are_read_one_after_the_other():
    dm = MixtureDataModule({"a": _shapes("train", 12)}, {"a": 1.0}, image_size=16, batch_size=4,
                           test_sources={"t": _shapes("heldout", 6), "u": _shapes("val", 3)})
    for loader in (dm.test_dataloader(), dm.predict_dataloader()):
        batches = list(loader)
        assert [int(s) for b in batches for s in b["source"]] == [0] * 6 + [1] * 3
        assert batches[0]["caption"][0] == ShapesDataset("heldout", 6, 16, 0)[0]["caption"]
        # the exhaustive description too (the caption task's ``text: descriptions`` reads it)
        assert batches[0]["description"][0] == ShapesDataset("heldout", 6, 16, 0)[0]["description"]
    without = MixtureDataModule({"a": _shapes("train", 12)}, {"a": 1.0}, image_size=16, batch_size=4)
    with pytest.raises(ValueError, match="data.init_args.test_sources"):
        without.test_dataloader()
    bad = MixtureDataModule({"a": _shapes("train", 12)}, {"a": 1.0}, image_size=16, batch_size=4,
                            test_sources={"t": _shapes("heldout", 6, size=32)})
    with pytest.raises(ValueError, match="test/t"):
        bad.test_dataloader()


def test_mid_epoch_resume_continues_the_same_order():
    from types import SimpleNamespace

    def module():
        return MixtureDataModule({"a": _shapes("train", 12), "b": _shapes("val", 30)},
                                 {"a": 1.0, "b": 1.0}, image_size=16, batch_size=4,
                                 samples_per_epoch=24, seed=1)

    full = [[int(i) for i in b["index"]] for b in module().train_dataloader()]
    resumed = module()
    progress = SimpleNamespace(current=SimpleNamespace(processed=2))
    resumed.trainer = SimpleNamespace(world_size=1, global_rank=0, fit_loop=SimpleNamespace(
        restarting=True, epoch_loop=SimpleNamespace(batch_progress=progress)))
    assert [[int(i) for i in b["index"]] for b in resumed.train_dataloader()] == full[2:]


def test_sources_must_agree(shard_dir):
    from unigen.data.shards import ShardDataset

    with pytest.raises(ValueError, match="'b' gives 32px images, the mixture is 16px"):
        MixtureDataModule({"a": _shapes("train", 8), "b": _shapes("val", 8, 32)},
                          {"a": 1, "b": 1}, image_size=16, batch_size=2).setup()
    with pytest.raises(ValueError, match="mix raw images and pretokenized codes"):
        MixtureDataModule({"a": _shapes("train", 8, 32), "b": partial(ShardDataset, str(shard_dir))},
                          {"a": 1, "b": 1}, image_size=32, batch_size=2).setup()
    with pytest.raises(ValueError, match="needs a ratio"):
        MixtureDataModule({"a": _shapes("train", 8)}, {"a": 1, "b": 1}, image_size=16)


def test_shard_sources_mix_into_code_batches(shard_dir):
    from unigen.data.shards import ShardDataset

    dm = MixtureDataModule({"x": partial(ShardDataset, str(shard_dir)),
                            "y": partial(ShardDataset, str(shard_dir))},
                           {"x": 1, "y": 1}, image_size=32, batch_size=4, samples_per_epoch=16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["codes"].shape == (4, 8, 8) and "image" not in batch
    shards = ShardDataset(str(shard_dir))
    for row, (index, source) in enumerate(zip(batch["index"], batch["source"])):
        local = int(index) - 40 * int(source)  # the second source's indices follow the first's
        assert torch.equal(batch["codes"][row], shards[local]["codes"])


def test_mixture_debug_recipe_fits(tokenizer_dirs, tmp_path, monkeypatch):
    from pathlib import Path

    from unigen.cli import main
    from unigen.data.fashion_mnist import DEBIAN_ROOT

    if not (DEBIAN_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    from unigen.commands import text_corpus
    from unigen.tokenizers.text import TextTokenizer

    monkeypatch.chdir(tmp_path)
    corpus = text_corpus("shapes", num_samples=500) + text_corpus("fashion_mnist")
    TextTokenizer.train(corpus, vocab_size=512).save_pretrained(tmp_path / "text_tokenizer")
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "debug" / "unified_mixture_debug.yaml"
    main(["fit", "--config", str(recipe),
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", str(tmp_path / "text_tokenizer"),
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--trainer.enable_progress_bar", "false"])
    log = next(tmp_path.rglob("metrics.csv")).read_text()
    assert "train/loss" in log and "val/loss" in log
    ckpt = next(tmp_path.rglob("last.ckpt"))
    main(["test", "--config", str(recipe),
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", str(tmp_path / "text_tokenizer"),
          "--trainer.enable_progress_bar", "false", "--ckpt_path", str(ckpt)])
    assert any("test/loss" in f.read_text() for f in tmp_path.rglob("metrics.csv"))
