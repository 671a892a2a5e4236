"""Metrics fed from per-sample records (:data:`RECORD_METRICS`), and how a metric of each kind is
fed its records or images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from unigen.metrics import CAPTION, COMPOSITIONAL, DISTRIBUTION, TEXT_IMAGE, VQA
from unigen.metrics.feature_metric import DistributionMetric
from unigen.registry import Registry


RECORD_METRICS: Registry[type] = Registry("record metric")
RECORD = "record"  # kind of the metrics in RECORD_METRICS: update(records: list[dict])


class RecordMean:
    """Mean of one per-sample score a task stores in its records (``field``).  ``task`` names the
    one task whose records hold the field; ``None`` means every task's records do (e.g. the network
    calls), and the result is then reported per task, as ``<metric>/<task>``.  A subclass must set
    ``task`` (the default ``""`` is refused when a recipe lists the metric), so that forgetting it
    never turns a one-task score into one of every task."""

    kind = RECORD
    task: str | None = ""  # unset: refused by owner_task
    field: str = ""
    # set: the sum of ``field`` over the sum of this field (a micro average, records counting by
    # their size: objects found over objects); unset: the mean over records
    denominator: str = ""
    needs_scenes: bool = False
    needs_checks: tuple[str, ...] = ()  # costly per-sample checks that write ``field``
    higher_is_better = True

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def update(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self.total += float(r[self.field])
            self.count += float(r[self.denominator]) if self.denominator else 1

    def compute(self) -> Tensor:
        if not self.count:
            what = f"no {self.denominator} in the records scored" if self.denominator else \
                "compute() called before any update()"
            raise RuntimeError(f"{self.field}: {what}")
        return torch.tensor(self.total / self.count, dtype=torch.float64)


@RECORD_METRICS.register("caption_fact_precision")
class CaptionFactPrecision(RecordMean):
    """Fraction of a generated caption's facts true of the scene
    (:func:`unigen.data.checker.caption_fact_precision`; 0 for a caption outside the grammar)."""

    task, field, needs_scenes = "caption", "fact_precision", True


@RECORD_METRICS.register("caption_attribute_recall")
class CaptionAttributeRecall(RecordMean):
    """Fraction of the scene's attributes the caption states correctly
    (:func:`unigen.data.checker.caption_attribute_recall`)."""

    task, field, needs_scenes = "caption", "attribute_recall", True


@RECORD_METRICS.register("fill_accuracy")
class FillAccuracy(RecordMean):
    """Fraction of the caption words blanked by the ``fill`` task that the model filled in
    exactly, with the image as context (over all blanks: a micro average)."""

    task, field, denominator = "fill", "fill_correct", "blanks"


@RECORD_METRICS.register("empty_images")
class EmptyImages(RecordMean):
    """Fraction of generated images in which the shapes checker detects no object at all: the
    failure of decoding every position in parallel (a background token is the likeliest one almost
    everywhere, so committing many confident positions at once can leave no room for objects).
    Lower is better."""

    task, field, needs_checks = "t2i", "empty", ("compositional",)
    higher_is_better = False


@RECORD_METRICS.register("exact_accuracy")
class ExactAccuracy(RecordMean):
    """Fraction of generated images the shapes checker passes *and* that show nothing beyond
    what the prompt names (as many objects detected as named, unknown blobs included).  GenEval's
    verdict, like ``compositional_accuracy``'s, does not mind extra objects: an image showing every
    kind once passes every single-object prompt.  The shapes world's prompts describe whole
    scenes, so here an extra object is an error too."""

    task, field, needs_checks = "t2i", "exact", ("compositional",)


@RECORD_METRICS.register("unrequested_objects")
class UnrequestedObjects(RecordMean):
    """Fraction of generated images with more objects detected than the prompt names.  Lower is
    better."""

    task, field, needs_checks = "t2i", "unrequested", ("compositional",)
    higher_is_better = False


@RECORD_METRICS.register("model_calls")
class ModelCalls(RecordMean):
    """Mean network calls per sample (``decode``'s per-row count: what the sample costs decoded
    alone, so adaptive samplers such as confident decoding (Dimple, Yu et al. 2025) are credited
    for finishing easy samples early).  Lower is better; any task may list it."""

    task, field = None, "model_calls"
    higher_is_better = False


# -- tasks of further modalities (unigen.evaluate.segment_tasks): predicted codes against the
# sample's own item (Modality.scores, the "reference" check)
@RECORD_METRICS.register("code_accuracy")
class CodeAccuracy(RecordMean):
    """Share of a predicted modality item's codes equal to the true item's (e.g. layout slots
    of a parsed scene), per task that predicts a modality."""

    task, field, needs_checks = None, "code_accuracy", ("reference",)


@RECORD_METRICS.register("segment_exact_match")
class SegmentExactMatch(RecordMean):
    """Share of predicted modality items whose codes are all right (a whole layout)."""

    task, field, needs_checks = None, "exact_match", ("reference",)


@RECORD_METRICS.register("layout_cell_accuracy")
class LayoutCellAccuracy(RecordMean):
    """Scene parsing: share of grid cells read right (shape, color and size, or empty)."""

    task, field, needs_checks = "i2layout", "cell_accuracy", ("reference",)


@RECORD_METRICS.register("layout_object_recall")
class LayoutObjectRecall(RecordMean):
    """Scene parsing: share of the scenes' objects found in their cell with every attribute."""

    task, field, denominator, needs_checks = "i2layout", "objects_found", "objects", ("reference",)


