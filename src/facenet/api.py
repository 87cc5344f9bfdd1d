"""The small public API: load a model, embed photos, compare embeddings, verify two faces, enrol a person."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from facenet.data.images import ImageLike
from facenet.distances import squared_l2
from facenet.embedder import FaceEmbedder, load_embedder

if TYPE_CHECKING:
    from facenet.evaluate.calibrate import OpenSetPromise


@dataclass(frozen=True)
class Verification:
    """The outcome of comparing two faces; ``distance`` and ``threshold`` are squared L2. ``boxes`` are
    the faces compared, one per photo (x1, y1, x2, y2), and ``notes`` why the answer may be unreliable."""

    distance: float
    threshold: float
    same: bool
    boxes: tuple = ()
    notes: tuple[str, ...] = ()
    compared_as: str = "plain"  # "masked": one face's lower half covered, the model's masked threshold used


@dataclass(frozen=True)
class Identified:
    """One face of a photo and who it is: ``matches`` best first (empty: unknown, the open set),
    squared-L2 scores by the gallery's policy; ``notes`` say why the answer may be unreliable.
    ``open_set`` is what the gallery's size gets with the model (``facenet.evaluate.calibrate.OpenSetPromise``:
    ``expected_far``, the chance a stranger is taken for someone; ``expected_tar``, the share of enrolled
    people's photos identified; ``met`` False and a ``note`` when the asked rate cannot be kept)."""

    box: tuple[float, float, float, float]
    score: float
    matches: list
    notes: tuple[str, ...] = ()
    open_set: OpenSetPromise | None = None

    @property
    def known(self) -> bool:
        return bool(self.matches)

    @property
    def compared_as(self) -> str:
        """ "masked" where the face's lower half is covered and its own threshold was used, else "plain"."""
        return "masked" if self.open_set is not None and self.open_set.masked else "plain"


def load_model(
    path: str | os.PathLike | None = None,
    device: str = "cpu",
    detector=None,
    detect: bool = True,
    backend: str = "auto",
    which: str | None = None,
) -> FaceEmbedder:
    """Load a model file as an embedder; without ``path``, the installed pretrained default.

    The same defaults as the command line: faces are found in whole photos by the detector the
    model's recipe names (or ``detector``, a name such as ``"yunet"`` or a detector object) and
    cut as the recipe says; ``detect=False`` takes every image as an already-cropped face.
    ``backend``: ``"auto"`` (ONNX Runtime on CPU), ``"torch"`` or ``"onnx"``. ``which``:
    ``"largest"`` or ``"central"`` face of a photo with several (default: the recipe's).
    """
    return load_embedder(path, device=device, detector=detector, detect=detect, backend=backend, which=which)


@lru_cache(maxsize=2)
def _cached_model(path: str | None) -> FaceEmbedder:
    return load_model(path)


def _resolve(model: FaceEmbedder | str | os.PathLike | None) -> FaceEmbedder:
    if model is None or isinstance(model, (str, os.PathLike)):
        return _cached_model(None if model is None else os.fspath(model))
    return model


def embed(
    images: ImageLike | Sequence[ImageLike], model: FaceEmbedder | str | None = None, batch_size: int = 32
) -> np.ndarray:
    """Unit embeddings, one row per image; a single image gives a single row (shape (1, d))."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    return _resolve(model).embed(images, batch_size=batch_size)


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Squared L2 distance (range [0, 4] for unit embeddings) between rows of ``a`` and ``b``."""
    d = squared_l2(a, b)
    return float(d) if np.ndim(d) == 0 else d


