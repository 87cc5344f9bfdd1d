"""Embedding a training source as inference would, and the held-out verification check built on it.

Used by the training loop (periodic checks and the final calibration), offline mining and the demo.
"""

from __future__ import annotations

import numpy as np
import torch

from facenet.models import EmbeddingModel
from facenet.models.modelfile import model_info_for
from facenet.train.config import TrainConfig


def embed_source(
    model: EmbeddingModel, source, indices: np.ndarray, config: TrainConfig, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Embed some of a source's images as inference would see them: the inference embedder, no augmentation."""
    from facenet.data.images import fit_to_input
    from facenet.embedder import FaceEmbedder

    embedder = FaceEmbedder(model, model_info_for(model, standardisation=config.standardisation), device=device)
    crops = [fit_to_input(source.image(int(i)), config.image_size) for i in indices]
    return embedder.embed_crops(crops, batch_size=batch_size)


def verification(model, source, pairs, config: TrainConfig, device: torch.device) -> tuple[float, float, object]:
    """10-fold verification accuracy on held-out identities, the threshold fitted on all pairs, and the
    FAR calibration (``facenet.evaluate.calibrate.Calibration``) over every pair of different held-out people
    among the images checked."""
    from facenet.evaluate.calibrate import calibrate
    from facenet.evaluate.metrics import best_threshold, kfold_metrics

    used = np.unique(np.concatenate([pairs.first, pairs.second]))
    emb = embed_source(model, source, used, config, device)
    row = {index: r for r, index in enumerate(used)}
    e1 = emb[[row[i] for i in pairs.first]]
    e2 = emb[[row[i] for i in pairs.second]]
    result = kfold_metrics(e1, e2, pairs.same, pairs.folds)
    threshold, _ = best_threshold(np.sum((e1 - e2) ** 2, axis=1), pairs.same)
    calibration = calibrate(emb, source.labels[used], on=f"held-out training identities ({len(used)} images)")
    return float(result.accuracy.mean()), float(threshold), calibration
