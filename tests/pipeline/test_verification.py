"""Self-verified text to image: the caption ELBO and best-of-K selection in the pipeline."""

import pytest
import torch

from tests.training.test_unified_module import batch_of, make, overfit
from unigen.pipeline import UnifiedPipeline
from unigen.verification import best_of, caption_elbo, caption_elbos, contrastive_caption_score

PROMPTS = ["a red circle", "two blue squares", "a green star"]


def gens(seeds):
    return UnifiedPipeline.generators(len(seeds), list(seeds))


def random_codes(pipe, n, seed=0):
    grid = pipe.space.sequence.grid
    return torch.randint(0, pipe.image_tokenizer.codebook_size, (n, *grid),
                         generator=torch.Generator().manual_seed(seed))


def test_caption_elbo_is_a_finite_bound_per_row_and_batch_invariant(pipe):
    codes = random_codes(pipe, 3)
    scores = caption_elbo(pipe.transformer, pipe.space, codes, PROMPTS, gens([4, 5, 6]), num_masks=3)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores < 0).all()
    again = caption_elbo(pipe.transformer, pipe.space, codes, PROMPTS, gens([4, 5, 6]), num_masks=3)
    assert torch.equal(scores, again)
    alone = caption_elbo(pipe.transformer, pipe.space, codes[1:2], PROMPTS[1:2], gens([5]), num_masks=3)
    assert torch.allclose(alone, scores[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="one of each per row"):
        caption_elbo(pipe.transformer, pipe.space, codes, PROMPTS[:2], gens([4, 5]))
    with pytest.raises(ValueError, match="num_masks must be >= 1"):
        caption_elbo(pipe.transformer, pipe.space, codes, PROMPTS, gens([4, 5, 6]), num_masks=0)


def test_caption_elbo_masks_the_stratified_share_of_the_text_and_equals_the_uncached_model(
        pipe, monkeypatch):
    net, space = pipe.transformer, pipe.space
    codes = random_codes(pipe, 2)
    cached = caption_elbo(net, space, codes, PROMPTS[:2], gens([1, 2]), num_masks=4)
    text = space.sequence.text
    n = text.stop - text.start
    seen = []

    def uncached(inputs, cache, positions, vocab_limit):
        seen.append((inputs == space.mask_id).clone())
        prefix = torch.zeros_like(inputs, dtype=torch.bool)
        prefix[:, cache.cached_idx] = True
        return net(inputs, prefix, positions=positions, vocab_limit=vocab_limit)

    monkeypatch.setattr(net, "forward_cached", uncached)
    full = caption_elbo(net, space, codes, PROMPTS[:2], gens([1, 2]), num_masks=4)
    assert torch.allclose(cached, full, atol=1e-5)
    for m, hidden in enumerate(seen):
        assert not hidden[:, :text.start].any() and not hidden[:, text.stop:].any()  # text only
        assert hidden[:, text].sum(1).tolist() == [round((m + 0.5) / 4 * n)] * 2


def test_caption_elbo_prefers_the_image_a_caption_was_trained_on(tokenizer_dirs):
    """A captioner overfit on 8 scenes scores each caption higher on its own image than on the
    others: the reading the best-of-K choice relies on."""
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"caption": 1.0})
    batch = batch_of()
    overfit(module, batch, 300)
    module.net.eval()
    codes = module.image_tokenizer.encode(batch["image"])
    captions = batch["caption"]
    own = caption_elbo(module.net, module.space, codes, captions, gens(range(8)))
    others = caption_elbo(module.net, module.space, codes.roll(1, 0), captions, gens(range(8)))
    assert (own > others + 5.0).all(), (own, others)  # nats: the image decides the caption
    contrast = [list(captions[k:] + captions[:k]) for k in (1, 2, 3)]  # other scenes' captions
    share = contrastive_caption_score(module.net, module.space, codes, captions, contrast,
                                      gens(range(8)))
    assert (share > -0.1).all()  # nearly all of the softmax: the image reads as its own caption


def test_several_caption_sets_share_one_image_encoding_and_the_masks(pipe, monkeypatch):
    net, space = pipe.transformer, pipe.space
    codes = random_codes(pipe, 2)
    sets = [PROMPTS[:2], PROMPTS[1:], ["a red circle", "a red circle"]]
    prefills = []
    original = net.prefill
    monkeypatch.setattr(net, "prefill", lambda *a: prefills.append(1) or original(*a))
    together = caption_elbos(net, space, codes, sets, gens([1, 2]), num_masks=2)
    assert together.shape == (3, 2) and len(prefills) == 1
    apart = torch.stack([caption_elbo(net, space, codes, c, gens([1, 2]), num_masks=2) for c in sets])
    assert torch.allclose(together, apart, atol=1e-5)


