"""Data: the procedural shapes world (default data set), its pixel checker and data module."""

from unigen.data.checker import (
    CheckResult, Detection, caption_attribute_recall, caption_fact_precision, caption_scores, check,
    detect, parse_caption, prompt_category,
)
from unigen.data.shapes import (
    COLORS, HELDOUT_COLOR_SHAPE, HELDOUT_SHAPE_CELL, SHAPES, SPLITS, ObjectSpec, Relation, Scene,
    SceneQuery, ShapeObject, ShapesDataset, ShapesWorld, caption, captions, corpus, description,
    qa_pairs, render, sample_scene, vocabulary_words,
)

__all__ = [
    "COLORS", "HELDOUT_COLOR_SHAPE", "HELDOUT_SHAPE_CELL", "SHAPES", "SPLITS", "CheckResult",
    "Detection", "EpochShuffleSampler", "ObjectSpec", "Relation", "Scene", "SceneQuery",
    "ShapeObject", "ShapesDataModule", "ShapesDataset", "ShapesWorld", "caption",
    "caption_attribute_recall", "caption_fact_precision", "caption_scores", "captions", "check",
    "corpus", "description", "detect", "parse_caption", "prompt_category", "qa_pairs", "render",
    "sample_scene", "vocabulary_words",
]


def __getattr__(name: str):
    # the data module and the sampler pull in Lightning; import them only when asked for
    if name == "EpochShuffleSampler":
        from unigen.data.resumable import EpochShuffleSampler

        return EpochShuffleSampler
    if name == "ShapesDataModule":
        from unigen.data.shapes_datamodule import ShapesDataModule

        return ShapesDataModule
    raise AttributeError(f"module 'unigen.data' has no attribute {name!r}")
