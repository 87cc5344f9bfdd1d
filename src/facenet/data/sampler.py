"""P x K identity-balanced batches for triplet training (P identities, K faces each).

Batch ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``: the epoch's identity order
comes from a generator seeded with ``(seed, e)`` and batch ``i``'s faces from one seeded with
``(seed, e, i)``. Resuming mid-epoch is therefore exact without any sampler state: the trainer
records (epoch, step) in its checkpoint and calls ``set_epoch(epoch, start=step)``. (A position
counted inside the sampler would be wrong anyway, since a DataLoader pre-fetches batches.)

Identities with fewer than 2 images cannot give a positive pair, so they never fill one of
the P slots. They can still serve as negatives: ``extra_negatives`` appends that many
single-image faces (distinct identities) to each batch, useful for datasets such as LFW where
most identities have one image. An identity with fewer than K images contributes all of its
images and is topped up to K with repeats (drawn evenly); under training augmentation a
repeat is another random view, without it the repeat is a zero-distance positive pair (easy,
harmless). This keeps every batch exactly P*K (+ extra) long, which distributed training needs.

Distributed training: every rank iterates the same sampler (same seed) and gets the GLOBAL
batch; rank r keeps ``batch[r*B//W:(r+1)*B//W]``. The batch is laid out identity by identity
(K consecutive faces each, extra negatives last), so with P divisible by the world size each
rank holds whole identities; miners should still run on embeddings gathered from all ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from facenet.errors import DataError


class PKSampler(Sampler[list[int]]):
    """Batch sampler yielding lists of dataset indices: P identities x K faces (+ extra negatives).

    ``labels[i]`` is the identity of dataset item ``i`` (any hashable values numpy can sort).
    An epoch visits each identity with >= 2 images at most once; it has
    ``(#such identities) // p`` batches (the rest wait for the next epoch's shuffle).
    """

    def __init__(
        self,
        labels: Sequence | np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        extra_negatives: int = 0,
        weights: Sequence[float] | np.ndarray | None = None,
    ):
        """``weights`` (one per identity, in sorted label order): batch ``i`` then draws its P identities
        with these relative chances (distinct within the batch) instead of walking a shuffled epoch."""
        if p < 2 or k < 2:
            raise DataError(f"a P x K batch needs p >= 2 identities and k >= 2 faces each; got p={p}, k={k}")
        if extra_negatives < 0:
            raise DataError(f"extra_negatives must be >= 0, got {extra_negatives}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise DataError("PKSampler needs a non-empty 1-D list of labels, one per dataset item")
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(counts)[:-1])
        usable = [len(g) >= 2 for g in groups]
        self.identities = [g for g, ok in zip(groups, usable) if ok]
        self.weights = None
        if weights is not None:
            weights = np.asarray(weights, np.float64)
            if weights.shape != (len(groups),) or (weights < 0).any():
                raise DataError(f"need {len(groups)} non-negative identity weights, got shape {weights.shape}")
            kept = weights[np.asarray(usable)]
            if np.count_nonzero(kept) < p:
                raise DataError(f"fewer than p={p} identities with 2 or more images have a weight above 0")
            self.weights = kept / kept.sum()
        self.singletons = np.sort(np.concatenate([g for g in groups if len(g) < 2] or [[]])).astype(np.int64)
        if len(self.identities) < p:
            raise DataError(
                f"only {len(self.identities)} identities have 2 or more images, fewer than p={p}: lower p or add images"
            )
        if extra_negatives > len(self.singletons):
            raise DataError(
                f"extra_negatives={extra_negatives} but only {len(self.singletons)} "
                "single-image identities exist: lower extra_negatives"
            )
        self.p, self.k, self.seed = p, k, seed
        self.extra_negatives = extra_negatives
        self.epoch, self.start = 0, 0
        self._order_epoch, self._order = None, None

    @property
    def batch_size(self) -> int:
        return self.p * self.k + self.extra_negatives

    def __len__(self) -> int:
        return len(self.identities) // self.p

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch to iterate next, beginning at batch ``start`` (to resume mid-epoch)."""
        if not 0 <= start <= len(self):
            raise DataError(f"start batch {start} is outside the epoch's 0..{len(self)} batches")
        self.epoch, self.start = epoch, start

    def _identity_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.identities))
            self._order_epoch = epoch
        return self._order

    def batch(self, epoch: int, i: int) -> list[int]:
        """Batch ``i`` of ``epoch``; depends on nothing else."""
        if not 0 <= i < len(self):
            raise DataError(f"batch {i} is outside the epoch's {len(self)} batches")
        rng = np.random.default_rng([self.seed, epoch, i])
        chosen = (
            self._identity_order(epoch)[i * self.p : (i + 1) * self.p]
            if self.weights is None
            else rng.choice(len(self.identities), self.p, replace=False, p=self.weights)
        )
        out = []
        for ident in chosen:
            images = self.identities[ident]
            if len(images) >= self.k:
                out.append(rng.choice(images, self.k, replace=False))
            else:  # all distinct images first, then repeats spread evenly over them
                reps = -(-self.k // len(images))
                fill = np.concatenate([rng.permutation(images) for _ in range(reps)])
                out.append(fill[: self.k])
        if self.extra_negatives:
            out.append(rng.choice(self.singletons, self.extra_negatives, replace=False))
        return np.concatenate(out).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        epoch, start = self.epoch, self.start
        for i in range(start, len(self)):
            yield self.batch(epoch, i)
