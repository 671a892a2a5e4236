"""The per-step callback (diffusers' ``callback_on_step_end``) and the partial images it draws."""

from __future__ import annotations

import pytest
import torch

from unigen.sampling.selection import masked_counts

PROMPTS = ["a red circle", "two blue squares above a green star"]


def _record(steps: list):
    def callback(step_index, tokens, is_masked):
        steps.append((step_index, tokens, is_masked))
    return callback


def test_each_step_shows_the_whole_sequence_and_the_last_is_the_result(pipe):
    steps: list = []
    codes = pipe.text_to_image(PROMPTS, num_steps=4, seed=[1, 2], output="codes",
                               callback=_record(steps))
    assert [s[0] for s in steps] == [0, 1, 2, 3]
    seq = pipe.space.sequence
    first_tokens = steps[0][1]
    for _, tokens, is_masked in steps:
        assert tokens.shape == is_masked.shape == (2, seq.length)
        assert torch.equal(tokens == pipe.space.mask_id, is_masked)  # masked means <mask>
        assert not is_masked[:, seq.text].any()  # the prompt is given throughout
        assert torch.equal(tokens[:, seq.text], first_tokens[:, seq.text])
    # MaskGIT's schedule: after step i exactly masked_counts(...)[i + 1] image tokens stay masked
    sampler = pipe.make_sampler("maskgit")
    sampler.set_timesteps(4)
    expected = masked_counts(sampler.schedule, sampler.time_grid,
                             torch.full((2,), seq.num_image_tokens))[:, 1:]
    counts = torch.stack([m[:, seq.image].sum(-1) for _, _, m in steps], dim=1)
    assert torch.equal(counts, expected)
    # a revealed token never changes again, and the last state is the returned image
    for (_, before, masked_before), (_, after, _) in zip(steps, steps[1:]):
        kept = ~masked_before
        assert torch.equal(after[kept], before[kept])
    assert torch.equal(pipe.space.image_codes(steps[-1][1]), codes)


def test_watching_changes_nothing(pipe):
    plain = pipe.text_to_image(PROMPTS, num_steps=3, guidance_scale=2.0, seed=[1, 2],
                               output="codes")
    watched = pipe.text_to_image(PROMPTS, num_steps=3, guidance_scale=2.0, seed=[1, 2],
                                 output="codes", callback=lambda *_: None)
    assert torch.equal(plain, watched)


def test_text_tasks_call_it_too(pipe):
    images = torch.rand(2, 3, pipe.image_size, pipe.image_size,
                        generator=torch.Generator().manual_seed(0))
    steps: list = []
    captions = pipe.caption(images, num_steps=3, callback=_record(steps))
    seq = pipe.space.sequence
    assert len(steps) >= 1 and not steps[-1][2].any()
    assert all(not m[:, seq.image].any() for _, _, m in steps)  # the image is given
    assert pipe.space.decode_text(steps[-1][1]) == captions


def test_partial_images_paint_the_masked_patches_and_end_as_the_image(pipe):
    steps: list = []
    final = pipe.text_to_image(PROMPTS[:1], num_steps=4, seed=[3], output="tensor",
                               callback=_record(steps))
    _, tokens, is_masked = steps[1]
    partial = pipe.partial_images(tokens, is_masked, fill=0.25)
    size, f = pipe.image_size, pipe.image_tokenizer.downsample_factor
    assert partial.shape == (1, 3, size, size)
    h, w = pipe.space.sequence.grid
    cells = is_masked[0, pipe.space.sequence.image].reshape(h, w)
    assert 0 < int(cells.sum()) < h * w
    for r, c in cells.nonzero().tolist():  # each masked token's patch is the fill colour
        assert torch.all(partial[0, :, r * f:(r + 1) * f, c * f:(c + 1) * f] == 0.25)
    # a revealed patch is decoded content, not the fill
    r, c = (~cells).nonzero()[0].tolist()
    assert not torch.all(partial[0, :, r * f:(r + 1) * f, c * f:(c + 1) * f] == 0.25)
    _, tokens, is_masked = steps[-1]
    assert torch.allclose(pipe.partial_images(tokens, is_masked), final)


def test_a_callback_that_is_not_callable_is_refused(pipe):
    with pytest.raises(TypeError, match="callback must be callable"):
        pipe.text_to_image(PROMPTS, num_steps=2, callback="print")


def test_the_documented_trajectory_snippet_runs(pipe, tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from PIL import Image

    doc = Path(__file__).resolve().parents[2] / "docs" / "samplers.md"
    section = doc.read_text().split("\n## Watching a decode", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    scope = {"pipe": pipe}
    exec(compile(code, str(doc), "exec"), scope)
    assert len(scope["recorder"].states) == 8
    assert Image.open(tmp_path / "steps.png").size == scope["recorder"].grid(
        pipe, frames=6, labels=["a red circle"]).size


def test_partial_text_shows_each_masked_token_and_ends_as_the_caption(pipe):
    images = torch.rand(2, 3, pipe.image_size, pipe.image_size,
                        generator=torch.Generator().manual_seed(1))
    steps: list = []
    captions = pipe.caption(images, num_steps=6, callback=_record(steps))
    text, eos = pipe.space.sequence.text, pipe.space.eos_id
    for _, tokens, is_masked in steps:
        for row, shown in enumerate(pipe.partial_text(tokens, is_masked, placeholder="?")):
            ids, masked = tokens[row, text].tolist(), is_masked[row, text].tolist()
            end = next((i for i, (t, m) in enumerate(zip(ids, masked)) if not m and t == eos),
                       len(ids))
            assert shown.split().count("?") == sum(masked[:end])  # one mark per masked token
    assert pipe.partial_text(steps[-1][1], steps[-1][2]) == captions


def test_the_recorder_lists_each_rows_text_step_by_step(pipe):
    from unigen.trajectory import TrajectoryRecorder

    images = torch.rand(1, 3, pipe.image_size, pipe.image_size,
                        generator=torch.Generator().manual_seed(2))
    recorder = TrajectoryRecorder()
    answer = pipe.answer(images, "what color is the star?", num_steps=3, callback=recorder)
    (rows,) = recorder.texts(pipe)
    assert [r["step"] for r in rows] == list(range(1, len(recorder.states) + 1))
    assert rows[-1]["text"].startswith("what color is the star?")
    assert rows[-1]["text"].endswith(answer[0]) and "_" not in rows[-1]["text"]
