"""What the training loop reads: labelled face images, split by identity, served as whole batches.

A *source* is any object with ``labels`` (int64 array, one per image),
``num_identities`` and ``image(i) -> H,W,3 uint8``. A folder of identities and the
synthetic generator both become one; ``StepBatches`` turns a source plus the P x K
sampler and augmentation into the batch of any training step, computed from
(seed, step) alone so that data loading needs no state to resume.
"""

from __future__ import annotations

import json
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
    """A folder-per-identity dataset restricted to some of its images; ``identity_weights`` (or None)
    are the sampling weights of its identities (``--source-weights``)."""

    def __init__(self, dataset, indices: np.ndarray | None = None, class_weights: np.ndarray | None = None):
        self.dataset = dataset
        all_labels = np.asarray(dataset.labels, dtype=np.int64)
        self.indices = np.arange(len(all_labels)) if indices is None else np.asarray(indices)
        classes, self.labels = np.unique(all_labels[self.indices], return_inverse=True)
        self.num_identities = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.identity_weights = class_weights[classes] if class_weights is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> np.ndarray:
        return self.dataset[int(self.indices[i])][0]

    def path(self, i: int):
        return self.dataset.path(int(self.indices[i]))


class UnlabelledSource:
    """Photos without identities (label -1): only a teacher says what they should embed to."""

    def __init__(self, folders):
        from facenet.data.folder import ImageFiles

        self.dataset = ImageFiles(folders)
        self.labels = np.full(len(self.dataset), -1, dtype=np.int64)
        self.num_identities = 0
        self.identity_weights = None

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, i: int) -> np.ndarray:
        return self.dataset[int(i)]

    def path(self, i: int):
        return self.dataset.path(int(i))


