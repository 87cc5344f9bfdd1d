"""Embedding many photos: a stream in bounded memory, and one policy for the photos that fail.

Every batch command (``embed``, ``cluster``, ``identify``, ``gallery enroll``) goes through
``embed_photos``. Why a stream: a collection of 100,000 photos must neither be decoded all at
once nor be lost because photo 73,000 has no face. So photos are decoded, detected and cropped
ahead of the network by a few workers, at most a few batches ahead, with the caller's own face
finder (detector options, fallback, minimum face size and recipe as given): threads share it when
its detectors are thread-safe (MTCNN on ONNX Runtime, YuNet), else worker processes each get a copy
of it (MTCNN on PyTorch changes torch's global thread count). Crops are embedded ``batch_size`` at a
time and handed to the caller chunk by chunk.

The policy for failures is the same everywhere: a photo that cannot be read or shows no face is
*skipped* with its reason, the run goes on, and ``BatchReport`` tells the command how to end —
non-zero only with ``--strict`` or when nothing at all succeeded.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from facenet.errors import FaceNetError
from facenet.progress import progress_bar

EXIT_FAILED = 2
NO_CROP = np.empty((0, 0, 3), np.uint8)  # a row's crop once it is embedded and released


@dataclass(frozen=True)
class FaceRow:
    """One embedded face: its photo, its index among the photo's detections (detector order), how many
    faces the detector found there, its box (x1, y1, x2, y2, photo pixels) and detector score
    (NaN with ``--no-detect``). ``crop`` is the model-sized face the embedding was made from; ``notes``
    say why an answer about it may be unreliable (``facenet.align.finder.face_notes``)."""

    path: str
    face: int
    faces_found: int
    box: tuple[float, float, float, float]
    score: float
    crop: np.ndarray = field(repr=False, compare=False)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class BatchReport:
    """What a batch run did with each photo; decides the exit status and writes the sidecar report."""

    command: str
    photos: int = 0
    embedded_photos: int = 0
    faces: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def write(self, path: str | os.PathLike) -> Path:
        """The skipped files and their reasons as JSON (written even when nothing was skipped, so a
        reader can tell "none" from "not recorded")."""
        from facenet.fileio import atomic_write_bytes

        path = Path(path)
        data = {
            "command": self.command,
            "photos": self.photos,
            "embedded_photos": self.embedded_photos,
            "faces": self.faces,
            "skipped": [asdict(s) for s in self.skipped],
        }
        atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
        return path

    def finish(self, strict: bool, report_path: Path | None = None) -> int:
        """Print the skipped photos (one line each, the path once) and a summary; return the exit status:
        ``EXIT_FAILED`` when nothing succeeded or, with ``strict``, when anything was skipped; else 0."""
        if self.photos and not self.embedded_photos:
            return self._nothing_usable(report_path)
        for s in self.skipped:
            print(f"facenet {self.command}: skipped {s.path}: {s.reason}", file=sys.stderr)
        if self.skipped:
            where = f" (listed in {report_path})" if report_path else ""
            print(
                f"facenet {self.command}: {len(self.skipped)} of {self.photos} photo(s) skipped{where}", file=sys.stderr
            )
        if strict and self.skipped:
            print(f"facenet {self.command}: error: --strict and {len(self.skipped)} photo(s) skipped", file=sys.stderr)
            return EXIT_FAILED
        return 0

    def _nothing_usable(self, report_path: Path | None) -> int:
        """Why nothing could be used, in at most two lines: the one photo's reason, or the count, the first
        reason and where every reason is."""
        first = self.skipped[0]
        if self.photos == 1:
            print(f"facenet {self.command}: error: {first.path}: {first.reason}", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"facenet {self.command}: error: none of the {self.photos} photos could be used "
            f"(the first, {first.path}: {first.reason})",
            file=sys.stderr,
        )
        where = f"{report_path} lists" if report_path else "--skipped-report FILE would list"
        print(f"facenet {self.command}: {where} the reason for each photo", file=sys.stderr)
        return EXIT_FAILED


def skip_reason(exc: Exception, path: str | os.PathLike) -> str:
    """The error's message without the path it starts with, so a report line names the path once."""
    message = str(exc)
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def embed_photos(
    embedder,
    paths: list[Path],
    report: BatchReport,
    all_faces: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[tuple[list[FaceRow], np.ndarray]]:
    """Yield ``(rows, embeddings)`` chunks of at most ``batch_size`` faces, in photo order.

    Failing photos go into ``report.skipped`` and the stream goes on. ``workers`` threads or processes
    decode and detect on the CPU (default: none for a handful of photos or for a detector on an
    accelerator, which then detects in this process; else the cores but one, at least one);
    no more than ``2 * batch_size`` photos are in flight at a time, so memory stays bounded
    whatever the number of photos.
    """
    rows: list[FaceRow] = []
    for _path, result in _photo_results(embedder, paths, report, all_faces, batch_size, workers, progress):
        if isinstance(result, Skipped):
            continue
        rows.extend(result)
        while len(rows) >= batch_size:
            chunk, rows = rows[:batch_size], rows[batch_size:]
            yield chunk, embedder.embed_crops([r.crop for r in chunk], batch_size=batch_size)
    if rows:
        yield rows, embedder.embed_crops([r.crop for r in rows], batch_size=batch_size)


@dataclass
class PhotoGroup:
    """Consecutive photos, each done: its face rows (crops released) with their embeddings, or why it
    was skipped. ``photos`` lists every photo of the group in input order, embedded or skipped."""

    photos: list[str]
    rows: list[FaceRow]
    embeddings: np.ndarray
    skipped: list[Skipped]


def embed_photo_groups(
    embedder,
    paths: list[Path],
    report: BatchReport,
    group_size: int,
    all_faces: bool = False,
    batch_size: int = 32,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[PhotoGroup]:
    """``embed_photos`` cut at photo boundaries: groups of ``group_size`` photos (the last may be smaller),
    every face of a photo in the same group, so that each group can be written (a shard) and counted as
    done as a whole. One worker pool serves the whole run; faces are still embedded ``batch_size`` at a time."""
    if group_size < 1:
        raise FaceNetError("the group (shard) size must be at least 1 photo")
    dims = embedder.embedding_size
    group = PhotoGroup([], [], np.empty((0, dims), np.float32), [])
    pending: list[FaceRow] = []  # rows of this group not embedded yet
    blocks: list[np.ndarray] = []

    def embed_pending() -> None:
        nonlocal pending
        if pending:
            blocks.append(embedder.embed_crops([r.crop for r in pending], batch_size=batch_size))
            group.rows.extend(replace(r, crop=NO_CROP) for r in pending)  # crops are not kept: memory stays bounded
            pending = []

    for path, result in _photo_results(embedder, paths, report, all_faces, batch_size, workers, progress):
        group.photos.append(str(path))
        if isinstance(result, Skipped):
            group.skipped.append(result)
        else:
            pending.extend(result)
            if len(pending) >= batch_size:
                embed_pending()
        if len(group.photos) >= group_size:
            embed_pending()
            group.embeddings = np.concatenate(blocks) if blocks else group.embeddings
            yield group
            group, blocks = PhotoGroup([], [], np.empty((0, dims), np.float32), []), []
    if group.photos:
        embed_pending()
        group.embeddings = np.concatenate(blocks) if blocks else group.embeddings
        yield group


def _photo_results(embedder, paths, report, all_faces, batch_size, workers, progress):
    """(path, rows | Skipped) for each photo in input order, counted in ``report`` (skipped photos added to
    it), with the progress bar and the "several faces" notes."""
    if batch_size < 1:
        raise FaceNetError("--batch-size must be at least 1")
    report.photos += len(paths)
    if workers is None:
        detector = getattr(embedder, "detector", None)
        on_accelerator = str(getattr(detector, "device", "cpu")) != "cpu"  # detect there, in this process
        few = len(paths) <= batch_size
        workers = 0 if few or on_accelerator else max(1, (os.cpu_count() or 1) - 1)
    with progress_bar(len(paths), "embedding", unit="photo", enabled=progress and len(paths) > batch_size) as bar:
        for path, result in _found_faces(embedder, paths, all_faces, workers, window=2 * batch_size):
            bar.update()
            if isinstance(result, Skipped):
                report.skipped.append(result)
            else:
                report.embedded_photos += 1
                if not all_faces and (note := several_faces_note(result[0], embedder.recipe.which)):
                    print(note, file=sys.stderr)
                report.faces += len(result)
            yield path, result


def collect(
    chunks: Iterator[tuple[list[FaceRow], np.ndarray]], embedding_size: int, keep_crop=None
) -> tuple[list[FaceRow], np.ndarray]:
    """All rows and one (N, d) matrix from ``embed_photos``; ``keep_crop(crop)`` may shrink each crop
    (thumbnails) or return ``None`` to drop it, so that a long run does not hold every crop."""
    rows, blocks = [], []
    for chunk, emb in chunks:
        if keep_crop is not None:
            chunk = [replace(r, crop=keep_crop(r.crop)) for r in chunk]
        rows.extend(chunk)
        blocks.append(emb)
    matrix = np.concatenate(blocks) if blocks else np.empty((0, embedding_size), np.float32)
    return rows, matrix


def photo_rows(embedder, path, all_faces: bool = False) -> list[FaceRow] | Skipped:
    """The chosen face (or every face) of one photo as rows, or why the photo is skipped."""
    return _rows(lambda: embedder.find_faces(path, all_faces=all_faces, source=str(path)), path)


def _rows(find, path) -> list[FaceRow] | Skipped:
    try:
        return face_rows(find(), path)
    except (FaceNetError, OSError) as exc:
        return Skipped(str(path), skip_reason(exc, path))


def face_rows(found, path) -> list[FaceRow]:
    """``FaceEmbedder.find_faces``'s result as rows, each with its index among the photo's detections."""
    rows = []
    for face in found.faces:
        index = next(i for i, d in enumerate(found.detections) if d is face.detection)
        rows.append(
            FaceRow(
                str(path),
                index,
                len(found.detections),
                face.detection.box,
                face.detection.score,
                face.image,
                face.notes,
            )
        )
    return rows


def several_faces_note(row: FaceRow, which: str) -> str | None:
    """ "photo: 3 faces found; using face 1 (...)" when the photo had several faces, else None: a user
    must be able to tell which person of a group photo a result is about."""
    if row.faces_found < 2:
        return None
    box = ",".join(f"{v:.0f}" for v in row.box)
    return (
        f"{row.path}: {row.faces_found} faces found; using face {row.face} (the {which} one, "
        f"box {box}); --which chooses another"
    )


def _found_faces(embedder, paths, all_faces, workers, window):
    """(path, rows | Skipped) in input order, computed inline or by ``workers`` threads or processes."""
    finder = embedder.finder() if workers > 0 else None
    pool = _pool(finder, workers) if finder is not None else None
    if pool is None:
        for path in paths:
            yield path, photo_rows(embedder, path, all_faces)
        return
    shared = finder if isinstance(pool, ThreadPoolExecutor) else None  # a process uses its own copy
    pending: deque[tuple[Path, Future]] = deque()
    try:
        for path in paths:
            pending.append((path, pool.submit(_finder_rows, shared, str(path), all_faces)))
            if len(pending) >= window:
                done_path, future = pending.popleft()
                yield done_path, future.result()
        while pending:
            done_path, future = pending.popleft()
            yield done_path, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _pool(finder, workers: int) -> Executor | None:
    """Workers that find faces exactly as ``finder`` does: threads sharing it when it is thread-safe, else
    processes holding a copy of it; ``None`` (detect in this process) when it can be neither shared nor
    copied (a detector object that cannot be pickled)."""
    if finder.thread_safe:
        return ThreadPoolExecutor(workers)
    try:
        copy = pickle.dumps(finder)
    except (pickle.PicklingError, TypeError, AttributeError):
        return None
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(copy,)
    )


_worker_finder = None  # a worker process's copy of the caller's finder


def _init_worker(finder: bytes) -> None:
    """A worker process: the caller's finder, torch on one thread (the workers share the cores)."""
    global _worker_finder
    import torch

    torch.set_num_threads(1)
    _worker_finder = pickle.loads(finder)


def _finder_rows(finder, path: str, all_faces: bool):
    """``photo_rows`` on a worker: through ``finder``, or this process's copy of it (``None``)."""
    finder = finder or _worker_finder
    return _rows(lambda: finder.find(path, "all" if all_faces else None, source=path), path)
