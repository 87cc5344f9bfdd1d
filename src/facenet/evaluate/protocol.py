"""Run a pairs protocol end to end: read the pairs, embed each image once, score the folds."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facenet.data.images import load_image
from facenet.errors import DataError, FaceNetError
from facenet.evaluate.metrics import DISTANCES, FoldMetrics, kfold_metrics
from facenet.evaluate.pairs import read_pairs
from facenet.fileio import atomic_write, atomic_write_bytes
from facenet.progress import progress_bar

FLIPS = ("none", "sum", "concat")
OCCLUDE_SIDES = ("one", "both")
CACHE_EVERY = 512  # images between cache saves: a killed run loses at most this much work


@dataclass
class EvaluationResult:
    model: str
    pairs_file: str
    settings: dict
    n_pairs: int
    n_missing: int  # pairs naming images that do not exist (left out)
    n_failed: int  # pairs left out because the embedder failed on one of their images
    metrics: FoldMetrics
    labels: np.ndarray  # is_same per scored pair, aligned with metrics.distances
    n_fallbacks: int | None = None  # images (embedded in this run) where the embedder's detector found no face
    timings: dict = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # the missing / failed image paths
    embeddings: dict = field(default_factory=dict, repr=False)  # image path -> embedding (not written to JSON)

    @property
    def accuracy(self) -> float:
        return float(self.metrics.accuracy.mean())

    @property
    def accuracy_std(self) -> float:
        return float(self.metrics.accuracy.std())

    @property
    def threshold(self) -> float:
        """The mean of the per-fold best thresholds: a calibrated threshold for this model."""
        return float(self.metrics.thresholds.mean())

    def summary(self) -> dict:
        m = self.metrics
        return {
            "model": self.model,
            "pairs_file": self.pairs_file,
            "settings": self.settings,
            "n_pairs": self.n_pairs,
            "n_missing": self.n_missing,
            "n_failed": self.n_failed,
            "n_fallbacks": self.n_fallbacks,
            "accuracy_mean": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "val_mean": float(m.val.mean()),
            "val_std": float(m.val.std()),
            "far_mean": float(m.far.mean()),
            "far_target": m.far_target,
            "auc": m.roc.auc,
            "eer": m.roc.eer,
            "threshold": self.threshold,
            "folds": [
                {"fold": i + 1, "accuracy": float(a), "threshold": float(t), "val": float(v), "far": float(f)}
                for i, (a, t, v, f) in enumerate(zip(m.accuracy, m.thresholds, m.val, m.far))
            ],
            "timings": self.timings,
            "missing_images": self.missing,
        }

    def to_json(self) -> str:
        return json.dumps(self.summary(), indent=2)

    def save_json(self, path: str | os.PathLike) -> None:
        atomic_write_bytes(path, (self.to_json() + "\n").encode())

    def table(self) -> str:
        m = self.metrics
        lines = [f"{'fold':>4}  {'accuracy':>8}  {'threshold':>9}  {'VAL':>6}  {'FAR':>7}"]
        lines += [
            f"{i + 1:>4}  {a:8.4f}  {t:9.4f}  {v:6.4f}  {f:7.5f}"
            for i, (a, t, v, f) in enumerate(zip(m.accuracy, m.thresholds, m.val, m.far))
        ]
        lines += [
            "",
            f"model      {self.model}   ({self.n_pairs} pairs scored, {self.n_missing} missing, {self.n_failed} failed"
            + (f", {self.n_fallbacks} images without a detected face" if self.n_fallbacks is not None else "")
            + ")",
            f"accuracy   {100 * self.accuracy:.2f}% +- {100 * self.accuracy_std:.2f}",
            f"VAL        {100 * m.val.mean():.2f}% +- {100 * m.val.std():.2f} @ FAR = {100 * m.far.mean():.3f}% "
            f"(target {100 * m.far_target:g}%)",
            f"AUC        {m.roc.auc:.4f}",
            f"EER        {100 * m.roc.eer:.2f}%",
            f"threshold  {self.threshold:.4f}  (mean of per-fold best thresholds, {self.settings['distance']})",
        ]
        return "\n".join(lines)


def evaluate_pairs(
    embedder,
    pairs_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    flip: str = "none",
    distance: str = "euclidean",
    subtract_mean: bool = False,
    batch_size: int = 32,
    progress: bool = True,
    folds: int | None = None,
    ext: str = "jpg",
    far_target: float = 1e-3,
    cache: str | os.PathLike | None = None,
    occlude: str | None = None,
    occlude_side: str = "one",
) -> EvaluationResult:
    """Evaluate ``embedder`` (any object with ``embed(images, batch_size)``) on a pairs protocol.

    ``flip`` adds horizontal-flip test-time augmentation: "sum" adds the two embeddings,
    "concat" joins them; both are re-normalised to unit rows. ``cache`` (an .npz file) keeps
    the embeddings made so far, so an interrupted run resumes where it stopped and a re-run
    with another distance or fold setting embeds nothing. ``occlude`` (a ``facenet.occlusion``
    kind) draws that occluder on the second photo of every pair (``occlude_side="one"``: a masked
    probe against an unmasked enrolment photo) or on both photos (``"both"``).
    """
    if flip not in FLIPS:
        raise DataError(f"unknown flip mode {flip!r}; choose one of {', '.join(FLIPS)}")
    if distance not in DISTANCES:
        raise DataError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    pair_set = read_pairs(pairs_file, images_dir, ext=ext, folds=folds)
    check_folds(pair_set.pairs, pairs_file)  # before embedding, which can take an hour
    paths = sorted({p for pair in pair_set.pairs for p in (pair.path1, pair.path2)})

    start = time.perf_counter()
    if occlude is None:
        embeddings, failed = embed_paths(embedder, paths, flip, batch_size, progress, cache)
        left = right = embeddings
    else:
        left, right, failed = _embed_occluded(
            embedder, pair_set.pairs, occlude, occlude_side, flip, batch_size, progress, cache
        )
        embeddings = left
    embed_seconds = time.perf_counter() - start

    scored = [p for p in pair_set.pairs if p.path1 in left and p.path2 in right]
    if not scored:
        raise DataError(f"no pair of {pairs_file} could be scored (all images missing or failed)")
    same = np.array([p.same for p in scored])
    start = time.perf_counter()
    metrics = kfold_metrics(
        np.stack([left[p.path1] for p in scored]),
        np.stack([right[p.path2] for p in scored]),
        same,
        np.array([p.fold for p in scored]),
        distance=distance,
        subtract_mean=subtract_mean,
        far_target=far_target,
    )
    metrics_seconds = time.perf_counter() - start

    missing_paths = sorted({str(q) for p in pair_set.missing for q in (p.path1, p.path2) if not q.is_file()})
    return EvaluationResult(
        model=embedder.name
        + (
            f" + {occlude} on {'both photos' if occlude_side == 'both' else 'one photo'} of each pair"
            if occlude
            else ""
        ),
        pairs_file=str(pairs_file),
        settings={
            "flip": flip,
            "distance": distance,
            "subtract_mean": subtract_mean,
            "n_folds": pair_set.n_folds,
            "images_dir": str(images_dir),
            **({"occlude": occlude, "occlude_side": occlude_side} if occlude else {}),
        },
        n_pairs=len(scored),
        n_missing=len(pair_set.missing),
        n_failed=len(pair_set.pairs) - len(scored),
        metrics=metrics,
        labels=same,
        n_fallbacks=getattr(embedder, "fallbacks", None),
        missing=missing_paths + sorted(str(p) for p in failed),
        timings={
            "embed_seconds": round(embed_seconds, 3),
            "images": len(paths),
            "images_per_second": round(len(paths) / max(embed_seconds, 1e-9), 2),
            "metrics_seconds": round(metrics_seconds, 3),
        },
        embeddings=embeddings,
    )


def check_folds(pairs: list, pairs_file) -> None:
    """The protocol fits each fold's threshold on the other folds, which must hold matched and mismatched
    pairs both: refuse, before anything is embedded, pairs with which it cannot."""
    if not pairs:
        raise DataError(f"no pair of {pairs_file} names images that exist; check --images and --ext")
    folds = sorted({p.fold for p in pairs})
    if len(folds) < 2:
        raise DataError(
            f"{pairs_file}: the k-fold protocol needs at least 2 folds (a threshold is fitted on the "
            "others), found 1; re-split the pairs, e.g. with --folds 10"
        )
    for fold in folds:
        kinds = {p.same for p in pairs if p.fold != fold}
        if kinds != {True, False}:
            lacking = "mismatched ('name1 i name2 j')" if True in kinds else "matched ('name i j')"
            raise DataError(
                f"{pairs_file}: the folds other than fold {fold + 1} hold no {lacking} pairs with images, "
                "so no threshold can be fitted; the protocol needs both kinds in every fold"
            )


def _embed_occluded(embedder, pairs, kind: str, side: str, flip: str, batch_size: int, progress: bool, cache):
    """(first photos' embeddings, second photos' embeddings, failures) with occluder ``kind`` drawn on the
    second photo of each pair, or on both photos; occluded embeddings are cached beside ``cache``."""
    from facenet.occlusion import OccludingEmbedder

    if side not in OCCLUDE_SIDES:
        raise DataError(f"unknown occlusion side {side!r}; choose one of {', '.join(OCCLUDE_SIDES)}")
    occluding = OccludingEmbedder(embedder, kind)
    occluded_cache = Path(cache).with_suffix(f".{kind}.npz") if cache else None
    seconds = (
        sorted({p.path1 for p in pairs} | {p.path2 for p in pairs})
        if side == "both"
        else sorted({p.path2 for p in pairs})
    )
    right, failed = embed_paths(occluding, seconds, flip, batch_size, progress, occluded_cache)
    if side == "both":
        return right, right, failed
    left, failed_left = embed_paths(embedder, sorted({p.path1 for p in pairs}), flip, batch_size, progress, cache)
    return left, right, failed + failed_left


def embed_paths(embedder, paths: list[Path], flip: str, batch_size: int, progress: bool, cache):
    """Embed every image once -> ({path: embedding}, [paths the embedder failed on]).

    ``cache`` (an .npz path or None) keeps finished embeddings, so an interrupted run resumes.
    """
    key = cache_key(embedder, flip)
    embeddings = _load_cache(cache, key) if cache else {}
    todo = [p for p in paths if p not in embeddings]
    failed: list[Path] = []
    saved = 0
    with progress_bar(len(paths), "embedding", unit="img", initial=len(paths) - len(todo), enabled=progress) as bar:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            try:
                rows = _embed(embedder, chunk, flip, batch_size)
            except FaceNetError:  # find the culprit(s); the rest of the chunk still counts
                rows = []
                for path in chunk:
                    try:
                        rows.append(_embed(embedder, [path], flip, batch_size)[0])
                    except FaceNetError:
                        failed.append(path)
                        rows.append(None)
            for path, row in zip(chunk, rows):
                if row is not None:
                    embeddings[path] = row
            bar.update(len(chunk))
            if cache and i + len(chunk) - saved >= CACHE_EVERY:
                _save_cache(cache, key, embeddings)
                saved = i + len(chunk)
    if cache and todo:
        _save_cache(cache, key, embeddings)
    return embeddings, failed


def cache_key(embedder, flip: str) -> dict:
    """Everything that decides an image's embedding, so that a cache made otherwise is never reused: the
    model, the flip, and how faces are found and cut (detector and its options, the fallback where none
    is found, the recipe, the smallest face; a wrapper's settings and those of the embedder it wraps)."""
    key = {"model": embedder.name, "flip": flip}
    for setting in ("detector", "fallback_detector", "placer"):
        key[setting] = _detector_settings(getattr(embedder, setting, None))
    recipe = getattr(embedder, "recipe", None)
    key["recipe"] = dataclasses.asdict(recipe) if recipe is not None else None
    for setting in ("min_face", "on_no_face", "num_jitters", "upsample", "kind", "seed", "variant"):
        key[setting] = getattr(embedder, setting, None)
    inner = getattr(embedder, "embedder", None)
    if inner is not None:
        key["wrapped"] = cache_key(inner, flip)
    return json.loads(json.dumps(key))  # as it reads back from the file (tuples become lists)


def _detector_settings(detector) -> dict | None:
    """A detector's name and plain-valued attributes (its options: thresholds, scale factor, model file...)."""
    if detector is None:
        return None
    options = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in sorted(vars(detector).items())
        if isinstance(v, (str, int, float, bool, tuple, type(None), Path))
    }
    return {"name": getattr(detector, "name", type(detector).__name__), **options}


