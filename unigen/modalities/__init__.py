"""Modalities beyond text and image (:mod:`unigen.modalities.base`); importing the package
registers the built-in ones."""

from unigen.modalities.base import (MODALITIES, Modality, build_modalities, modality_spec,
                                    register_modality)
from unigen.modalities.layout import ShapesLayout, layout_scores


def segment_tasks() -> dict[str, type]:
    """The registered tasks stated by their segments
    (:class:`~unigen.diffusion.tasks.SegmentTask`: the built-in modalities' tasks, and a plugin's
    once its module is imported), by name in registration order."""
    from unigen.diffusion.tasks import TASKS, SegmentTask

    tasks = {name: TASKS.get(name) for name in TASKS.names()}
    return {name: cls for name, cls in tasks.items()
            if isinstance(cls, type) and issubclass(cls, SegmentTask)}


__all__ = ["MODALITIES", "Modality", "ShapesLayout", "build_modalities", "layout_scores",
           "modality_spec", "register_modality", "segment_tasks"]
