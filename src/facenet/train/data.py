"""What the training loop reads: labelled face images, split by identity, served as whole batches.

A *source* is any object with ``labels`` (int64 array, one per image),
``num_identities`` and ``image(i) -> H,W,3 uint8``. A folder of identities and the
synthetic generator both become one; ``StepBatches`` turns a source plus the P x K
sampler and augmentation into the batch of any training step, computed from
(seed, step) alone so that data loading needs no state to resume.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from facenet.data.images import fit_to_input, standardise
from facenet.data.sampler import PKSampler
from facenet.errors import DataError
from facenet.train.augment import Augmentation, BatchAugmentation


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


class CachedCrops:
    """Another source's images decoded and fitted to the input size once, kept in RAM as uint8.

    For datasets that fit (LFW's 13,233 faces at 160 px take 1.0 GB): JPEG decoding is most of a
    loader's work, and this leaves the workers only the augmentation. The crops are exactly what
    the augmentation's first step (``fit_to_input``) makes of the original, so a run trains on the
    same pixels with and without the cache. Filled with threads (Pillow decodes without the GIL)
    before the loader's workers start, which then share the array with the parent process.
    """

    def __init__(self, source, size: int, threads: int | None = None):
        self.labels, self.num_identities = source.labels, source.num_identities
        need = len(source) * size * size * 3
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        if free is not None and need > free // 2:
            raise DataError(f"caching {len(source)} crops of {size} px needs {need / 1e9:.1f} GB of RAM and "
                            f"{free / 1e9:.1f} GB are free; train without --cache")
        self.crops = np.empty((len(source), size, size, 3), np.uint8)

        def fill(i: int) -> None:
            self.crops[i] = fit_to_input(source.image(i), size)

        with ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            list(pool.map(fill, range(len(source))))

    def __len__(self) -> int:
        return len(self.crops)

    def image(self, i: int) -> np.ndarray:
        return self.crops[int(i)]


def split_identities(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of (training, held-out) images; held-out identities never appear in training."""
    identities = np.unique(labels)
    rng = np.random.default_rng([seed, 7])
    held = rng.permutation(identities)[:int(round(len(identities) * fraction))]
    mask = np.isin(labels, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def build_sources(config):
    """(training source, held-out source or None) for a run's configuration."""
    train, held = _sources(config)
    if config.cache_crops:
        train = CachedCrops(train, config.image_size)
        held = CachedCrops(held, config.image_size) if held is not None else None
    return train, held


def _sources(config):
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
    """Item ``step`` is that step's batch: (uint8 images, int64 labels of the whole global batch).

    With ``shard=(rank, world_size)`` (data-parallel training) the images are only this rank's
    consecutive share of the global batch: each process decodes and augments its own faces, W times
    less work than all of them, and every face gets the augmentation it would get in one process
    (its seed is its place in the global batch). The labels stay global: mining runs on the
    all-gathered embeddings.
    """

    def __init__(self, source, sampler: PKSampler, augment: Augmentation, seed: int, shard: tuple[int, int] = (0, 1)):
        if len(sampler) == 0:
            raise DataError("the training set is too small for one P x K batch")
        self.source, self.sampler, self.augment, self.seed = source, sampler, augment, seed
        self.rank, self.world_size = shard

    def __len__(self) -> int:  # steps are unbounded; the loop decides when to stop
        return 2**62

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, len(self.sampler))
        return self.sampler.batch(epoch, i)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.indices(step)
        per_rank = len(indices) // self.world_size
        mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        crops = [self.augment(self.source.image(indices[pos]), np.random.default_rng([self.seed, step, pos]))
                 for pos in mine]
        images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(self.source.labels[indices], dtype=torch.int64)


def loader_workers(requested: int) -> int:
    """Data-loading processes for ``--workers`` (-1: every CPU core this process may use but one,
    the one left to the training process, at most 16)."""
    if requested >= 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores - 1, 16))


