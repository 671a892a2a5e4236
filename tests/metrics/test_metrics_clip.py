"""CLIPScore with a tiny local CLIP, the word tokenizer, retrieval accuracy and ClipModule."""

import hashlib
import json
import shutil

import pytest
import torch

from metrics_testkit import BlocksData, batch, fast_trainer
from unigen.metrics import CLIPScore, ClipEncoder, build_metrics, retrieval_accuracy
from unigen.metrics.clip_tokenizer import EOS_ID, build_vocabulary, build_word_tokenizer
from unigen.training.clip_module import ClipModule

TINY = dict(image_size=32, patch_size=8, vision_width=32, vision_layers=1, vision_heads=2,
            text_width=32, text_layers=1, text_heads=2, max_text_length=16, projection_dim=16,
            vocab_size=32)


def test_word_tokenizer_frames_and_truncates_with_eos():
    vocab = build_vocabulary(["A red block.", "a BLUE block on the left"])
    assert vocab == [".", "a", "block", "blue", "left", "on", "red", "the"]
    tok = build_word_tokenizer(vocab, max_length=5)
    ids = tok("a purple block")["input_ids"]
    assert ids[0] == 2 and ids[-1] == EOS_ID and ids[2] == 1  # <bos> ... <eos>; purple -> <unk>
    long = tok("a red block on the left .", truncation=True, max_length=5)["input_ids"]
    assert len(long) == 5 and long[-1] == EOS_ID  # CLIP pools at <eos>: truncation must keep it
    with pytest.raises(ValueError, match="not single normalised words"):
        build_word_tokenizer(["Red"], 8)


def test_clip_description_follows_the_weights_not_the_path(tiny_clip_dir, tmp_path):
    from unigen.metrics.features import same_network

    copy = tmp_path / "copy"
    shutil.copytree(tiny_clip_dir, copy)
    here = ClipEncoder.from_pretrained(tiny_clip_dir).describe()
    assert same_network(here, ClipEncoder.from_pretrained(copy).describe())
    assert here["path"] != str(copy)
    state = ClipEncoder.from_pretrained(copy).model.state_dict()
    state = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(copy / "model.safetensors"))
    changed = ClipEncoder.from_pretrained(copy).describe()
    assert len(changed["weights_sha1"]) == 40 and not same_network(here, changed)


def test_clip_score_matches_its_definition(tiny_clip_dir):
    metric = build_metrics(["clip_score"], shared={"clip": str(tiny_clip_dir)})["clip_score"]
    data = batch(6)
    metric.update(data["image"][:4], data["caption"][:4])
    metric.update(data["image"][4:], data["caption"][4:])
    encoder = ClipEncoder.from_pretrained(tiny_clip_dir)
    with torch.no_grad():
        cos = (encoder.encode_images(data["image"]) * encoder.encode_texts(data["caption"])).sum(-1)
    expected = (100 * cos.clamp(min=0)).mean().item()
    assert metric.compute().item() == pytest.approx(expected, rel=1e-5)
    assert 0.0 <= expected <= 100.0
    # the weights' sha1 is recorded, so a run resumed with other weights is refused
    sha1 = hashlib.sha1((tiny_clip_dir / "model.safetensors").read_bytes()).hexdigest()
    assert metric.describe() == {"clip": {"path": str(tiny_clip_dir), "weights_sha1": sha1}}
    with pytest.raises(ValueError, match="pair up"):
        metric.update(data["image"][:2], data["caption"][:3])


def test_clip_directory_errors(tmp_path, tiny_clip_dir):
    with pytest.raises(FileNotFoundError, match="clip_shapes.yaml"):
        CLIPScore(clip=tmp_path / "missing")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((tiny_clip_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="lacks tokenizer_config.json"):
        CLIPScore(clip=partial)


def test_retrieval_accuracy_is_duplicate_aware():
    emb = torch.eye(4)
    assert retrieval_accuracy(emb, emb, ["a", "b", "c", "d"], ks=(1, 2)) == {
        "i2t_top1": 1.0, "i2t_top2": 1.0, "t2i_top1": 1.0, "t2i_top2": 1.0, "chance_top1": 0.25}
    # image 0 is closest to text 1, whose caption is the same: still right
    images = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    out = retrieval_accuracy(images, texts, ["x", "x.", "y"], ks=(1,))
    assert out["i2t_top1"] == pytest.approx(2 / 3) and out["chance_top1"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="at least 5 pairs"):
        retrieval_accuracy(emb, emb, list("abcd"))


def test_clip_module_learns_exports_and_scores(tmp_path):
    torch.manual_seed(0)
    module = ClipModule(**TINY, lr=3e-3, warmup_steps=5)
    data = batch(16)
    trainer = fast_trainer(max_steps=30)
    trainer.fit(module, datamodule=BlocksData(num_train=64, num_val=16))
    assert module.vocabulary == build_vocabulary(data["caption"])  # read from the data set's texts()
    assert set(module.retrieval) == {"i2t_top1", "i2t_top5", "t2i_top1", "t2i_top5", "chance_top1"}
    assert module.retrieval["i2t_top5"] > module.retrieval["chance_top1"]
    with torch.no_grad():
        final = module._forward(data).loss.item()
    assert final < 0.8 * torch.log(torch.tensor(16.0)).item()  # well below chance-level InfoNCE
    out = tmp_path / "clip"
    module.export(out)
    assert json.loads((out / "unigen_clip.json").read_text())["retrieval"] == module.retrieval
    metric = CLIPScore(clip=out)
    matched = metric.pair_scores(data["image"], data["caption"]).mean()
    rolled = metric.pair_scores(data["image"], data["caption"][1:] + data["caption"][:1]).mean()
    assert matched > rolled + 5.0  # the trained model prefers the true captions (colour swapped)


def test_clip_module_vocabulary_survives_checkpoints(tmp_path):
    module = ClipModule(**TINY, vocabulary=["a", "block", "red"])
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    fresh = ClipModule(**TINY)
    assert fresh.clip.processor is None
    fresh.on_load_checkpoint(ckpt)
    assert fresh.vocabulary == ["a", "block", "red"]
    assert fresh.clip.text_inputs(["a red block"])["input_ids"].tolist() == [[2, 4, 6, 5, 3]]
    with pytest.raises(ValueError, match="exceed vocab_size=32"):
        ClipModule(**TINY, vocabulary=[f"w{i}" for i in range(40)])


def test_clip_module_refuses_captions_outside_its_vocabulary():
    module = ClipModule(**TINY, vocabulary=["a", "block", "red"])
    with pytest.raises(ValueError, match=r"outside the CLIP vocabulary: \['blue', 'purple'\]"):
        module._forward({"image": torch.rand(2, 3, 32, 32), "caption": ["a blue block", "a purple block"]})
