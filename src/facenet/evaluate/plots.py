"""Evaluation figures as PNG files (matplotlib, headless Agg backend)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from facenet.fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike, title: str = "ROC") -> None:
    """TAR against FAR (log scale) for each ``label -> (fpr, tpr)``, on one figure for comparison."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    floor = 1.0
    for label, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr), np.asarray(tpr)
        visible = fpr > 0  # a log axis cannot show FAR = 0
        ax.plot(fpr[visible], tpr[visible], label=label)
        if visible.any():
            floor = min(floor, fpr[visible].min())
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_distance_histogram(
    distances: np.ndarray, same: np.ndarray, threshold: float, path: str | os.PathLike, title: str = "pair distances"
) -> None:
    """Matched vs mismatched distance histograms with the decision threshold drawn."""
    plt = _pyplot()
    distances, same = np.asarray(distances), np.asarray(same, dtype=bool)
    bins = np.linspace(distances.min(), distances.max(), 60)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.hist(distances[same], bins=bins, alpha=0.6, label=f"same person ({same.sum()})")
    ax.hist(distances[~same], bins=bins, alpha=0.6, label=f"different people ({(~same).sum()})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("distance")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)
    plt.close(fig)
