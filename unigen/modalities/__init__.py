"""Modalities beyond text and image (:mod:`unigen.modalities.base`); importing the package
registers the built-in ones."""

from unigen.modalities.base import (MODALITIES, Modality, build_modalities, modality_spec,
                                    register_modality)
from unigen.modalities.layout import ShapesLayout, layout_scores

__all__ = ["MODALITIES", "Modality", "ShapesLayout", "build_modalities", "layout_scores",
           "modality_spec", "register_modality"]
