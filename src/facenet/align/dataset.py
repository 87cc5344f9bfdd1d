"""Align a whole folder-per-identity dataset: SRC/<person>/<image> -> DST/<person>/<image stem>.png.

Resumable: an image whose output already exists is skipped, and every output is written
atomically (facenet.fileio), so a killed run leaves no half-written file and simply continues
when started again. Images where no face was found are retried on a rerun (they leave no output).
Source files are only ever read. A JSON report lists images with no face, several faces, or
unreadable data, and ``recipe.json`` records how the crops were made (detector, mode, relative
margin, template, face choice, size): ``facenet train`` copies it into the model file, so the
model later cuts faces from photos exactly as its training data was cut. Images whose crops would
share a file (``a.jpg`` and ``a.png``) are refused before anything is written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from facenet.align.base import get_detector
from facenet.align.crop import WHICH, Recipe
from facenet.align.finder import FaceFinder
from facenet.data.images import IMAGE_SUFFIXES
from facenet.errors import DataError, FaceNetError, NoFaceError
from facenet.fileio import atomic_write, atomic_write_bytes
from facenet.progress import progress_bar

REPORT_NAME = "align_report.json"
RECIPE_NAME = "recipe.json"


@dataclass
class AlignSettings:
    recipe: Recipe = field(default_factory=Recipe)
    size: int = 160
    which: str | None = None  # None: the recipe's choice; "all": every face
    detector_options: dict = field(default_factory=dict)
    fallback: str | None = None  # "center": centre crop when no face is found


def write_recipe(dst: Path, settings: AlignSettings) -> None:
    """``DST/recipe.json``: how the crops were made; refuses to mix recipes in one folder."""
    recipe = {**settings.recipe.to_dict(), "size": settings.size}
    path = dst / RECIPE_NAME
    earlier = read_recipe(dst)
    if earlier is not None and earlier != recipe:
        raise DataError(
            f"{dst} holds crops made with another recipe ({earlier}); align into a new folder or delete it first"
        )
    atomic_write_bytes(path, json.dumps(recipe, indent=2, sort_keys=True).encode())


def read_recipe(folder: str | os.PathLike) -> dict | None:
    """The recipe an aligned folder was made with (with its ``size``), or None for other folders."""
    path = Path(folder) / RECIPE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        Recipe.from_dict(data)  # validates
        return data
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is unreadable ({exc}); delete it or re-align the folder") from None


@dataclass
class AlignReport:
    images: int = 0
    aligned: int = 0
    skipped: int = 0  # outputs already present (resumed run)
    faces_written: int = 0
    fallback_center: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    several_faces: dict[str, int] = field(default_factory=dict)
    bad_image: dict[str, str] = field(default_factory=dict)


def find_images(src: Path) -> list[Path]:
    """Image files one level down (one sub-folder per identity), sorted."""
    return sorted(p for p in src.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def output_path(src: Path, dst: Path, image: Path, index: int | None = None) -> Path:
    stem = image.stem if index is None else f"{image.stem}_{index}"
    return dst / image.parent.relative_to(src) / f"{stem}.png"


def align_dataset(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    settings: AlignSettings,
    workers: int = 1,
    report_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> AlignReport:
    """Align every image under ``src`` into ``dst``; returns (and writes as JSON) the report."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    _check_folders(src, dst, settings)
    images = find_images(src)
    _check_output_names(src, dst, images)
    write_recipe(dst, settings)
    report_file = Path(report_path) if report_path else dst / REPORT_NAME
    report = AlignReport(images=len(images))
    earlier = _read_report(report_file)
    todo = []
    for image in images:
        if output_path(src, dst, image).exists() or output_path(src, dst, image, 0).exists():
            report.skipped += 1
            rel = str(image.relative_to(src))  # keep what the earlier run noted about this image
            if rel in earlier.several_faces:
                report.several_faces[rel] = earlier.several_faces[rel]
            if rel in earlier.fallback_center:
                report.fallback_center.append(rel)
        else:
            todo.append(image)
    jobs = [(str(src), str(dst), str(image)) for image in todo]
    bar = progress_bar(len(jobs), "align", unit="img", enabled=progress)
    pool = None
    try:
        if workers <= 1 or len(jobs) <= 1:
            _init_worker(settings, threads=0)
            results = map(_align_one, jobs)
        else:
            # spawn, not fork: forking a process whose torch/OpenMP thread pools exist can deadlock
            pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(settings, 1),
            )
            results = pool.map(_align_one, jobs, chunksize=8)
        for rel, status, detail in results:
            _record(report, rel, status, detail)
            bar.update()
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
        atomic_write_bytes(report_file, json.dumps(asdict(report), indent=2).encode())
    return report


