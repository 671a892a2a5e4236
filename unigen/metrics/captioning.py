"""Captioning metrics: BLEU-4 (Papineni et al., 2002) and CIDEr-D (Vedantam et al., 2015).

Both see captions through :func:`caption_tokens` (lowercase, punctuation dropped), as
coco-caption's PTB tokenizer does. CIDEr-D follows the coco-caption ``ciderD_scorer``: TF-IDF
vectors over 1..4-grams with document frequencies counted over the references of the evaluated
set, candidate weights clipped at the reference weight, a Gaussian length penalty (sigma 6),
averaged over references and n-gram orders, times 10.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torchmetrics.text import BLEUScore

from unigen.metrics.base import CAPTION, HostMetric, check_same_length, register_metric
from unigen.metrics.text_normalize import caption_tokens, normalize_caption
from unigen.metrics.vqa import ExactMatchRate

Ngram = tuple[str, ...]


def _check_references(references: Sequence[Sequence[str]]) -> None:
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not len(refs):
            raise ValueError(f"references[{i}] must be a non-empty list of captions, got {refs!r}")


def ngram_counts(tokens: Sequence[str], max_n: int = 4) -> Counter[Ngram]:
    """Counts of every 1..max_n-gram of ``tokens``."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, max_n + 1)
                   for i in range(len(tokens) - k + 1))


@dataclass
class _TfIdf:
    weights: list[dict[Ngram, float]]  # one dict per n-gram order
    norms: list[float]
    length: int  # word count; only differences enter the length penalty


def _tfidf(tokens: Sequence[str], document_frequency: Counter[Ngram], log_num_docs: float,
           max_n: int) -> _TfIdf:
    weights: list[dict[Ngram, float]] = [{} for _ in range(max_n)]
    for gram, tf in ngram_counts(tokens, max_n).items():
        # an n-gram no reference has gets df 1, as in coco-caption
        idf = log_num_docs - math.log(max(1.0, document_frequency[gram]))
        weights[len(gram) - 1][gram] = tf * idf
    norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
    return _TfIdf(weights, norms, len(tokens))


def _similarity(cand: _TfIdf, ref: _TfIdf, sigma: float) -> list[float]:
    penalty = math.exp(-((cand.length - ref.length) ** 2) / (2 * sigma ** 2))
    out = []
    for n, (cw, rw) in enumerate(zip(cand.weights, ref.weights)):
        # clipping the candidate weight stops repeated n-grams from gaming the score (the "-D")
        dot = sum(min(w, rw.get(g, 0.0)) * rw.get(g, 0.0) for g, w in cw.items())
        denom = cand.norms[n] * ref.norms[n]
        out.append(penalty * (dot / denom if denom else 0.0))
    return out


def cider_d_scores(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4,
                   sigma: float = 6.0) -> list[float]:
    """Per-candidate CIDEr-D; document frequencies come from these ``references`` (corpus mode).

    A candidate equal to each of its references scores 10 when its n-grams are not in every image's
    references and it has at least ``max_n`` words (a shorter one has no n-grams of the higher
    orders: 10 k / max_n for k words); a lone image always scores 0 (every idf is log(1) - log(1))."""
    check_same_length(candidates, references, "candidates", "reference lists")
    _check_references(references)
    cand_tokens = [caption_tokens(c) for c in candidates]
    ref_tokens = [[caption_tokens(r) for r in refs] for refs in references]
    document_frequency: Counter[Ngram] = Counter()
    for refs in ref_tokens:
        document_frequency.update({g for r in refs for g in ngram_counts(r, max_n)})
    log_num_docs = math.log(max(1, len(references)))
    scores = []
    for cand, refs in zip(cand_tokens, ref_tokens):
        cvec = _tfidf(cand, document_frequency, log_num_docs, max_n)
        total = [0.0] * max_n
        for ref in refs:
            sims = _similarity(cvec, _tfidf(ref, document_frequency, log_num_docs, max_n), sigma)
            total = [t + s for t, s in zip(total, sims)]
        scores.append(10.0 * sum(total) / max_n / len(refs))
    return scores


@register_metric("cider_d", CAPTION)
class CIDErD(HostMetric):
    """Corpus CIDEr-D: the mean of :func:`cider_d_scores` over everything seen since ``reset``."""

    def __init__(self, max_n: int = 4, sigma: float = 6.0) -> None:
        self.max_n, self.sigma = max_n, sigma
        super().__init__()

    def reset(self) -> None:
        self.candidates: list[str] = []
        self.references: list[list[str]] = []

    def update(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        check_same_length(candidates, references, "candidates", "reference lists")
        _check_references(references)
        self.candidates.extend(candidates)
        self.references.extend([list(r) for r in references])

    def compute(self) -> Tensor:
        if not self.candidates:
            raise RuntimeError("cider_d: compute() called before any update()")
        scores = cider_d_scores(self.candidates, self.references, self.max_n, self.sigma)
        return torch.tensor(sum(scores) / len(scores), dtype=torch.float64)


@register_metric("bleu4", CAPTION)
class BLEU4(BLEUScore):
    """Corpus BLEU-4 (torchmetrics ``BLEUScore``) on normalised captions, in [0, 1]."""

    def __init__(self, smooth: bool = False, **kwargs) -> None:
        super().__init__(n_gram=4, smooth=smooth, **kwargs)

    def update(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        check_same_length(candidates, references, "candidates", "reference lists")
        _check_references(references)
        # torchmetrics takes the first reference of the closest length for the brevity penalty;
        # Papineni et al. (and NLTK, coco-caption) take the shortest of the closest: shortest first
        super().update([normalize_caption(c) for c in candidates],
                       [sorted((normalize_caption(r) for r in refs), key=lambda r: len(r.split()))
                        for refs in references])


@register_metric("caption_exact_match", CAPTION)
class CaptionExactMatch(ExactMatchRate):
    """Fraction of captions equal to one of their references (after caption normalisation).

    Meaningful where the captions come from a few templates, as Fashion-MNIST's "a photo of a
    sneaker": there a caption is either one of its class's templates (well formed and right) or
    not (a wrong class, or garbled by parallel decoding: "a pair of trousers pair of").  On
    free-form captions it is near 0; BLEU-4 and CIDEr-D are the scores there."""

    normalize = staticmethod(normalize_caption)
