"""CIDEr-D, BLEU-4 and VQA exact match on hand-computed cases."""

import math

import pytest

from unigen.metrics import BLEU4, CIDErD, VQAExactMatch, cider_d_scores, exact_matches
from unigen.metrics import normalize_answer, normalize_caption

PENALTY_1 = math.exp(-1 / 72)  # Gaussian length penalty for a 1-word length difference, sigma 6


def test_cider_two_word_captions_score_five():
    # 2 images, every n-gram in one image's references: idf = log 2 for all; orders 1 and 2 have
    # cosine 1, orders 3 and 4 have no n-grams (0): 10 * (1 + 1 + 0 + 0) / 4
    scores = cider_d_scores(["a b", "c d"], [["a b"], ["c d"]])
    assert scores == pytest.approx([5.0, 5.0])


def test_cider_identical_long_captions_reach_the_maximum_ten():
    refs = [["a red circle on the left"], ["two blue squares at the top"],
            ["a green star in the center"]]
    assert cider_d_scores([r[0] for r in refs], refs) == pytest.approx([10.0, 10.0, 10.0])
    # several identical references: averaged over references, still 10
    assert cider_d_scores(["x y z w", "p q r s"], [["x y z w"] * 3, ["p q r s"]]) == pytest.approx([10.0, 10.0])


def test_cider_single_image_is_zero():
    # log(1 document) - log(df = 1) = 0: every TF-IDF weight vanishes
    assert cider_d_scores(["a red circle left"], [["a red circle left"]]) == [0.0]


def test_cider_partial_match_with_length_penalty():
    # candidate 1 is the reference's first 3 words; all weights equal w = log 2 (df 1, 2 images)
    # n=1: 3 w^2 / (sqrt3 w * 2 w); n=2: 2 w^2 / (sqrt2 w * sqrt3 w); n=3: w^2 / (w * sqrt2 w); n=4: 0
    s1 = 10 * PENALTY_1 * (math.sqrt(3) / 2 + 2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4
    scores = cider_d_scores(["the cat sat", "a dog ran off"],
                            [["the cat sat down"], ["a dog ran off"]])
    assert scores == pytest.approx([s1, 10.0], rel=1e-12)
    metric = CIDErD()
    metric.update(["the cat sat"], [["the cat sat down"]])
    metric.update(["A dog ran off!"], [["a dog ran off"]])  # case and punctuation are normalised
    assert metric.compute().item() == pytest.approx((s1 + 10.0) / 2, rel=1e-12)


def test_cider_clips_repeated_ngrams_and_weights_unseen_ones():
    # unigrams: cand x:2w y:w, ref x:w y:w -> clipped dot min(2w,w)w + w.w = 2w^2 (3w^2 unclipped),
    # norms sqrt5 w, sqrt2 w; bigram "x x" is unseen (df 0 -> idf log 2) so it only adds to the
    # candidate norm: 1 / sqrt2; trigram: reference has none -> 0
    expected = 10 * PENALTY_1 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
    assert cider_d_scores(["x x y", "z w"], [["x y"], ["z w"]])[0] == pytest.approx(expected, rel=1e-12)


def test_cider_input_errors():
    with pytest.raises(ValueError, match="pair up"):
        cider_d_scores(["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d_scores(["a b"], ["a b"])
    with pytest.raises(RuntimeError, match="before any update"):
        CIDErD().compute()


def test_bleu4_known_value_and_normalisation():
    # precisions 7/8, 5/7, 4/6, 3/5 (product 1/4), equal lengths: BLEU = (1/4)^(1/4) = 1/sqrt2
    bleu = BLEU4()
    bleu.update(["A red circle left of a blue square."], [["a red circle left of a green square"]])
    assert bleu.compute().item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    perfect = BLEU4()
    perfect.update(["The Red circle, left of a square"], [["the red circle left of a square"]])
    assert perfect.compute().item() == pytest.approx(1.0)


def test_bleu4_brevity_takes_the_shorter_of_two_equally_close_references_in_any_order():
    # a 4-word candidate between references of 3 and 5 words: Papineni et al. take the 3-word one
    # (no brevity penalty; every n-gram of the candidate is in the 5-word reference): BLEU 1
    for refs in (["a red circle", "a red circle and square"], ["a red circle and square", "a red circle"]):
        bleu = BLEU4()
        bleu.update(["a red circle and"], [refs])
        assert bleu.compute().item() == pytest.approx(1.0), refs


def test_caption_and_answer_normalisation():
    assert normalize_caption("A red circle, left of THE square.") == "a red circle left of the square"
    assert normalize_answer("The Two.") == "2"
    assert normalize_answer("an orange  star!") == "orange star"


def test_vqa_exact_match():
    hits = exact_matches(["Two", "red", "a circle", "yes"], ["2", "blue", ["square", "circle"], "no"])
    assert hits == [True, False, True, False]
    metric = VQAExactMatch()
    metric.update(["Two", "red"], ["2", "blue"])
    metric.update(["the yes"], ["yes"])
    assert metric.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="pair up"):
        metric.update(["a"], [])
    with pytest.raises(ValueError, match="empty list"):
        exact_matches(["a"], [[]])
    with pytest.raises(TypeError, match="must be a str"):
        exact_matches([3], ["3"])


def test_caption_exact_match_keeps_articles_and_word_order():
    from unigen.metrics import METRICS, CaptionExactMatch

    assert METRICS.get("caption_exact_match") is CaptionExactMatch
    metric = CaptionExactMatch()
    refs = ["a t-shirt", "a photo of a t-shirt"]
    # punctuation and case go (caption normalisation); articles and order count, unlike VQA's
    metric.update(["A photo of a T-shirt.", "photo of t-shirt", "a t-shirt photo of a"], [refs] * 3)
    metric.update(["an pair of trousers pair of", "a pair of trousers"], [["a pair of trousers"]] * 2)
    assert metric.compute().item() == pytest.approx(2 / 5)
    with pytest.raises(RuntimeError, match="caption_exact_match: compute"):
        CaptionExactMatch().compute()


def test_a_single_string_where_a_list_belongs_is_refused():
    """``update("yes", "yex")`` once scored 0.667: the strings paired up letter by letter."""
    from unigen.metrics import METRICS

    for name, args in (("vqa_exact_match", ("yes", "yex")),
                       ("caption_exact_match", ("a red circle", [["a red circle"]])),
                       ("bleu4", ("a red circle", [["a red circle"]]))):
        with pytest.raises(ValueError, match="must be a list with one entry per sample, got the single string"):
            METRICS.get(name)().update(*args)


def test_ssim_names_the_smallest_image_its_window_takes():
    """Below 6x6 the 11x11 window's reflect padding failed inside torch with a padding message."""
    import torch

    from unigen.metrics.reconstruction import SSIM

    metric = SSIM()
    with pytest.raises(ValueError, match="SSIM's 11x11 window needs images of at least 6x6 pixels, got 5x8"):
        metric.update(torch.rand(1, 3, 5, 8), torch.rand(1, 3, 5, 8))
    metric.update(torch.rand(1, 3, 6, 6), torch.rand(1, 3, 6, 6))
    assert torch.isfinite(metric.compute())