def _read_report(path: Path) -> AlignReport:
    """The report of an earlier run into the same folder, or an empty one if absent or unreadable."""
    try:
        saved = json.loads(path.read_text())
        return AlignReport(several_faces=dict(saved["several_faces"]), fallback_center=list(saved["fallback_center"]))
    except (OSError, ValueError, KeyError, TypeError):
        return AlignReport()


def _check_folders(src: Path, dst: Path, settings: AlignSettings) -> None:
    if not src.is_dir():
        raise DataError(f"{src}: not a folder; give a dataset folder with one sub-folder per person")
    if dst == src or src in dst.parents or dst in src.parents:
        raise DataError(
            f"output folder {dst} overlaps the source {src}; choose a separate folder (sources are never overwritten)"
        )
    if settings.which not in (None, *WHICH):
        raise FaceNetError(f"which must be one of {WHICH}")
    if settings.fallback not in (None, "center"):
        raise FaceNetError(f"unknown fallback {settings.fallback!r}; the only fallback is 'center'")
    get_detector(settings.recipe.detector, **settings.detector_options)  # fail now, not in every worker


def _check_output_names(src: Path, dst: Path, images: list[Path]) -> None:
    """Refuse, before anything is written, images whose crops would land in one file: ``a.jpg`` and
    ``a.png`` (or ``A.jpg``: one file on a case-insensitive disk) both give ``a.png``, and ``a_0.jpg``
    gives the name of ``a.jpg``'s first face when it holds several."""
    seen: dict[tuple[Path, str], Path] = {}
    for image in images:
        seen.setdefault((image.parent, image.stem.casefold()), image)
    for image in images:
        stem = image.stem.casefold()
        base, _, index = stem.rpartition("_")
        other = seen[(image.parent, stem)]
        if other == image and index.isdigit():
            other = seen.get((image.parent, base), image)
        if other != image:
            raise DataError(
                f"{image.relative_to(src)} and {other.relative_to(src)} would be aligned into the same "
                f"file ({output_path(src, dst, image).relative_to(dst)} or its numbered faces); rename "
                "one of them"
            )


_state: dict = {}  # per process: settings and its own detectors


def _init_worker(settings: AlignSettings, threads: int) -> None:
    if threads:  # one torch/OpenCV thread per worker process: the processes are the parallelism
        import cv2
        import torch

        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
    fallback = get_detector("center") if settings.fallback == "center" else None
    _state.update(
        settings=settings,
        finder=FaceFinder(
            get_detector(settings.recipe.detector, **settings.detector_options),
            settings.recipe,
            settings.size,
            fallback=fallback,
        ),
    )


def _align_one(job: tuple[str, str, str]) -> tuple[str, str, object]:
    """Align one image; returns (relative path, status, detail). Never raises for bad input."""
    src, dst, image = map(Path, job)
    s: AlignSettings = _state["settings"]
    rel = str(image.relative_to(src))
    try:
        found = _state["finder"].find(image, s.which)
    except NoFaceError:
        return rel, "no_face", None
    except FaceNetError as exc:
        return rel, "bad_image", str(exc)
    status, detail = ("several", len(found.detections)) if len(found.detections) > 1 else ("ok", 1)
    if found.fallback:
        status = "fallback"
    for i, face in enumerate(found.faces):
        out = output_path(src, dst, image, i if len(found.faces) > 1 else None)
        atomic_write(out, lambda tmp, crop=face.image: Image.fromarray(np.ascontiguousarray(crop)).save(tmp, "PNG"))
    return rel, status, (detail, len(found.faces))


def _record(report: AlignReport, rel: str, status: str, detail) -> None:
    if status == "no_face":
        report.no_face.append(rel)
        return
    if status == "bad_image":
        report.bad_image[rel] = detail
        return
    found, written = detail
    report.aligned += 1
    report.faces_written += written
    if status == "fallback":
        report.fallback_center.append(rel)
    elif status == "several":
        report.several_faces[rel] = found
