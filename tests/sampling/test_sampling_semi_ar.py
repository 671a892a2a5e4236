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


def masked_counts_per_step(sampler, tokens, is_masked, num_steps, net=None) -> list[list[int]]:
    history = []
    decode(net or DummyNet(), tokens, is_masked, sampler, num_steps=num_steps,
           generator=generators(list(range(len(tokens)))),
           callback=lambda i, out: history.append(out.is_masked.sum(-1).tolist()))
    return history


def test_one_block_spends_the_whole_budget_like_its_inner_sampler():
    # LLaDA: a block longer than the answer is the inner sampler over the whole budget, not a
    # block_length-step schedule cut off by a last step that reveals most of the text
    from unigen.sampling import MaskGITSampler

    tokens, is_masked = answer_batch(2)
    semi = masked_counts_per_step(SemiARSampler(block_length=32, mask_id=MASK), tokens, is_masked, 8)
    inner = masked_counts_per_step(MaskGITSampler(mask_id=MASK), tokens, is_masked, 8)
    assert semi == inner
    assert max(a - b for a, b in zip([20] + [c[0] for c in semi], [c[0] for c in semi])) <= 5


def test_blocks_share_the_step_budget_each_finished_by_its_share():
    # 20 positions, blocks of 5: 4 blocks share 8 steps, block k done by the end of step 2k + 1
    tokens, is_masked = answer_batch(2)
    history = []
    sampler = SemiARSampler(block_length=5, mask_id=MASK)
    result = decode(DummyNet(), tokens, is_masked, sampler, num_steps=8, generator=generators([0, 1]),
                    callback=lambda i, out: history.append(out.is_masked.clone()))
    assert result.steps_taken == 8
    blocks = torch.tensor([block_of(p, 5) if p >= PROMPT else -1 for p in range(SEQ)])
    for step, masked in enumerate(history):
        done = (step + 1) // 2
        assert not masked[:, (blocks >= 0) & (blocks < done)].any(), step
        assert masked[:, blocks > done].all(), step  # later blocks wait their turn
        revealed = (history[step - 1] if step else is_masked) & ~masked
        assert (revealed.sum(-1) <= 5).all()  # never a pile-up on the last step
    # 3 blocks in 8 steps: shares of 3, 3 and 2 steps (ceil((k + 1) * 8 / 3) - 1 = 2, 5, 7)
    tokens, is_masked = answer_batch(1)
    is_masked[0, PROMPT + 15:] = False
    tokens[0, PROMPT + 15:] = 7
    counts = masked_counts_per_step(SemiARSampler(block_length=5, mask_id=MASK), tokens, is_masked, 8)
    assert [counts[s][0] for s in (2, 5, 7)] == [10, 5, 0]
    assert all(c[0] > t for c, t in zip(counts, [10, 10, 5, 5, 5, 0, 0]))


def test_fewer_steps_than_blocks_decodes_blocks_together():
    tokens, is_masked = answer_batch(1)  # 4 blocks of 5 in 2 steps: blocks 0-1, then 2-3
    counts = masked_counts_per_step(SemiARSampler(block_length=5, mask_id=MASK), tokens, is_masked, 2)
    assert counts == [[10], [0]]
