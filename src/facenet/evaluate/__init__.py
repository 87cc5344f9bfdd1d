"""Pairs protocols (LFW View 2 style): k-fold accuracy, VAL@FAR, ROC / AUC / EER, and plots."""

from facenet.evaluate.metrics import kfold_metrics, pair_distances, roc
from facenet.evaluate.pairs import read_pairs
from facenet.evaluate.protocol import EvaluationResult, evaluate_pairs

__all__ = ["evaluate_pairs", "EvaluationResult", "read_pairs", "kfold_metrics", "pair_distances", "roc"]
