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
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from facenet.data.images import IMAGE_SUFFIXES
from facenet.evaluate.protocol import embed_paths

CALIBRATION_SOURCES = ("pubfig83", "glint", "celeba")
DISTRACTOR_SOURCES = ("utk", "yale")


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


def embed_aligned(embedder, paths: list[Path], cache: Path, batch: int = 256) -> np.ndarray:
    """Embeddings of ready model-sized crops (``embed_crops``), cached in ``cache`` (.npz) by path."""
    done = {}
    if cache.exists():
        with np.load(cache, allow_pickle=False) as data:
            done = dict(zip(data["paths"].tolist(), data["embeddings"]))
    todo = [p for p in paths if str(p) not in done]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        crops = [np.asarray(Image.open(p).convert("RGB").resize((embedder.info.input_size,) * 2)) for p in chunk]
        done.update(zip(map(str, chunk), embedder.embed_crops(crops)))
        print(f"\rembedding {cache.stem}: {len(done)}/{len(paths)}", end="", flush=True)
    if todo:
        print()
        np.savez(cache, paths=np.array(list(done)), embeddings=np.stack(list(done.values())))
    return np.stack([done[str(p)] for p in paths])


def lfw_faces(images: Path, embedder, cache: Path) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(paths, labels, embeddings) of every LFW photo; ``embedder`` takes the central face, falling back to
    the centre (see ``lfw_embedder``)."""
    paths = sorted(images.glob("*/*.jpg"))
    emb, failed = embed_paths(embedder, paths, "none", 32, True, cache)
    paths = [p for p in paths if p in emb]
    return paths, np.array([p.parent.name for p in paths]), np.stack([emb[p] for p in paths])


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