class SyntheticSource:
    """Identities ``first .. first + count - 1`` of the synthetic generator, ``per_identity`` images each.

    Each image is rendered once and kept (about 12 KB at 64 px): rendering is deterministic, and
    drawing every face anew at every step would cost as much CPU as training on it.
    """

    def __init__(self, faces, first: int, count: int, per_identity: int):
        self.faces, self.first, self.per_identity = faces, first, per_identity
        self.labels = np.repeat(np.arange(count, dtype=np.int64), per_identity)
        self.num_identities = count
        self.identity_weights = None
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
        self.identity_weights = getattr(source, "identity_weights", None)
        self.path = getattr(source, "path", None)  # the files' names, for a teacher's cache
        self.dataset = getattr(source, "dataset", None)  # the folders, for the run's data summary
        need = len(source) * size * size * 3
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        if free is not None and need > free // 2:
            raise DataError(
                f"caching {len(source)} crops of {size} px needs {need / 1e9:.1f} GB of RAM and "
                f"{free / 1e9:.1f} GB are free; train without --cache"
            )
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
    held = rng.permutation(identities)[: int(round(len(identities) * fraction))]
    mask = np.isin(labels, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def build_sources(config):
    """(training source, held-out source or None) for a run's configuration."""
    train, held = _sources(config)
    if config.cache_crops:
        train = CachedCrops(train, config.image_size)
        held = CachedCrops(held, config.image_size) if held is not None else None
    return train, held


def build_unlabelled(config):
    """The source of ``--unlabelled`` photos, or None."""
    if not config.unlabelled:
        return None
    source = UnlabelledSource(config.unlabelled)
    return CachedCrops(source, config.image_size) if config.cache_crops else source


def data_summary(config, train, unlabelled=None) -> dict:
    """People and images per data folder (and unlabelled photos), from the sources ``build_sources`` and
    ``build_unlabelled`` made (the folders are not scanned again): recorded in the run and its model file."""
    if config.data is None:
        return {
            "synthetic_identities": config.synthetic_identities,
            "images_per_identity": config.synthetic_images_per_identity,
        }
    dataset = train.dataset  # every data folder, held-out people included
    summary = dataset.summary()
    if config.exclude_identities:
        excluded = _identity_labels(dataset.classes, config.exclude_identities)
        summary["excluded"] = {
            "file": str(config.exclude_identities),
            "people": len(excluded),
            "images": int(dataset.images_per_class[excluded].sum()),
        }
    if unlabelled is not None:
        summary["unlabelled"] = unlabelled.dataset.summary()
    return summary


def training_landmarks(config) -> tuple | None:
    """Where the five landmarks sit in the run's input crops: the template of the data's recipe
    (similarity-aligned folders), else None (no landmark-placed occluders can be drawn)."""
    from facenet.align.crop import template_points

    recipe = data_recipe(config)
    if not recipe or recipe.get("mode") != "similarity":
        return None
    points = template_points(config.image_size, float(recipe["margin"]), recipe["template"])
    return tuple(map(tuple, points.tolist()))


def data_recipe(config) -> dict | None:
    """The recipe (``recipe.json``) all the run's data folders were aligned with; None when they have none.
    Folders aligned differently cannot train one model: a model file holds one recipe."""
    from facenet.align.dataset import read_recipe

    folders = list(config.data or []) + list(config.unlabelled or [])
    recipes = {f: read_recipe(f) for f in folders}
    found = {_recipe_key(r) for r in recipes.values() if r is not None}
    if len(found) > 1 or (found and None in recipes.values()):
        listing = "; ".join(f"{f}: {r}" for f, r in recipes.items())
        raise DataError(
            f"the data folders were not all aligned with one recipe ({listing}); align them "
            "with the same `facenet align` options"
        )
    return next((r for r in recipes.values() if r is not None), None)


def _recipe_key(recipe: dict) -> str:
    return json.dumps({k: v for k, v in recipe.items() if k != "size"}, sort_keys=True)


def _sources(config):
    if config.data is None:
        from facenet.data.synthetic import SyntheticFaces

        held = int(round(config.synthetic_identities * config.holdout_identities))
        train_ids = config.synthetic_identities - held
        faces = SyntheticFaces(
            config.synthetic_identities,
            seed=config.seed,
            size=config.image_size,
            occlusion_prob=config.augment_occlusion,
        )
        per = config.synthetic_images_per_identity
        return (
            SyntheticSource(faces, 0, train_ids, per),
            SyntheticSource(faces, train_ids, held, per) if held >= 2 else None,
        )
    from facenet.data.folder import FolderDataset

    dataset = FolderDataset(config.data, min_images=config.min_images_per_identity, merge_names=config.merge_names)
    weights = dataset.class_weights(config.source_weights)
    labels = np.asarray(dataset.labels)
    train_idx, held_idx = split_identities(labels, config.holdout_identities, config.seed)
    if config.exclude_identities:
        excluded = np.isin(labels, _identity_labels(dataset.classes, config.exclude_identities))
        train_idx, held_idx = train_idx[~excluded[train_idx]], held_idx[~excluded[held_idx]]
    held = FolderSource(dataset, held_idx) if len(held_idx) else None
    if held is not None and held.num_identities < 2:
        held = None
    return FolderSource(dataset, train_idx, weights), held


def _identity_labels(classes: list[str], names_file: str) -> np.ndarray:
    """Labels of the identities named in ``names_file`` (e.g. the test fold's people, or the people of LFW).
    A name matches an identity folder of that name in any data folder, or one namespaced ``folder/name``;
    underscores count as spaces ("George_W_Bush" is "George W Bush")."""
    from facenet.data.folder import person_name

    try:
        names = {person_name(line) for line in open(names_file, encoding="utf-8") if line.strip()}
    except OSError as exc:
        raise DataError(f"cannot read the identities to exclude: {exc}") from None
    return np.array(
        [i for i, c in enumerate(classes) if person_name(c) in names or person_name(c.rsplit("/", 1)[-1]) in names],
        np.int64,
    )


@dataclass
class TeacherFeed:
    """What a teacher needs from the loader: ``targets`` (cached embeddings, one row per image of the
    source, and of the unlabelled source) or ``clean_views`` (the views without their occluders, for a
    teacher that embeds them in the step)."""

    targets: np.ndarray | None = None
    unlabelled_targets: np.ndarray | None = None
    clean_views: bool = False


class StepBatches(Dataset):
    """Item ``step`` is that step's batch: (uint8 images, int64 labels of the whole global batch, teacher
    input): P x K labelled faces, then ``unlabelled_count`` photos of ``unlabelled`` (label -1). The teacher
    input is the cached teacher embeddings of the whole global batch, or this share's views without
    occluders, or an empty tensor (see ``TeacherFeed``).

    With ``shard=(rank, world_size)`` (data-parallel training) the images are only this rank's
    consecutive share of the global batch: each process decodes and augments its own faces, W times
    less work than all of them, and every face gets the augmentation it would get in one process
    (its seed is its place in the global batch). The labels stay global: mining runs on the
    all-gathered embeddings.
    """

    def __init__(
        self,
        source,
        sampler: PKSampler,
        augment: Augmentation,
        seed: int,
        shard: tuple[int, int] = (0, 1),
        unlabelled=None,
        unlabelled_count: int = 0,
        teacher: TeacherFeed | None = None,
    ):
        if len(sampler) == 0:
            raise DataError("the training set is too small for one P x K batch")
        self.source, self.sampler, self.augment, self.seed = source, sampler, augment, seed
        self.rank, self.world_size = shard
        self.unlabelled, self.unlabelled_count = unlabelled, unlabelled_count if unlabelled is not None else 0
        self.teacher = teacher or TeacherFeed()

    def __len__(self) -> int:  # steps are unbounded; the loop decides when to stop
        return 2**62

    def indices(self, step: int) -> list[int]:
        epoch, i = divmod(step, len(self.sampler))
        return self.sampler.batch(epoch, i)

    def unlabelled_indices(self, step: int) -> np.ndarray:
        if not self.unlabelled_count:
            return np.empty(0, np.int64)
        rng = np.random.default_rng([self.seed, step, 13])
        n = len(self.unlabelled)
        return rng.choice(n, self.unlabelled_count, replace=n < self.unlabelled_count)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labelled, extra = self.indices(step), self.unlabelled_indices(step)
        batch = [(self.source, i) for i in labelled] + [(self.unlabelled, i) for i in extra]
        per_rank = len(batch) // self.world_size
        mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        views = [
            self.augment.views(batch[pos][0].image(batch[pos][1]), np.random.default_rng([self.seed, step, pos]))
            for pos in mine
        ]
        images = _tensor([v[0] for v in views])
        labels = np.concatenate([self.source.labels[labelled], np.full(len(extra), -1)])
        feed = self.teacher
        if feed.targets is not None:
            rows = [feed.targets[labelled]] + ([feed.unlabelled_targets[extra]] if len(extra) else [])
            teacher = torch.from_numpy(np.concatenate(rows).astype(np.float32))
        elif feed.clean_views:
            teacher = _tensor([v[1] for v in views])
        else:
            teacher = torch.empty(0)
        return images, torch.as_tensor(labels, dtype=torch.int64), teacher


def _tensor(crops: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


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
    return iter(
        DataLoader(
            batches,
            batch_size=None,
            sampler=steps,
            num_workers=workers,
            persistent_workers=False,
            pin_memory=pin_memory,
            prefetch_factor=2 if workers else None,
        )
    )


def batch_augmentation(config) -> BatchAugmentation | None:
    """The on-device augmentation when ``config.augment_on == "device"``, else None. Landmark-placed
    occluders are drawn by the workers (OpenCV) in both cases; the device only draws the flat band."""
    if config.augment_on != "device":
        return None
    band = config.augment_occlusion if training_landmarks(config) is None else 0.0
    return BatchAugmentation(
        crop=config.augment_crop, flip=config.augment_flip, colour=config.augment_colour, occlusion=band
    )


def face_augmentation(config) -> Augmentation:
    """What the loader's workers do to each face: everything, or only the crop (and landmark-placed
    occluders) when the device augments."""
    on_workers = config.augment_on == "workers"
    landmarks = training_landmarks(config) if config.augment_occlusion > 0 else None
    return Augmentation(
        config.image_size,
        crop=config.augment_crop and on_workers,
        flip=config.augment_flip and on_workers,
        colour=config.augment_colour if on_workers else 0.0,
        occlusion=config.augment_occlusion if on_workers or landmarks else 0.0,
        landmarks=landmarks,
    )


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
        images, _, _ = next(loader)
        images = images.to(device, non_blocking=True)
        if augment is not None:
            images = augment(images, augment_seed(config.seed, step))
        standardise(images, config.standardisation).sum().item()  # wait for the device
    seconds = time.perf_counter() - start
    return {
        "images_per_s": steps * config.batch_size / seconds,
        "workers": workers,
        "steps": steps,
        "batch_size": config.batch_size,
        "cached": config.cache_crops,
        "augment_on": config.augment_on,
    }


@dataclass
class HeldOutPairs:
    """Verification pairs over held-out images: every positive pair (capped) and as many negatives."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    folds: np.ndarray


def held_out_pairs(
    labels: np.ndarray, max_pairs: int, seed: int, n_folds: int = 10, max_images: int | None = None
) -> HeldOutPairs:
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