# fields every task's records hold (``_base_record``): record metrics with ``task = None`` read
# these or a task's own ``TaskSpec.record_fields``
BASE_RECORD_FIELDS = ("model_calls",)


def owner_task(metric: str) -> str | None:
    """The task whose records feed record metric ``metric`` (``None``: any task's); raises if its
    class never set ``task``."""
    cls = RECORD_METRICS.get(metric)
    task = cls.task
    if task is not None and (not isinstance(task, str) or not task):
        raise ValueError(f"record metric {metric!r} ({cls.__qualname__}) sets no task: set its "
                         f"class attribute 'task' to the task whose records hold {cls.field!r}, "
                         f"or to None if every task's records do; got {task!r}")
    return task


def result_name(metric: str, task: str) -> str:
    """The key of ``metric``'s value in the results: metrics any task may list carry the task
    (``model_calls/vqa``), and so do those of a further modality's task other than its own record
    metrics (``compositional_accuracy/t2layout`` beside t2i's ``compositional_accuracy``)."""
    from unigen.evaluate.tasks import EVAL_TASKS

    if metric in RECORD_METRICS:
        return f"{metric}/{task}" if owner_task(metric) is None else metric
    return metric if task in EVAL_TASKS else f"{metric}/{task}"


@dataclass(frozen=True)
class _Verdict:
    correct: bool
    category: str


def _feed_records(metric: Any, kind: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Call ``update`` of a record-fed metric with what its kind expects."""
    if kind == COMPOSITIONAL:
        metric.update([_Verdict(r["correct"], r["category"]) for r in records])
    elif kind == CAPTION:
        metric.update([r["caption"] for r in records], [r["references"] for r in records])
    elif kind == VQA:
        metric.update([r["prediction"] for r in records], [r["answer"] for r in records])
    elif kind == RECORD:
        metric.update(records)
    else:
        raise ValueError(f"metric kind {kind!r} is not fed from records")


def _feed_images(metric: Any, kind: str, real: Tensor, generated: Tensor,
                 prompts: Sequence[str]) -> None:
    """Call ``update`` of an image-fed metric (state kept in the metric, checkpointed)."""
    if kind == DISTRIBUTION:
        metric.update(real, real=True)
        metric.update(generated, real=False)
    elif kind == TEXT_IMAGE:
        metric.update(generated, list(prompts))
    else:
        raise ValueError(f"metric kind {kind!r} is not fed from images")


def _feed_image_metrics(metrics: Mapping[str, tuple[str, Any]], real: Tensor, generated: Tensor,
                        prompts: Sequence[str]) -> None:
    """Feed a batch to every image-fed metric (``name -> (kind, metric)``). Distribution metrics
    that share one feature extractor (FID, KID and the Inception Score on one Inception) get the
    features of a single extractor run per image set, not one run each."""
    groups: dict[int, list[DistributionMetric]] = {}
    for kind, metric in metrics.values():
        if (kind == DISTRIBUTION and isinstance(metric, DistributionMetric)
                and metric.extractor is not None):
            groups.setdefault(id(metric.extractor), []).append(metric)
        else:
            _feed_images(metric, kind, real, generated, prompts)
    for group in groups.values():
        extractor = group[0].extractor
        for images, is_real in ((real, True), (generated, False)):
            users = [m for m in group if m.uses_real or not is_real]
            if users:
                output = extractor(images)
                for metric in users:
                    metric.update_extracted(output, is_real)