def verify(
    a: ImageLike,
    b: ImageLike,
    model: FaceEmbedder | str | None = None,
    threshold: float | None = None,
    which: str | None = None,
) -> Verification:
    """Are ``a`` and ``b`` the same person? Distance below the model's calibrated threshold means yes; where
    one face is masked and the other is not, below the model's threshold for masked pairs (``compared_as``
    says which). Of a photo with several faces the ``which`` one is compared ("largest", "central"; default:
    the recipe's)."""
    from facenet.occluder import lower_face_covered, pair_threshold

    embedder = _resolve(model)
    fa, fb = (embedder.find_faces(photo, which=which).faces[0] for photo in (a, b))
    rows = embedder.embed_crops([fa.image, fb.image])
    masked = False
    if threshold is None:
        threshold, masked = pair_threshold(embedder, lower_face_covered(embedder, [fa.image, fb.image], rows))
    result = compare(rows[0], rows[1], threshold)
    boxes, notes = (fa.detection.box, fb.detection.box), fa.notes + fb.notes
    return Verification(result.distance, result.threshold, result.same, boxes, notes, "masked" if masked else "plain")


def identify(
    photo: ImageLike,
    gallery: str | os.PathLike | None = None,
    model: FaceEmbedder | str | None = None,
    top_k: int = 5,
    far: float | None = None,
    which: str = "all",
    index: str = "auto",
) -> list[Identified]:
    """Who is in ``photo``? Every face (``which="all"``; or the "largest" / "central" one), each with up
    to ``top_k`` enrolled people within the open-set threshold that ``far`` (the wanted chance that a
    stranger is taken for someone; default 1e-2) gives for the gallery's size; a masked face gets the model's
    masked threshold for that size (``compared_as``). Each answer's ``open_set`` says what that size gets
    (and, with ``met`` False and a ``note``, when the asked rate cannot be kept).
    ``index`` is how the gallery is searched (``Gallery.open``; "pgvector" for a PostgreSQL gallery searched
    inside the database)."""
    from facenet.evaluate.calibrate import DEFAULT_OPENSET_FAR, face_promises
    from facenet.gallery import Gallery
    from facenet.occluder import lower_face_covered
    from facenet.paths import gallery_location

    embedder = _resolve(model)
    faces = embedder.find_faces(photo, which=which).faces
    crops = [f.image for f in faces]
    rows = embedder.embed_crops(crops)
    covered = lower_face_covered(embedder, crops, rows)
    with Gallery.open(
        gallery_location(gallery), embedder.name, embedder.embedding_size, create=False, index=index
    ) as g:
        promises = face_promises(embedder, g.comparisons(), covered, far or DEFAULT_OPENSET_FAR)
        matches = g.identify(rows, k=top_k, threshold=np.array([p.threshold for p in promises]))
    return [Identified(f.detection.box, f.detection.score, m, f.notes, p) for f, m, p in zip(faces, matches, promises)]


def enroll(
    name: str,
    photos: Sequence[ImageLike],
    gallery: str | os.PathLike | None = None,
    model: FaceEmbedder | str | None = None,
    policy: str | None = None,
    merge: bool = True,
):
    """Enrol ``name`` from several photos at once (every photo must show a face) in the gallery at ``gallery``
    (default: the CLI's, ``facenet.paths.gallery_location``); returns the person with their face count.

    A new gallery records ``policy`` (``facenet.gallery.policy``; ``None``: the default), which decides
    how the person's photos are combined into one score when identifying. ``merge=False`` refuses a
    name already enrolled.
    """
    from facenet.gallery import Gallery, Record
    from facenet.paths import gallery_location

    embedder = _resolve(model)
    photos = list(photos) if isinstance(photos, (list, tuple)) else [photos]
    rows = embedder.embed(photos)
    with Gallery.open(gallery_location(gallery), embedder.name, embedder.embedding_size, policy=policy) as g:
        g.enroll_many([Record(name, rows, [_label(p, i) for i, p in enumerate(photos)])], merge=merge)
        return g.store.people(name.strip())[0]


def _label(photo, number: int) -> str:
    """A photo's source label in the gallery: its file name, never pixels."""
    return os.path.basename(os.fspath(photo)) if isinstance(photo, (str, os.PathLike)) else f"photo {number + 1}"


def compare(ea: np.ndarray, eb: np.ndarray, threshold: float) -> Verification:
    """The verification decision for two embeddings: same person when closer than ``threshold``."""
    d = float(squared_l2(ea, eb))
    return Verification(distance=d, threshold=float(threshold), same=d < float(threshold))
