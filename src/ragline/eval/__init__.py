"""Evaluation: retrieval quality on BEIR-layout datasets (``ragline eval retrieval``)."""

from ragline.eval.beir import BeirDataset, load_beir
from ragline.eval.metrics import evaluate
from ragline.eval.retrieval import (
    ALL_MODES,
    ModeResult,
    RetrievalEvalResult,
    RetrievalEvaluator,
    evaluate_retrieval,
)

__all__ = [
    "ALL_MODES",
    "BeirDataset",
    "ModeResult",
    "RetrievalEvalResult",
    "RetrievalEvaluator",
    "evaluate",
    "evaluate_retrieval",
    "load_beir",
]
