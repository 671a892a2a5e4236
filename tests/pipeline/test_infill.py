"""Infilling: blanks of a caption filled with the image as context, and with a mask part of the
image redrawn in the same decode (UniDisc's joint infilling)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def images(pipe):
    return torch.rand(2, 3, pipe.image_size, pipe.image_size,
                      generator=torch.Generator().manual_seed(0))


def test_the_given_words_stay_and_each_blank_becomes_a_word(pipe, images):
    out = pipe.infill(images, ["a _ circle above a blue square", "_ _ star"], seed=[1, 2])
    tok = pipe.space.text_tokenizer
    for template, filled in zip(["a _ circle above a blue square", "_ _ star"], out.texts):
        given = template.split()
        ids = tok.encode(filled)
        assert len(ids) == len(given)  # one token per blank, the rest as given
        for word, token in zip(given, ids):
            if word != "_":
                assert token == tok.encode(word)[0]
    assert len(out.images) == 2  # nothing redrawn: the inputs' reconstructions
    codes = pipe.infill(images, ["a _ circle above a blue square", "_ _ star"], seed=[1, 2],
                        output="codes").images
    assert torch.equal(codes, pipe.image_tokenizer.encode(images))


def test_seeded_and_each_sample_its_own(pipe, images):
    both = pipe.infill(images, ["a _ _", "two _ squares"], seed=[5, 6]).texts
    alone = pipe.infill(images[1:], "two _ squares", seed=[6]).texts
    assert both[1] == alone[0]
    assert pipe.infill(images, ["a _ _", "two _ squares"], seed=[5, 6]).texts == both


@pytest.mark.parametrize("sampler", ["ancestral", "maskgit"])
def test_a_samples_fill_does_not_depend_on_the_others_blanks_or_masks(pipe, images, sampler):
    texts = ["a _ circle above a _ _", "two _ squares"]
    both, calls = pipe.infill(images, texts, sampler=sampler, seed=[3, 4], return_calls=True)
    alone, calls_alone = pipe.infill(images[1:], texts[1], sampler=sampler, seed=[4], return_calls=True)
    assert both.texts[1] == alone.texts[0] and calls[1] == calls_alone[0]
    # the first sample redraws half its image, the second has an empty mask: only blanks to fill
    mask = torch.zeros(2, pipe.image_size, pipe.image_size, dtype=torch.bool)
    mask[0, : pipe.image_size // 2] = True
    mixed = pipe.infill(images, texts, mask=mask, sampler=sampler, seed=[3, 4], output="codes")
    assert mixed.texts[1] == alone.texts[0]
    assert torch.equal(mixed.images[1], pipe.image_tokenizer.encode(images[1:])[0])
    # both redraw their image, only the first has blanks: the second draws as it would alone
    mask[1] = mask[0]
    joint = pipe.infill(images, [texts[0], "two red squares"], mask=mask, sampler=sampler, seed=[3, 4],
                        output="codes")
    by_itself = pipe.infill(images[1:], "two red squares", mask=mask[1:], sampler=sampler, seed=[4], output="codes")
    assert torch.equal(joint.images[1], by_itself.images[0])


def test_a_mask_redraws_its_region_and_keeps_the_rest(pipe, images):
    mask = torch.zeros(pipe.image_size, pipe.image_size, dtype=torch.bool)
    mask[: pipe.image_size // 2] = True
    out, calls = pipe.infill(images, "a _ circle", mask=mask, num_steps=4, output="codes",
                             return_calls=True)
    regions = pipe.inpaint_regions(mask, 2)
    kept = pipe.image_tokenizer.encode(images)
    assert torch.equal(out.images[~regions], kept[~regions])
    assert all(len(t.split()) == 3 and t.split()[2] == "circle" for t in out.texts)
    assert calls == [4, 4]
    # a mask alone (no blanks): the caption is given whole, only the region is drawn
    assert pipe.infill(images, "a red circle", mask=mask, num_steps=2).texts == ["a red circle"] * 2


def test_nothing_to_fill_is_one_error(pipe, images):
    with pytest.raises(ValueError, match="nothing to fill in 'a red circle'"):
        pipe.infill(images, "a red circle")
    with pytest.raises(ValueError, match="got 3 texts for 2 images"):
        pipe.infill(images, ["a _", "b _", "c _"])


def test_a_blank_is_never_filled_with_the_end_or_padding(pipe, images, monkeypatch):
    """Even a network that would end the text at every blank fills each with a word."""
    from unigen.modules.transformer import UnifiedTransformer

    eos, pad = pipe.space.eos_id, pipe.space.pad_id
    logits = UnifiedTransformer.logits

    def eager_to_stop(self, hidden, *args, **kwargs):
        out = logits(self, hidden, *args, **kwargs).clone()
        out[..., [eos, pad]] += 1e4
        return out

    monkeypatch.setattr(UnifiedTransformer, "logits", eager_to_stop)
    assert pipe.caption(images[:1], num_steps=2)[0] == ""  # the plain caption ends at once
    filled = pipe.infill(images[:1], "a _ _ circle", num_steps=2).texts[0].split()
    assert len(filled) == 4 and filled[0] == "a" and filled[3] == "circle"


def test_caption_fill_from_the_command_line_is_the_pipelines_infill(cli_models, tmp_path):
    import json

    from unigen.cli import main
    from unigen.commands import _load_images
    from unigen.pipeline import UnifiedPipeline

    out = tmp_path / "filled.json"
    paths = [str(cli_models / "x0.png"), str(cli_models / "x1.png")]
    assert main(["caption", "--model", str(cli_models / "masked"), "--image", paths[0], "--image",
                 paths[1], "--fill", "a _ circle", "--seed", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    pipe = UnifiedPipeline.from_pretrained(cli_models / "masked")
    expected = pipe.infill(_load_images(paths, 32, "none", False), "a _ circle", seed=3).texts
    assert [r["caption"] for r in rows] == expected and [r["fill"] for r in rows] == ["a _ circle"] * 2
    assert json.loads(out.with_suffix(".settings.json").read_text())["fill"] == ["a _ circle"] * 2


@pytest.mark.parametrize("fills, message", [
    (["a red circle"], "--fill 'a red circle' has no blank"),
    (["a _", "b _", "c _"], "--fill: give one, or one per --image (2); got 3"),
])
def test_bad_fills_are_one_line_before_the_model_loads(fills, message, cli_models, tmp_path,
                                                      capsys, monkeypatch):
    from cli_testkit import fails_with

    import unigen.text_commands as command

    monkeypatch.setattr(command, "_pipeline", lambda args: pytest.fail("the model was loaded"))
    argv = ["caption", "--model", cli_models / "masked", "--image", cli_models / "x0.png",
            "--image", cli_models / "x1.png", "--out", tmp_path / "f.json"]
    for fill in fills:
        argv += ["--fill", fill]
    assert message in fails_with(argv, capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_model_trains_on_infill_through_the_caption_token(tokenizer_dirs):
    from unigen.data.shapes import ShapesDataset
    from unigen.training.unified_module import UnifiedModule

    torch.manual_seed(0)
    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4,
                           tasks={"infill": 1.0})
    module.configure_model()  # no <infill> token needed: it speaks through <caption> and <joint>
    data = ShapesDataset("train", 4, 32, seed=0)
    batch = {"image": torch.stack([data[i]["image"] for i in range(4)]),
             "caption": [data[i]["caption"] for i in range(4)]}
    gen = torch.Generator().manual_seed(0)
    tb, assignment = module.mixture.build(module.task_inputs(batch), module.space, gen)
    assert (tb.tokens[:, module.space.sequence.task_pos] == module.space.task_token("caption")).all()
    loss = module.diffusion_loss(tb, gen, assignment)[0]
    assert torch.isfinite(loss) and loss > 0


def test_with_a_mask_a_text_without_blanks_stays_as_written(pipe, images):
    """No random span is ever drawn at inference: a row with no blank keeps its whole text."""
    mask = torch.zeros(pipe.image_size, pipe.image_size, dtype=torch.bool)
    mask[:, : pipe.image_size // 2] = True
    out = pipe.infill(images, ["a _ circle", "two blue squares"], mask=mask, num_steps=2)
    assert out.texts[1] == "two blue squares" and out.texts[0].split()[::2] == ["a", "circle"]
    with pytest.raises(TypeError, match="unknown option 'blank'"):
        pipe.infill(images, "a _ circle", blank="[M]")
