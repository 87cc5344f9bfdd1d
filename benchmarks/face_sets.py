"""The real faces behind the default model's FAR calibration and ``openset_scale.py``, embedded once per
model and cached (``--cache DIR``: the aligned faces in one .npz, LFW in another; nothing is written into
the repository).

* ``lfw``: every photo of ``../shared/data/lfw/images``, its central face (a centred crop where none is
  found, as ``facenet evaluate`` does), split by person (``lfw_calibration_half``): half A is calibrated
  on, half B measured on, never both.
* ``calibration``: LFW's half A and the LFW-free labelled sources of docs/TRAINING_DATA.md, as
  ``scripts/prepare_training_data.py`` cut them (``~/faces/aligned/{pubfig83,glint,celeba}``). The
  default model's FAR table is calibrated on these, pairing faces only within a source (their people
  overlap: 17 Glint people are in PubFig83, and CelebA may hold any of them). The celebrity sources alone
  hold 301 people: too few pairs of look-alikes for the rarest rates, which LFW's 2,900 people add.
* ``distractors`` (``DISTRACTOR_SOURCES``): sources never calibrated on: UTKFace's unlabelled photos (one
  person each as far as anyone knows) and Extended Yale B (38 people). ``openset_scale.py`` enrols the
  calibration sources' faces beside them too: a stranger against a distractor is a pair across sources,
  which calibration never pairs.
* the ``judge`` (``JUDGE``, dlib's ResNet: another network, trained on other faces) decides which
  distractors are people of the LFW photos measured on, as MegaFace's distractors were cleaned of
  FaceScrub's people. It looks at every photo as dlib's own pipeline does (``judge_own_chips``: dlib's HOG
  detector, its 5 landmarks and its 150 px chip of the original photo), where it tells people apart best.
"""

from __future__ import annotations

import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from facenet.data.images import IMAGE_SUFFIXES
from facenet.distances import squared_l2

CALIBRATION_SOURCES = ("pubfig83", "glint", "celeba")
DISTRACTOR_SOURCES = ("utk", "yale")
JUDGE = "dlib"
# The distractor sources whose photos may show anyone, LFW's people included: UTKFace's web photos and
# CelebA's celebrities. Yale B's are 38 lab volunteers; the PubFig83 / Glint people named in LFW are left out
# by name and the rest are named people who are not in LFW.
JUDGED_SOURCES = ("utk", "celeba")


def aligned_faces(root: Path, sources) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels "<source>/<person>", source of each) of the aligned folders ``root/<source>/<person>/*``;
    UTK's unlabelled photos (``utk/photos/*``) are one person each."""
    paths, labels, groups = [], [], []
    for source in sources:
        folder = root / source
        if not folder.is_dir():
            raise SystemExit(f"{folder} not found: prepare it as docs/TRAINING_DATA.md says")
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            person = path.stem if source == "utk" else path.parent.name
            paths.append(path)
            labels.append(f"{source}/{person}")
            groups.append(source)
    return paths, np.array(labels), np.array(groups)


def faces_not_in_lfw(root: Path, sources) -> tuple[list[Path], np.ndarray, np.ndarray, set[str]]:
    """``aligned_faces`` less the PubFig83 / Glint people ``scripts/prepare_training_data.py`` found named in
    LFW (``root/../lfw_overlap.txt``, written whenever those sources are prepared), and those names."""
    listed = root.parent / "lfw_overlap.txt"
    named = {name for name in listed.read_text().splitlines() if name} if listed.exists() else set()
    paths, labels, groups = aligned_faces(root, sources)
    keep = np.array([label.split("/", 1)[1] not in named for label in labels], bool)
    return [p for p, k in zip(paths, keep) if k], labels[keep], groups[keep], named


def embed_cached(paths: list[Path], cache: Path, embed, batch: int = 256) -> np.ndarray:
    """``embed(chunk of paths)`` for every path, cached in ``cache`` (.npz) by absolute path (``../x`` and
    ``/abs/x`` are one photo) and saved after each chunk, so a long run on a loaded machine resumes."""
    done = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            done = dict(zip(data["paths"].tolist(), data["embeddings"]))
    key = {p: str(Path(p).resolve()) for p in paths}
    todo = [p for p in paths if key[p] not in done]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        done.update(zip((key[p] for p in chunk), embed(chunk)))
        np.savez(cache, paths=np.array(list(done)), embeddings=np.stack(list(done.values())))
        print(f"\rembedding {cache.stem}: {len(done)}/{len(paths)}", end="", flush=True)
    if todo:
        print()
    return np.stack([done[key[p]] for p in paths])


def read_crop(path: Path, size: int | None = None) -> np.ndarray:
    image = Image.open(path).convert("RGB")
    return np.asarray(image if size is None else image.resize((size, size)))


def embed_aligned(embedder, paths: list[Path], cache: Path) -> np.ndarray:
    """Embeddings of ready model-sized crops (``embed_crops``), cached in ``cache`` (.npz) by path."""
    size = embedder.info.input_size
    return embed_cached(paths, cache, lambda chunk: embedder.embed_crops([read_crop(p, size) for p in chunk]))


def lfw_faces(
    images: Path, embedder, cache: Path, half: str | None = None
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, embeddings) of every LFW photo, or of one ``half`` ("a" or "b": ``lfw_calibration_half``,
    so a measurement on half B embeds only that). ``embedder`` takes the central face, falling back to the
    centre (see ``lfw_embedder``)."""
    paths = lfw_photos(images, half)

    def embed(chunk):
        return embedder.embed_crops([embedder.find_faces(str(p)).faces[0].image for p in chunk])

    return paths, np.array([p.parent.name for p in paths]), embed_cached(paths, cache, embed, batch=64)


def lfw_photos(images: Path, half: str | None = None) -> list[Path]:
    """Every LFW photo under ``images``, sorted, or those of one ``half`` ("a" or "b")."""
    paths = sorted(images.glob("*/*.jpg"))
    if half is None:
        return paths
    in_a = lfw_calibration_half(np.array([p.parent.name for p in paths]))
    return [p for p, a in zip(paths, in_a) if a == (half == "a")]


