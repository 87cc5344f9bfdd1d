"""What the training loop reads: labelled face images, split by identity, served as whole batches.

A *source* is any object with ``labels`` (int64 array, one per image),
``num_identities`` and ``image(i) -> H,W,3 uint8``. A folder of identities and the
synthetic generator both become one; ``StepBatches`` turns a source plus the P x K
sampler and augmentation into the batch of any training step, computed from
(seed, step) alone so that data loading needs no state to resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from facenet.data.sampler import PKSampler
from facenet.errors import DataError
from facenet.train.augment import Augmentation


class FolderSource:
    """A folder-per-identity dataset restricted to some of its images."""

    def __init__(self, dataset, indices: np.ndarray | None = None):
        self.dataset = dataset
        all_labels = np.asarray(dataset.labels, dtype=np.int64)
        self.indices = np.arange(len(all_labels)) if indices is None else np.asarray(indices)
        _, self.labels = np.unique(all_labels[self.indices], return_inverse=True)
        self.num_identities = int(self.labels.max()) + 1 if len(self.labels) else 0

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> np.ndarray:
        return self.dataset[int(self.indices[i])][0]


class SyntheticSource:
    """Identities ``first .. first + count - 1`` of the synthetic generator, ``per_identity`` images each.

    Each image is rendered once and kept (about 12 KB at 64 px): rendering is deterministic, and
    drawing every face anew at every step would cost as much CPU as training on it.
    """

    def __init__(self, faces, first: int, count: int, per_identity: int):
        self.faces, self.first, self.per_identity = faces, first, per_identity
        self.labels = np.repeat(np.arange(count, dtype=np.int64), per_identity)
        self.num_identities = count
        self._rendered: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        i = int(i)
        if i not in self._rendered:
            self._rendered[i] = self.faces.render(self.first + i // self.per_identity, i % self.per_identity)
        return self._rendered[i]


def split_identities(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (training, held-out) images; held-out identities never appear in training."""
    identities = np.unique(labels)
    rng = np.random.default_rng([seed, 7])
    held = rng.permutation(identities)[:int(round(len(identities) * fraction))]
    mask = np.isin(labels, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def build_sources(config):
    """(training source, held-out source or None) for a run's configuration."""
    if config.data is None:
        from facenet.data.synthetic import SyntheticFaces

        held = int(round(config.synthetic_identities * config.holdout_identities))
        train_ids = config.synthetic_identities - held
        faces = SyntheticFaces(config.synthetic_identities, seed=config.seed, size=config.image_size,
                               occlusion_prob=config.augment_occlusion)
        per = config.synthetic_images_per_identity
        return (SyntheticSource(faces, 0, train_ids, per),
                SyntheticSource(faces, train_ids, held, per) if held >= 2 else None)
    from facenet.data.folder import FolderDataset

    dataset = FolderDataset(config.data, min_images=config.min_images_per_identity)
    labels = np.asarray(dataset.labels)
    train_idx, held_idx = split_identities(labels, config.holdout_identities, config.seed)
    if config.exclude_identities:
        excluded = np.isin(labels, _identity_labels(dataset.classes, config.exclude_identities))
        train_idx, held_idx = train_idx[~excluded[train_idx]], held_idx[~excluded[held_idx]]
    held = FolderSource(dataset, held_idx) if len(held_idx) else None
    if held is not None and held.num_identities < 2:
        held = None
    return FolderSource(dataset, train_idx), held


def _identity_labels(classes: list[str], names_file: str) -> np.ndarray:
    """Labels of the identities named in ``names_file`` (e.g. the test fold's people)."""
    try:
        names = {line.strip() for line in open(names_file, encoding="utf-8") if line.strip()}
    except OSError as exc:
        raise DataError(f"cannot read the identities to exclude: {exc}") from None
    return np.flatnonzero(np.isin(np.asarray(classes), sorted(names)))


class StepBatches(Dataset):
    """Item ``step`` is that step's whole global batch: (uint8 N,3,H,W images, int64 labels)."""

    def __init__(self, source, sampler: PKSampler, augment: Augmentation, seed: int):
        if len(sampler) == 0:
            raise DataError("the training set is too small for one P x K batch")
        self.source, self.sampler, self.augment, self.seed = source, sampler, augment, seed

    def __len__(self) -> int:  # steps are unbounded; the loop decides when to stop
        return 2**62

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, len(self.sampler))
        return self.sampler.batch(epoch, i)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.indices(step)
        crops = [self.augment(self.source.image(i), np.random.default_rng([self.seed, step, pos]))
                 for pos, i in enumerate(indices)]
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(self.source.labels[indices], dtype=torch.int64)


