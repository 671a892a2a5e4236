"""Negative prompts: the guided unconditional pass reads them instead of a masked prompt."""

from __future__ import annotations

import json

import pytest
import torch

from unigen.cli import main
from unigen.sampling import ClassifierFreeGuidance, MaskGITSampler, decode

PROMPTS = ["a red circle", "two blue squares above a green star"]
NEGATIVES = ["a yellow triangle", "three purple circles"]


def test_at_guidance_zero_the_image_is_the_negative_prompts_own(pipe):
    # scale 0 runs only the unconditional pass, which then is the plain conditional pass of the
    # negative prompt: the same tokens for the same seeds
    away = pipe.text_to_image(PROMPTS, num_steps=3, guidance_scale=0.0, negative_prompt=NEGATIVES,
                              seed=[5, 6], output="codes")
    own = pipe.text_to_image(NEGATIVES, num_steps=3, seed=[5, 6], output="codes")
    assert torch.equal(away, own)


def test_a_negative_prompt_changes_guided_images_and_one_string_serves_every_prompt(pipe):
    plain = pipe.text_to_image(PROMPTS, num_steps=3, guidance_scale=3.0, seed=[5, 6], output="codes")
    one = pipe.text_to_image(PROMPTS, num_steps=3, guidance_scale=3.0, seed=[5, 6], output="codes",
                             negative_prompt=NEGATIVES[0])
    each = pipe.text_to_image(PROMPTS, num_steps=3, guidance_scale=3.0, seed=[5, 6], output="codes",
                              negative_prompt=[NEGATIVES[0], NEGATIVES[0]])
    assert torch.equal(one, each)
    assert not torch.equal(one, plain)


def test_inpainting_reads_the_negative_prompt_too(pipe):
    image = torch.rand(2, 3, pipe.image_size, pipe.image_size, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(pipe.image_size, pipe.image_size, dtype=torch.bool)
    mask[: pipe.image_size // 2] = True
    away = pipe.inpaint(image, mask, PROMPTS, num_steps=3, guidance_scale=0.0,
                        negative_prompt=NEGATIVES, seed=[1, 2], output="codes")
    own = pipe.inpaint(image, mask, NEGATIVES, num_steps=3, seed=[1, 2], output="codes")
    assert torch.equal(away, own)


@pytest.mark.parametrize("kwargs, message", [
    ({"negative_prompt": "a star"}, "negative_prompt acts through classifier-free guidance"),
    ({"negative_prompt": ["a", "b", "c"], "guidance_scale": 2.0}, "got 3 negative prompts for 2 samples"),
])
def test_a_negative_prompt_that_cannot_act_is_refused(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pipe.text_to_image(PROMPTS, num_steps=2, **kwargs)


def test_guidance_builds_the_unconditional_rows_from_the_negative_tokens():
    tokens = torch.tensor([[1, 2, 3, 9, 9]])
    cond = torch.tensor([[True, True, False, False, False]])
    negative = torch.tensor([[7, 8, 0, 0, 0]])
    batch = ClassifierFreeGuidance(2.0).prepare(tokens, cond, 9, 0.0, negative)
    assert batch.mode == "both"
    assert batch.inputs.tolist() == [[1, 2, 3, 9, 9], [7, 8, 3, 9, 9]]
    plain = ClassifierFreeGuidance(2.0).prepare(tokens, cond, 9, 0.0)
    assert plain.inputs[1].tolist() == [9, 9, 3, 9, 9]


def test_decode_refuses_negative_tokens_without_guidance_or_of_another_shape():
    tokens = torch.zeros(1, 4, dtype=torch.long)
    masked = torch.tensor([[False, True, True, True]])
    cond = torch.tensor([[True, False, False, False]])
    sampler = MaskGITSampler(mask_id=9)

    def net(x):
        return torch.zeros(*x.shape, 10)

    with pytest.raises(ValueError, match="only act through guidance"):
        decode(net, tokens, masked, sampler, num_steps=2, uncond_tokens=tokens)
    with pytest.raises(ValueError, match="uncond_tokens must be shaped and typed like tokens"):
        decode(net, tokens, masked, sampler, num_steps=2, guidance=ClassifierFreeGuidance(2.0),
               cond_mask=cond, uncond_tokens=tokens[:, :2])


def test_generate_records_the_negative_prompts(pipe, tmp_path, capsys):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    out = tmp_path / "grid.png"
    main(["generate", "--model", str(model), "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
          "--num-per-prompt", "2", "--negative-prompt", NEGATIVES[0], "--negative-prompt",
          NEGATIVES[1], "--guidance", "2", "--steps", "2", "--out", str(out)])
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["negative_prompts"] == [NEGATIVES[0]] * 2 + [NEGATIVES[1]] * 2
    assert out.is_file()


def test_num_images_per_prompt_is_each_prompt_and_its_negative_repeated(pipe):
    repeated = pipe.text_to_image([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, num_steps=2,
                                  guidance_scale=2.0, seed=[1, 2, 3, 4], output="codes",
                                  negative_prompt=[NEGATIVES[0]] * 2 + [NEGATIVES[1]] * 2)
    per_prompt = pipe.text_to_image(PROMPTS, num_steps=2, guidance_scale=2.0, seed=[1, 2, 3, 4],
                                    output="codes", negative_prompt=NEGATIVES,
                                    num_images_per_prompt=2)
    assert torch.equal(per_prompt, repeated)
    assert not torch.equal(per_prompt[0], per_prompt[1])  # two images of one prompt differ
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_images_per_prompt must be >= 1"):
            pipe.text_to_image(PROMPTS, num_steps=2, num_images_per_prompt=bad)


def test_the_autoregressive_pipeline_takes_num_images_per_prompt_too(tokenizer_dirs):
    from unigen.training.ar_module import AutoregressiveModule

    torch.manual_seed(0)
    ar = AutoregressiveModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4)
    ar.configure_model()
    ar_pipe = ar.to_pipeline()
    repeated = ar_pipe.text_to_image([PROMPTS[0]] * 3, seed=5, output="codes")
    assert torch.equal(ar_pipe.text_to_image(PROMPTS[0], seed=5, output="codes",
                                             num_images_per_prompt=3), repeated)
