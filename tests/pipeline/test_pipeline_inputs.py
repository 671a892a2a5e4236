"""What the pipeline's tasks accept and refuse: samplers given by name or as objects, step
budgets, seeds, empty batches, inpainting masks and prompts, devices and dtypes, and the global RNG
(never touched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unigen.data.shapes import ShapesDataset
from unigen.pipeline import ANSWER_STEPS, UnifiedPipeline
from unigen.sampling import MaskGITSampler, SemiARSampler


def images(n: int) -> torch.Tensor:
    ds = ShapesDataset("val", n, 32, seed=0)
    return torch.stack([ds[i]["image"] for i in range(n)])


def square_mask() -> torch.Tensor:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:5, 2:5] = True
    return mask


# -- samplers: by name or as an object, one construction path ---------------------------------------
def test_a_sampler_object_decodes_like_its_name(pipe):
    by_name = pipe.text_to_image(["a red circle"], num_steps=4, sampler="maskgit", output="codes")
    given = MaskGITSampler()
    by_object = pipe.text_to_image(["a red circle"], num_steps=4, sampler=given, output="codes")
    assert torch.equal(by_name, by_object)
    assert given.mask_id is None  # the caller's object is not changed (a copy decodes)
    # a semi_ar object gets the vocabulary's <eos>/<pad>, as the name would
    obj = pipe.caption(images(2), num_steps=6, sampler=SemiARSampler(block_length=8))
    named = pipe.caption(images(2), num_steps=6, sampler="semi_ar",
                         sampler_kwargs={"block_length": 8})
    assert obj == named
    with pytest.raises(TypeError, match="sampler must be a registered sampler name or a Sampler"):
        pipe.text_to_image(["a"], num_steps=2, sampler=3)
    with pytest.raises(ValueError, match="only apply to a sampler given by name"):
        pipe.text_to_image(["a"], num_steps=2, sampler=MaskGITSampler(),
                           sampler_kwargs={"temperature": 0})
    with pytest.raises(ValueError, match="this vocabulary's <mask> is"):
        pipe.text_to_image(["a"], num_steps=2, sampler=MaskGITSampler(mask_id=pipe.space.mask_id + 1))


def test_sampler_options_the_pipeline_sets_or_cannot_use_are_one_line(pipe):
    with pytest.raises(ValueError, match="sampler_kwargs: mask_id is set from the vocabulary") as err:
        pipe.text_to_image(["a"], num_steps=2, sampler_kwargs={"mask_id": 3})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sampler_kwargs threshold='abc': sampler 'confident' "
                                         "cannot use this value") as err:
        pipe.caption(images(1), sampler_kwargs={"threshold": "abc"})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError,
                       match="sampler_kwargs nope=1: sampler 'maskgit' does not take") as err:
        pipe.text_to_image(["a"], num_steps=2, sampler_kwargs={"nope": 1})
    assert "\n" not in str(err.value)
    # semi_ar's special ids come from the vocabulary unless given
    sampler = pipe.make_sampler("semi_ar", {"pad_id": 7})
    assert (sampler.mask_id, sampler.eos_id, sampler.pad_id) == (pipe.space.mask_id,
                                                                 pipe.space.eos_id, 7)
    with pytest.raises(TypeError, match="unknown option 'bogus'") as err:
        pipe.text_to_image(["a"], num_steps=2, bogus=1)
    assert "\n" not in str(err.value)


# -- step budgets ----------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["t2i", "caption", "answer", "inpaint", "img2img"])
def test_num_steps_is_a_positive_integer_everywhere(pipe, call):
    x = images(1)
    run = {"t2i": lambda n: pipe.text_to_image(["a red circle"], num_steps=n, output="codes"),
           "caption": lambda n: pipe.caption(x, num_steps=n, sampler="maskgit"),
           "answer": lambda n: pipe.answer(x, "what color is the star?", num_steps=n,
                                           sampler="maskgit"),
           "inpaint": lambda n: pipe.inpaint(x, square_mask(), "a", num_steps=n, output="codes"),
           "img2img": lambda n: pipe.image_to_image(x, "a", num_steps=n, output="codes")}[call]
    for bad in (0, -1, 8.5):
        with pytest.raises(ValueError, match=f"num_steps must be a positive integer, got {bad}"):
            run(bad)
    with pytest.raises(TypeError, match="num_steps must be a positive integer"):
        run(True)
    assert _same(run(3.0), run(3))  # an integral float is that integer


def _same(a, b) -> bool:
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_text_defaults_apply_only_when_num_steps_is_none(pipe):
    x, question = images(2), "what color is the star?"
    _, calls = pipe.caption(x, sampler="maskgit", return_calls=True)
    assert calls == [pipe.space.sequence.max_text_len] * 2
    _, calls = pipe.answer(x, question, sampler="maskgit", return_calls=True)
    assert calls == [ANSWER_STEPS] * 2


# -- seeds -----------------------------------------------------------------------------------------
def test_any_integer_sequence_of_seeds_is_accepted(pipe):
    prompts = ["a red circle", "two blue squares"]
    want = pipe.text_to_image(prompts, num_steps=2, seed=[3, 4], output="codes")
    for seeds in (range(3, 5), np.array([3, 4]), torch.tensor([3, 4]), (3, 4), 3, np.int64(3),
                  torch.tensor(3)):
        assert torch.equal(pipe.text_to_image(prompts, num_steps=2, seed=seeds, output="codes"),
                           want), seeds
    with pytest.raises(ValueError, match="seed 18446744073709551616 \\(sample 0\\) is out of range"):
        pipe.text_to_image(prompts, num_steps=2, seed=2**64)
    with pytest.raises(ValueError, match="\\(sample 1\\) is out of range"):
        pipe.text_to_image(prompts, num_steps=2, seed=2**64 - 1)  # seed + 1 overflows
    with pytest.raises(TypeError, match="seed must be an integer or a sequence of integers"):
        pipe.text_to_image(prompts, num_steps=2, seed=[1.5, 2.0])
    with pytest.raises(ValueError, match="got 3 seeds for 2 samples"):
        pipe.text_to_image(prompts, num_steps=2, seed=range(3))


# -- empty batches ---------------------------------------------------------------------------------
def test_empty_batches_give_empty_results(pipe):
    x = images(2)[:0]
    assert pipe.text_to_image([]) == []
    assert pipe.text_to_image([], output="tensor").shape == (0, 3, 32, 32)
    codes, calls = pipe.text_to_image([], output="codes", return_calls=True)
    assert codes.shape == (0, 8, 8) and codes.dtype == torch.long and calls == []
    assert pipe.text_to_image([], candidates=2, output="codes").shape == (0, 8, 8)
    assert pipe.caption(x) == [] and pipe.caption([]) == []
    assert pipe.caption(x, return_calls=True) == ([], [])
    assert pipe.answer(x, "what color is the star?") == [] and pipe.answer(x, []) == []
    assert pipe.inpaint(x, square_mask(), "a red circle", output="tensor").shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
        pipe.text_to_image([], num_steps=0)  # still checked


# -- answers that cannot fit -----------------------------------------------------------------------
def test_a_question_that_fills_the_text_is_refused_not_answered_empty(pipe):
    with pytest.raises(ValueError, match="question leaves no room for an answer: 23 tokens"):
        pipe.answer(images(2), " ".join(["red"] * 23))
    with pytest.raises(ValueError, match="leave 1 of the 24 text positions"):
        pipe.answer(images(1), " ".join(["red"] * 22))
    assert len(pipe.answer(images(1), " ".join(["red"] * 21))) == 1  # room for a word and <eos>


# -- inpainting ------------------------------------------------------------------------------------
def test_inpaint_accepts_common_masks_and_a_prompt_per_image(pipe):
    x, mask = images(2), square_mask()
    kw = dict(num_steps=3, output="codes", seed=[1, 2])
    want = pipe.inpaint(x, mask, ["a red circle", "a blue star"], **kw)
    pixels = mask.repeat_interleave(4, 0).repeat_interleave(4, 1)
    pil = Image.fromarray(pixels.numpy().astype(np.uint8) * 255)
    for same in (pil, [pil, pil], pixels, pixels.numpy(), mask.float(), mask[None].expand(2, 8, 8),
                 mask[None, None].expand(2, 1, 8, 8)):
        got = pipe.inpaint(x, same, ["a red circle", "a blue star"], **kw)
        assert torch.equal(got, want), type(same)
    before = pipe.image_tokenizer.encode(x)
    per_image = torch.stack([mask, torch.zeros_like(mask)])
    out = pipe.inpaint(x, per_image, "a red circle", progress=True, **kw)
    assert torch.equal(out[1], before[1])  # nothing to regenerate in the second image
    assert torch.equal(out[0][~mask], before[0][~mask])
    with pytest.raises(ValueError, match="got 3 prompts for 2 images"):
        pipe.inpaint(x, mask, ["a", "b", "c"])
    with pytest.raises(ValueError, match="inpainting mask must be 32x32 pixels or 8x8 tokens"):
        pipe.inpaint(x, torch.zeros(3, 8, 8, dtype=torch.bool), "a")
    with pytest.raises(ValueError, match="hold only 0 and 1"):
        pipe.inpaint(x, mask.float() * 0.5, "a")
    with pytest.raises(TypeError, match="inpainting mask must be a bool tensor or array, or a PIL"):
        pipe.inpaint(x, "everything", "a")


def test_the_pipeline_never_touches_the_global_rng(pipe):
    x = images(2)
    state = torch.get_rng_state()
    pipe.inpaint(x, square_mask(), "a red circle", num_steps=2)
    pipe.text_to_image(["a red circle"], num_steps=2, guidance_scale=2.0, candidates=2)
    pipe.caption(x, num_steps=2, sampler="maskgit")
    pipe.answer(x, "what color is the star?", sampler="ancestral")
    assert torch.equal(torch.get_rng_state(), state)


# -- devices and dtypes ----------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_device_this_machine_lacks_is_one_line_before_loading(tmp_path):
    with pytest.raises(ValueError,
                       match="device='cuda': no CUDA GPU is available on this machine") as err:
        UnifiedPipeline.from_pretrained(tmp_path / "not even read", device="cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="device='gpu' is not a device") as err:
        UnifiedPipeline.from_pretrained(tmp_path / "not even read", device="gpu")
    assert "\n" not in str(err.value)


def test_dtype_applies_to_both_networks_and_images_come_out_float32(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    half = UnifiedPipeline.from_pretrained(tmp_path / "p", dtype="bfloat16")
    assert half.dtype == half.image_tokenizer.dtype == torch.bfloat16
    x = images(2)
    out = half.text_to_image(["a red circle", "a blue star"], num_steps=2, output="tensor")
    assert out.dtype == torch.float32 and out.shape == (2, 3, 32, 32)
    assert len(half.text_to_image(["a red circle"], num_steps=2)) == 1  # PIL images
    assert len(half.caption(x, num_steps=2)) == 2
    assert half.inpaint(x, square_mask(), "a", num_steps=2, output="tensor").dtype == torch.float32
    assert UnifiedPipeline.from_pretrained(tmp_path / "p", dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16, float16"):
        UnifiedPipeline.from_pretrained(tmp_path / "p", dtype="int8")
