"""Offline evaluation: every metric a recipe can name (``metrics: [fid, kid, clip_score, ...]``).

Importing this package registers all metrics in :data:`METRICS` and all feature extractors in
:data:`FEATURE_EXTRACTORS`; nothing downloads weights.
"""

from unigen.metrics.base import (CAPTION, COMPOSITIONAL, DISTRIBUTION, KINDS, METRICS,
                                 RECONSTRUCTION, TEXT_IMAGE, VQA, HostMetric, build_metric,
                                 build_metrics, register_metric)
from unigen.metrics.captioning import BLEU4, CaptionExactMatch, CIDErD, cider_d_scores
from unigen.metrics.class_accuracy import ClassAccuracy, prompt_class
from unigen.metrics.clip_score import CLIPScore, ClipEncoder
from unigen.metrics.compositional import (GENEVAL_CATEGORIES, CheckResultLike,
                                          CompositionalAccuracy, per_category_accuracy)
from unigen.metrics.domain_classifier import DomainClassifier
from unigen.metrics.features import (FEATURE_EXTRACTORS, DomainClassifierExtractor,
                                     ExtractorOutput, FeatureExtractor, InceptionV3,
                                     build_feature_extractor, find_fid_helper_weights,
                                     register_extractor)
from unigen.metrics.fid import FID, ReconstructionFID, frechet_distance, gaussian_statistics
from unigen.metrics.inception_score import InceptionScore, inception_score
from unigen.metrics.kid import KID, kernel_inception_distance
from unigen.metrics.precision_recall import (PrecisionRecall, density_coverage, knn_radii,
                                             precision_recall,
                                             precision_recall_density_coverage)
from unigen.metrics.reconstruction import PSNR, SSIM, evaluate_reconstruction
from unigen.metrics.report import (Panel, Sweep, compute_metrics, flatten_results, plot_panels,
                                   write_report)
from unigen.metrics.retrieval import retrieval_accuracy
from unigen.metrics.text_normalize import normalize_answer, normalize_caption
from unigen.metrics.vqa import VQAExactMatch, exact_matches

__all__ = [
    "BLEU4", "CAPTION", "CIDErD", "CaptionExactMatch", "CLIPScore", "COMPOSITIONAL", "CheckResultLike", "ClassAccuracy",
    "ClipEncoder",
    "CompositionalAccuracy", "DISTRIBUTION", "DomainClassifier", "DomainClassifierExtractor",
    "ExtractorOutput", "FEATURE_EXTRACTORS", "FID", "FeatureExtractor", "GENEVAL_CATEGORIES",
    "HostMetric", "InceptionScore", "InceptionV3", "KID", "KINDS", "METRICS", "PSNR", "Panel",
    "PrecisionRecall",
    "RECONSTRUCTION", "ReconstructionFID", "SSIM", "Sweep", "TEXT_IMAGE", "VQA", "VQAExactMatch",
    "build_feature_extractor", "build_metric", "build_metrics", "cider_d_scores",
    "compute_metrics", "density_coverage", "evaluate_reconstruction", "exact_matches",
    "find_fid_helper_weights", "flatten_results", "frechet_distance", "gaussian_statistics",
    "inception_score", "kernel_inception_distance", "knn_radii", "normalize_answer",
    "normalize_caption", "per_category_accuracy", "plot_panels", "precision_recall",
    "precision_recall_density_coverage", "prompt_class",
    "register_extractor", "register_metric", "retrieval_accuracy", "write_report",
]