def step_loader(batches: StepBatches, steps: range, workers: int, pin_memory: bool):
    """An iterator over the batches of ``steps``, built in ``workers`` processes (two batches ahead each).

    ``pin_memory`` puts them in page-locked memory, from which a copy to a GPU can be asynchronous
    (``non_blocking=True``) and overlap the previous step's work.
    """
    return iter(DataLoader(batches, batch_size=None, sampler=steps, num_workers=workers,
                           persistent_workers=False, pin_memory=pin_memory,
                           prefetch_factor=2 if workers else None))


def batch_augmentation(config) -> BatchAugmentation | None:
    """The on-device augmentation when ``config.augment_on == "device"``, else None."""
    if config.augment_on != "device":
        return None
    return BatchAugmentation(crop=config.augment_crop, flip=config.augment_flip, colour=config.augment_colour,
                             occlusion=config.augment_occlusion)


def face_augmentation(config) -> Augmentation:
    """What the loader's workers do to each face: everything, or only the crop when the device augments."""
    on_workers = config.augment_on == "workers"
    return Augmentation(config.image_size, crop=config.augment_crop and on_workers,
                        flip=config.augment_flip and on_workers, colour=config.augment_colour if on_workers else 0.0,
                        occlusion=config.augment_occlusion if on_workers else 0.0)


def augment_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s on-device augmentation draws."""
    return int(np.random.SeedSequence([seed, step, 5]).generate_state(1)[0])


def measure_loader(config, device: torch.device, steps: int = 20, warmup: int = 2) -> dict:
    """The data path alone, no model: images/s from the loader (decode, crop, augment) up to
    standardised batches on ``device``. Compare it with the model's images/s to see which one limits a run."""
    train_source, _ = build_sources(config)
    sampler = PKSampler(train_source.labels, config.identities_per_batch, config.faces_per_identity, seed=config.seed)
    batches = StepBatches(train_source, sampler, face_augmentation(config), config.seed)
    augment = batch_augmentation(config)
    workers = loader_workers(config.workers)
    loader = step_loader(batches, range(warmup + steps), workers, pin_memory=device.type == "cuda")
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        images, _ = next(loader)
        images = images.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, augment_seed(config.seed, step))
        standardise(images, config.standardisation).sum().item()  # wait for the device
    seconds = time.perf_counter() - start
    return {"images_per_s": steps * config.batch_size / seconds, "workers": workers, "steps": steps,
            "batch_size": config.batch_size, "cached": config.cache_crops, "augment_on": config.augment_on}


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
    pair_counts = np.array([len(g) * (len(g) - 1) // 2 for g in groups], dtype=np.int64)
    positives_total = int(pair_counts.sum())
    negatives_total = len(pool) * (len(pool) - 1) // 2 - positives_total
    n = min(positives_total, negatives_total, max_pairs // 2)  # both kinds have at least n distinct pairs
    if n < n_folds:
        raise DataError("too few held-out images for a verification check; add identities or images")
    positives = _distinct_pairs(n, lambda size: _draw_positive(rng, groups, pair_counts / positives_total, size))
    negatives = _distinct_pairs(n, lambda size: _draw_negative(rng, pool, labels, size))
    first = np.concatenate([positives[:, 0], negatives[:, 0]])
    second = np.concatenate([positives[:, 1], negatives[:, 1]])
    same = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    folds = rng.permutation(np.arange(2 * n) % n_folds)
    return HeldOutPairs(first, second, same, folds)


def _distinct_pairs(n: int, draw) -> np.ndarray:
    """``n`` distinct (i < j) pairs from ``draw(size)``, which proposes pairs of the wanted kind
    (at least ``n`` distinct ones must exist)."""
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < n:
        for i, j in draw(max(64, 2 * (n - len(chosen)))).tolist():
            chosen.setdefault((min(i, j), max(i, j)), None)
            if len(chosen) == n:
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