def test_contrastive_score_is_the_captions_share_among_the_contrast_captions(pipe):
    net, space = pipe.transformer, pipe.space
    codes = random_codes(pipe, 3)
    same = contrastive_caption_score(net, space, codes, PROMPTS, [PROMPTS] * 3, gens([1, 2, 3]), 2)
    assert torch.allclose(same, torch.full((3,), -torch.log(torch.tensor(4.0)).item()), atol=1e-5)
    contrast = [["a blue star"] * 3, ["three green squares"] * 3]
    score = contrastive_caption_score(net, space, codes, PROMPTS, contrast, gens([1, 2, 3]), 2)
    elbos = caption_elbos(net, space, codes, [PROMPTS, *contrast], gens([1, 2, 3]), 2)
    assert torch.allclose(score.exp(), elbos.softmax(dim=0)[0], atol=1e-5) and (score < 0).all()


def test_best_of_takes_the_highest_score_and_the_first_on_ties():
    scores = torch.tensor([[0.0, 2.0, 1.0], [1.0, 2.0, 0.5], [1.0, 0.0, 1.5]])
    assert best_of(scores).tolist() == [1, 0, 2]


def test_candidates_keep_the_best_scored_draw_and_count_every_call(pipe, monkeypatch):
    seeds = [3, 8, 1]
    # the candidates a best-of-3 call draws: three plain calls continuing the same generators
    streams = gens(seeds)
    drawn = [pipe.text_to_image(PROMPTS, num_steps=4, generator=streams, output="codes")
             for _ in range(3)]
    favourite = torch.tensor([1, 2, 0])  # the candidate each prompt's fake score prefers
    calls = iter(range(3))

    def fake_scores(net, space, codes, captions, generators, num_masks):
        j = next(calls)
        return (favourite == j).float()

    monkeypatch.setattr("unigen.pipeline.caption_elbo", fake_scores)
    codes, counted = pipe.text_to_image(PROMPTS, num_steps=4, seed=seeds, output="codes",
                                        candidates=3, verify_masks=2, return_calls=True)
    for i, j in enumerate(favourite.tolist()):
        assert torch.equal(codes[i], drawn[j][i])
    assert counted == [3 * 4 + 3 * (1 + 2)] * 3
    with pytest.raises(ValueError, match="candidates must be >= 1"):
        pipe.text_to_image(PROMPTS, num_steps=4, candidates=0)


def test_a_single_candidate_is_the_plain_call_and_best_of_is_batch_invariant(pipe):
    plain = pipe.text_to_image(PROMPTS, num_steps=4, seed=[3, 8, 1], output="codes")
    assert torch.equal(pipe.text_to_image(PROMPTS, num_steps=4, seed=[3, 8, 1], output="codes",
                                          candidates=1), plain)
    batch = pipe.text_to_image(PROMPTS, num_steps=4, seed=[3, 8, 1], output="codes", candidates=2)
    alone = pipe.text_to_image(PROMPTS[1:2], num_steps=4, seed=[8], output="codes", candidates=2)
    assert torch.equal(alone[0], batch[1])


def test_caption_elbo_reads_a_model_trained_without_prefix_attention_with_full_attention(
        tokenizer_dirs, monkeypatch):
    """The verifier scores with the network the model was trained as: without prefix attention
    the image attends to the caption, so a prefix-cached reading would score another model."""
    torch.manual_seed(0)
    module = make(tokenizer_dirs, tasks={"caption": 1.0}, prefix_attention=False)
    net, space = module.net.eval(), module.space
    codes = torch.randint(0, 125, (2, *space.sequence.grid), generator=torch.Generator().manual_seed(1))
    scores = caption_elbo(net, space, codes, PROMPTS[:2], gens([1, 2]), num_masks=3)
    calls = []

    def full(inputs, prefix, positions=None, vocab_limit=None):
        calls.append(bool(prefix.any()))
        return type(net).forward(net, inputs, None, positions=positions, vocab_limit=vocab_limit)

    monkeypatch.setattr(net, "forward", full)
    expected = caption_elbo(net, space, codes, PROMPTS[:2], gens([1, 2]), num_masks=3)
    assert calls == [False] * 3  # every mask read through the full-attention forward
    torch.testing.assert_close(scores, expected)
    net.prefix_attention = True  # the same weights read with prefix attention score otherwise
    assert not torch.allclose(caption_elbo(net, space, codes, PROMPTS[:2], gens([1, 2]), num_masks=3),
                              scores, atol=1e-4)
