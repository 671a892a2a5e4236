"""Semi-autoregressive block decoding: left-to-right blocks, per-row progress, EOS and padding."""

from __future__ import annotations

import pytest
import torch
from sampling_testkit import MASK, SEQ, DummyNet, generators

from unigen.sampling import ConfidentSampler, SemiARSampler, decode

EOS, PAD = 3, 4
PROMPT = 4  # given prompt positions; the answer region is SEQ - PROMPT = 20 positions


def answer_batch(batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(5, MASK, (batch_size, SEQ), generator=torch.Generator().manual_seed(1))
    is_masked = torch.zeros_like(tokens, dtype=torch.bool)
    is_masked[:, PROMPT:] = True
    return tokens.masked_fill(is_masked, MASK), is_masked


class EosAt:
    """Dummy network that never predicts EOS or PAD, except EOS (strongly) at position ``eos_position``."""

    def __init__(self, eos_position: int) -> None:
        self.net = DummyNet(forbidden=(EOS, PAD))
        self.eos_position = eos_position

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.net(tokens).clone()
        logits[:, self.eos_position, EOS] = 100.0
        return logits


def block_of(position: int, block_length: int) -> int:
    return (position - PROMPT) // block_length


def test_blocks_are_decoded_left_to_right():
    tokens, is_masked = answer_batch(3)
    history = []
    sampler = SemiARSampler(block_length=5, steps_per_block=2, mask_id=MASK)
    result = decode(DummyNet(), tokens, is_masked, sampler, num_steps=8, generator=generators([0, 1, 2]),
                    callback=lambda i, out: history.append(out.is_masked.clone()))
    assert result.steps_taken == 8  # 4 blocks x 2 steps
    for step, masked in enumerate(history):
        done_blocks = (step + 1) // 2
        blocks = torch.tensor([block_of(p, 5) if p >= PROMPT else -1 for p in range(SEQ)])
        assert not masked[:, (blocks >= 0) & (blocks < done_blocks)].any()  # earlier blocks finished
        assert masked[:, blocks > done_blocks].all()  # later blocks untouched


def test_eos_pads_the_rest_and_stops_early():
    eos_position = PROMPT + 7  # in the second block of 5
    tokens, is_masked = answer_batch(2)
    sampler = SemiARSampler(block_length=5, steps_per_block=3, eos_id=EOS, pad_id=PAD, mask_id=MASK)
    result = decode(EosAt(eos_position), tokens, is_masked, sampler, num_steps=12, generator=generators([0, 1]))
    out = result.tokens
    assert (out[:, eos_position] == EOS).all()
    assert (out[:, eos_position + 1 :] == PAD).all()
    assert not torch.isin(out[:, PROMPT:eos_position], torch.tensor([EOS, PAD, MASK])).any()
    assert result.steps_taken <= 2 * 3 < 12  # two blocks, then the row is finished


def test_eos_without_pad_fills_with_eos():
    tokens, is_masked = answer_batch(1)
    sampler = SemiARSampler(block_length=4, steps_per_block=2, eos_id=EOS, mask_id=MASK)
    result = decode(EosAt(PROMPT + 1), tokens, is_masked, sampler, num_steps=10, generator=generators([0]))
    assert (result.tokens[0, PROMPT + 1 :] == EOS).all()


def test_adaptive_inner_sampler_moves_to_the_next_block_early():
    tokens, is_masked = answer_batch(2)
    sampler = SemiARSampler(block_length=5, steps_per_block=5, inner=ConfidentSampler(threshold=0.9), mask_id=MASK)
    result = decode(DummyNet(sharpness=30.0), tokens, is_masked, sampler, num_steps=20)
    assert result.steps_taken < 20 and not (result.tokens == MASK).any()


def test_step_budget_reveals_every_block_on_the_last_step():
    tokens, is_masked = answer_batch(2)
    sampler = SemiARSampler(block_length=5, steps_per_block=4, mask_id=MASK)
    result = decode(DummyNet(), tokens, is_masked, sampler, num_steps=3, generator=generators([0, 1]))
    assert result.steps_taken == 3 and not (result.tokens == MASK).any()


def test_rows_progress_independently():
    # Row 1 has a shorter answer region: it has fewer blocks and finishes first.
    tokens, is_masked = answer_batch(2)
    is_masked[1, -10:] = False
    tokens[1, -10:] = 7
    finished_at = {}

    def record(step, out):
        for row in range(2):
            if not out.is_masked[row].any():
                finished_at.setdefault(row, step)

    sampler = SemiARSampler(block_length=5, steps_per_block=2, mask_id=MASK)
    decode(DummyNet(), tokens, is_masked, sampler, num_steps=8, generator=generators([0, 1]), callback=record)
    assert finished_at == {1: 3, 0: 7}


def test_semi_ar_argument_errors():
    with pytest.raises(ValueError, match="pad_id needs eos_id"):
        SemiARSampler(pad_id=0)
    with pytest.raises(ValueError, match="inner_kwargs only applies"):
        SemiARSampler(inner=ConfidentSampler(), inner_kwargs={"threshold": 0.5})
    with pytest.raises(ValueError, match="cannot itself be semi_ar"):
        SemiARSampler(inner="semi_ar")
    tokens, is_masked = answer_batch(1)
    sampler = SemiARSampler(mask_id=MASK)
    sampler.set_timesteps(4)
    with pytest.raises(RuntimeError, match="must start at step_index 0"):
        sampler.step(DummyNet()(tokens), tokens, is_masked, 1, generators([0]), editable=is_masked)