@dataclass
class HeldOutPairs:
    """Verification pairs over held-out images: every positive pair (capped) and as many negatives."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray


def held_out_pairs(labels: np.ndarray, max_pairs: int, seed: int, n_folds: int = 10,
                   max_images: int | None = None) -> HeldOutPairs:
    """Balanced verification pairs among held-out images: up to ``max_pairs // 2`` positive pairs and as
    many negative ones, distinct, sampled without listing every pair (memory O(max_pairs), not O(images^2)).

    ``max_images`` first keeps a seeded sample of that many images (the validation embeds only those).
    """
    rng = np.random.default_rng([seed, 11])
    labels = np.asarray(labels)
    pool = np.arange(len(labels))
    if max_images is not None and len(pool) > max_images:
        pool = np.sort(rng.choice(pool, max_images, replace=False))
    order = pool[np.argsort(labels[pool], kind="stable")]
    _, starts = np.unique(labels[order], return_index=True)
    groups = [g for g in np.split(order, starts[1:]) if len(g) > 1]
    positives_total = sum(len(g) * (len(g) - 1) // 2 for g in groups)
    negatives_total = len(pool) * (len(pool) - 1) // 2 - positives_total
    n = min(positives_total, negatives_total, max_pairs // 2)
    if n < n_folds:
        raise DataError("too few held-out images for a verification check; add identities or images")
    weights = np.array([len(g) * (len(g) - 1) / 2 for g in groups], dtype=np.float64)
    positives = _distinct_pairs(rng, n, lambda size: _draw_positive(rng, groups, weights / weights.sum(), size),
                                positives_total)
    negatives = _distinct_pairs(rng, n, lambda size: _draw_negative(rng, pool, labels, size), negatives_total)
    first = np.concatenate([positives[:, 0], negatives[:, 0]])
    second = np.concatenate([positives[:, 1], negatives[:, 1]])
    same = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    folds = rng.permutation(np.arange(2 * n) % n_folds)
    return HeldOutPairs(first, second, same, folds)


def _distinct_pairs(rng, n: int, draw, available: int) -> np.ndarray:
    """``n`` distinct (i < j) pairs from ``draw(size)``, which proposes pairs of the wanted kind."""
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < n:
        for i, j in draw(max(64, 2 * (n - len(chosen)))).tolist():
            chosen.setdefault((min(i, j), max(i, j)), None)
            if len(chosen) == n:
                break
        if len(chosen) >= available:
            break
    return np.array(list(chosen), dtype=np.int64).reshape(-1, 2)


def _draw_positive(rng, groups, probabilities, size: int) -> np.ndarray:
    """Pairs of two different images of one identity, each identity drawn as often as it has pairs."""
    picks = rng.choice(len(groups), size, p=probabilities)
    out = np.empty((size, 2), np.int64)
    for row, g in enumerate(picks):
        out[row] = rng.choice(groups[g], 2, replace=False)
    return out


def _draw_negative(rng, pool, labels, size: int) -> np.ndarray:
    """Pairs of images of different identities (uniform over such pairs, by rejection)."""
    pairs = rng.choice(pool, (size, 2))
    return pairs[labels[pairs[:, 0]] != labels[pairs[:, 1]]]