def _load_cache(cache: str | os.PathLike, key: dict) -> dict[Path, np.ndarray]:
    if not Path(cache).is_file():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as data:
            stored_key, paths, rows = str(data["key"]), data["paths"], data["embeddings"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"embedding cache {cache} is unreadable ({exc}); delete it to start afresh") from exc
    try:
        stored = json.loads(stored_key)
    except ValueError:
        stored = None
    if stored != key:
        differ = (
            "; ".join(f"{k} {stored.get(k)!r} (here {v!r})" for k, v in key.items() if stored.get(k) != v)
            if isinstance(stored, dict)
            else "by an older facenet"
        )
        raise DataError(
            f"embedding cache {cache} holds embeddings made otherwise ({differ}); "
            "use another cache file for these settings, or delete it"
        )
    return {Path(p): row for p, row in zip(paths, rows)}


def _save_cache(cache: str | os.PathLike, key: dict, embeddings: dict[Path, np.ndarray]) -> None:
    """Embeddings are personal data: written atomically, owner-only (facenet.fileio)."""
    if not embeddings:
        return

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                key=np.array(json.dumps(key, sort_keys=True)),
                paths=np.array([str(p) for p in embeddings]),
                embeddings=np.stack(list(embeddings.values())),
            )

    atomic_write(cache, write)


def _embed(embedder, paths: list[Path], flip: str, batch_size: int) -> np.ndarray:
    if flip == "none":
        return embedder.embed([str(p) for p in paths], batch_size=batch_size)
    images = [load_image(p) for p in paths]
    plain = embedder.embed(images, batch_size=batch_size)
    flipped = embedder.embed([np.ascontiguousarray(im[:, ::-1]) for im in images], batch_size=batch_size)
    joined = plain + flipped if flip == "sum" else np.concatenate([plain, flipped], axis=1)
    return (joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12)).astype(np.float32)