def lfw_calibration_half(labels: np.ndarray) -> np.ndarray:
    """A mask of LFW's half A (calibrated on) by a fixed hash of each person's name; the rest is half B."""
    return np.array([zlib.crc32(str(name).encode()) % 2 == 0 for name in labels])


def lfw_embedder(model: str | None = None):
    """The default (or ``model``) embedder as ``facenet evaluate`` runs it on LFW: central face, centre fallback."""
    import facenet
    from facenet.align import get_detector

    embedder = facenet.load_model(model, which="central")
    embedder.fallback_detector = get_detector("center")
    return embedder


def judge_own_chips(paths: list[Path], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(the judge's embeddings, a mask of the photos where dlib's HOG found no face) of ``paths``, original
    photos seen as dlib's pipeline sees them: HOG (one upsampling), 5 landmarks, its 150 px chip, embedded by
    the converted network (dlib's C++ network to 1e-4). Where HOG finds nothing, dlib's centred box stands in.
    Cached in ``cache``; the last column holds the no-face flag."""
    import facenet
    from facenet.baselines.dlib_model import DlibEmbedder

    finder, judge = DlibEmbedder(upsample=1), facenet.load_model(JUDGE, detect=False)

    def embed(chunk):
        chips, missed = [], []
        for path in chunk:
            before = finder.fallbacks
            chips.append(finder.chip(path))
            missed.append(finder.fallbacks > before)
        return np.hstack([judge.embed_crops(chips), np.array(missed, np.float32)[:, None]])

    rows = embed_cached(paths, cache, embed, batch=128)
    return rows[:, :-1], rows[:, -1] > 0


def source_photos(faces: Path, aligned: list[Path]) -> list[Path]:
    """The photo each aligned crop of a staged source (UTKFace, CelebA, Yale B) was cut from:
    ``scripts/prepare_training_data.py`` links them under ``<faces>/../staged/<source>/<folder>/`` and writes
    ``<faces>/<source>/<folder>/<stem>.png`` for each."""
    staged = faces.parent / "staged"
    by_stem: dict[Path, dict[str, Path]] = {}
    photos = []
    for crop in aligned:
        folder = staged / crop.relative_to(faces).parent
        if folder not in by_stem:
            by_stem[folder] = {p.stem: p for p in folder.iterdir()} if folder.is_dir() else {}
        if crop.stem not in by_stem[folder]:
            raise SystemExit(f"{crop}: no photo {folder / crop.stem}.* it was cut from; stage the sources again")
        photos.append(by_stem[folder][crop.stem])
    return photos


def nearest(queries: np.ndarray, refs: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 distance, index) of each query's nearest row of ``refs``, a chunk of queries at a time."""
    dist, index = np.empty(len(queries), np.float64), np.empty(len(queries), np.int64)
    for start in range(0, len(queries), chunk):
        d = squared_l2(queries[start : start + chunk], refs, pairwise=True)
        index[start : start + len(d)] = d.argmin(axis=1)
        dist[start : start + len(d)] = d[np.arange(len(d)), index[start : start + len(d)]]
    return dist, index


def timed_calibration(embeddings, labels, groups, on: str, against=None):
    """``facenet.evaluate.calibrate.calibrate`` with its time and peak Python/NumPy memory (tracemalloc), printed:
    (result, seconds, peak MiB)."""
    from facenet.evaluate.calibrate import calibrate

    tracemalloc.start()
    started = time.perf_counter()
    result = calibrate(embeddings, labels, groups, on=on, against=against)
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    d = result.details
    pairs = "different-identity pairs" if against is None else "different-identity pairs across the two sets"
    print(
        f"calibrated on {d['faces']:,} faces of {d['people']:,} people: {d['impostor_pairs']:,} {pairs}, "
        f"{d['genuine_pairs']:,} same-identity; {seconds:.0f} s, peak {peak:.0f} MiB"
    )
    return result, seconds, peak
