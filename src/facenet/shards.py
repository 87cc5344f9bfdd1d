"""A resumable embedding run: a directory of Parquet shards and a manifest (``facenet embed --out DIR/``).

Layout of ``DIR`` (created owner-only, mode 0700; every file 0600)::

    manifest.json         what is done: the model and options, and per shard its file, rows, photos, skipped
    part-00000.parquet    the face rows of up to --shard-size photos (every face of a photo in one shard)
    part-00001.parquet    ...
    skipped.json          the skipped photos of every shard with their reasons (a BatchReport)
    .lock                 held (flock) while a run writes, so that two runs never write one directory

A shard's columns: ``image`` (the photo's absolute path), ``face`` (its index among the photo's detections),
``faces`` (how many the detector found), ``x1 y1 x2 y2`` (box, photo pixels), ``score`` (null without a
detector), ``notes`` (list of strings: why an answer about the face may be unreliable) and ``embedding``
(fixed-size list of float32). Its Parquet key-value metadata ``facenet`` repeats its manifest entry and the
run's identity, so a shard describes itself.

Crash safety. A shard is written to a temporary file, fsynced and renamed; then the manifest is rewritten
the same way. A run killed at any point (SIGKILL included) therefore loses at most the shard in progress.
A re-run reconciles the directory before it goes on:

- temporary files (``.part-*.tmp``, ``.manifest.json.*.tmp``) are leftovers of an interrupted write: deleted;
- a shard listed in the manifest that is missing, unreadable or holds another number of rows than listed is
  dropped from the manifest (and deleted): its photos are embedded again;
- a shard present but not listed (the run died between the shard's rename and the manifest's) is **adopted**
  when it reads back whole, was made by the same model and options, and shares no photo with the listed
  shards; otherwise it is deleted and its photos are embedded again.

Every photo is thus in exactly one listed shard. Photos are keyed by their absolute path, so a resumed run
may be started from another working directory. A skipped photo (unreadable, no face) is done too: it is not
tried again (to retry it, embed it into another directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facenet.batch import BatchReport, PhotoGroup, Skipped
from facenet.errors import FaceNetError

MANIFEST = "manifest.json"
SHARD_SIZE = 1000  # photos per shard unless told (--shard-size): the most a killed run loses
FORMAT = "facenet-embed-shards"
VERSION = 1
METADATA_KEY = b"facenet"
SHARD_RE = re.compile(r"^part-(\d{5,})\.parquet$")
LEFTOVER_RE = re.compile(r"^\.(part-\d{5,}\.parquet|manifest\.json)\..*\.tmp$")


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def run_identity(embedder, detector: str | None, all_faces: bool) -> dict:
    """What decides a run's embeddings: the model (id, size, input, standardisation), its crop recipe with the
    face chosen, the detector used (``None``: inputs are crops), the smallest face sought, every face or one."""
    info = embedder.info
    return {
        "model": embedder.name,
        "embedding_size": int(embedder.embedding_size),
        "input_size": int(info.input_size),
        "standardisation": info.standardisation,
        "recipe": embedder.recipe.to_dict(),
        "detector": detector,
        "min_face": embedder.min_face if detector is not None else None,
        "all_faces": bool(all_faces),
    }


def shard_schema(dims: int, notes: bool = True):
    """The columns of an embedding table: a shard's, or (``notes=False``) a single ``.parquet`` output's."""
    import pyarrow as pa

    fields = [("image", pa.string()), ("face", pa.int32()), ("faces", pa.int32())]
    fields += [(name, pa.float32()) for name in ("x1", "y1", "x2", "y2", "score")]
    fields += [("notes", pa.list_(pa.string()))] if notes else []
    return pa.schema([*fields, ("embedding", pa.list_(pa.float32(), dims))])


class ShardDir:
    """An open shard directory: ``done`` (photos in a listed shard), ``write(group)`` adds a shard."""

    def __init__(self, directory: Path, identity: dict):
        self.directory = directory
        self.identity = identity
        self.shards: list[dict] = []
        self.done: set[str] = set()
        self._lock_fd: int | None = None

    @classmethod
    @contextlib.contextmanager
    def open(cls, directory: str | os.PathLike, identity: dict):
        """Create or resume ``directory`` for a run of ``identity`` (refused when it holds another's), locked
        against a second writer and reconciled (see the module's docstring) before anything is added."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FaceNetError(f"{directory} is not a directory")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self = cls(directory, identity)
        self._lock()
        try:
            self._load()
            yield self
        finally:
            self._unlock()

    def _lock(self) -> None:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no flock on this platform: one writer is the user's responsibility
            pass
        except OSError:
            os.close(fd)
            raise FaceNetError(f"{self.directory}: another run is writing this directory") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def _load(self) -> None:
        path = self.directory / MANIFEST
        changed = False
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise FaceNetError(f"{path}: not a readable manifest ({exc})") from None
            if manifest.get("format") != FORMAT:
                raise FaceNetError(f"{path} is not a facenet shard manifest")
            if manifest.get("version") != VERSION:
                raise FaceNetError(f"{path}: manifest version {manifest.get('version')} (this facenet reads {VERSION})")
            _check_identity(self.directory, manifest["identity"], self.identity)
            self.shards = list(manifest["shards"])
        elif any(self.directory.iterdir()) and not _only_ours(self.directory):
            raise FaceNetError(
                f"{self.directory} is not empty and holds no {MANIFEST}: choose a new or empty directory"
            )
        for leftover in self.directory.iterdir():
            if LEFTOVER_RE.match(leftover.name):
                leftover.unlink()
        kept = []
        for entry in self.shards:
            problem = _shard_problem(self.directory / entry["file"], entry["rows"])
            if problem:
                redo = len(entry["photos"])
                _warn(f"{self.directory / entry['file']}: {problem}; its {redo} photo(s) are embedded again")
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / entry["file"]).unlink()
                changed = True
            else:
                kept.append(entry)
        self.shards = kept
        self.done = {p for entry in self.shards for p in entry["photos"]}
        listed = {entry["file"] for entry in self.shards}
        for shard in sorted(p for p in self.directory.iterdir() if SHARD_RE.match(p.name) and p.name not in listed):
            adopted, problem = self._adoptable(shard)
            if adopted is None:
                _warn(f"{shard}: not in {MANIFEST} and {problem}: deleted, its photos are embedded again")
                shard.unlink()
            else:
                self.shards.append(adopted)
                self.done.update(adopted["photos"])
            changed = True
        self.shards.sort(key=lambda e: e["file"])
        if changed or not path.exists():
            self._write_manifest()

    def _adoptable(self, shard: Path) -> tuple[dict | None, str]:
        """The manifest entry of a shard the manifest missed, or why it cannot be adopted."""
        try:
            import pyarrow.parquet as pq

            meta = json.loads(pq.read_schema(shard).metadata[METADATA_KEY])
            pq.read_table(shard)  # every page reads back
            rows = pq.ParquetFile(shard).metadata.num_rows
        except Exception as exc:  # noqa: BLE001 - any unreadable file is simply not adopted
            return None, f"unreadable ({type(exc).__name__}: {exc})"
        entry = meta.get("entry", {})
        if meta.get("identity") != self.identity:
            return None, "made by another model or options"
        if entry.get("file") != shard.name or entry.get("rows") != rows:
            return None, "its contents disagree with its own description"
        if self.done.intersection(entry["photos"]):
            return None, "it repeats photos of listed shards"
        return entry, ""

    def write(self, group: PhotoGroup) -> dict:
        """Write ``group`` as the next shard (atomically), then list it in the manifest (atomically)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from facenet.fileio import atomic_write

        repeated = self.done.intersection(group.photos)
        if repeated:
            raise FaceNetError(f"{self.directory}: photo(s) already done: {sorted(repeated)[:3]}")
        index = 1 + max((int(SHARD_RE.match(e["file"]).group(1)) for e in self.shards), default=-1)  # type: ignore[union-attr]
        entry: dict[str, Any] = {
            "file": shard_name(index),
            "rows": len(group.rows),
            "photos": list(group.photos),
            "skipped": [{"path": s.path, "reason": s.reason} for s in group.skipped],
        }
        dims = int(self.identity["embedding_size"])
        schema = shard_schema(dims).with_metadata(
            {METADATA_KEY: json.dumps({"identity": self.identity, "entry": entry})}
        )
        rows = group.rows
        emb = np.ascontiguousarray(group.embeddings, np.float32).reshape(-1)
        arrays = [
            pa.array([r.path for r in rows], pa.string()),
            pa.array([r.face for r in rows], pa.int32()),
            pa.array([r.faces_found for r in rows], pa.int32()),
            *(pa.array([r.box[i] for r in rows], pa.float32()) for i in range(4)),
            pa.array([None if r.score != r.score else r.score for r in rows], pa.float32()),
            pa.array([list(r.notes) for r in rows], pa.list_(pa.string())),
            pa.FixedSizeListArray.from_arrays(pa.array(emb, pa.float32()), dims),
        ]
        table = pa.Table.from_arrays(arrays, schema=schema)
        atomic_write(self.directory / entry["file"], lambda tmp: pq.write_table(table, str(tmp)))
        self.shards.append(entry)
        self.done.update(group.photos)
        self._write_manifest()
        return entry

    def _write_manifest(self) -> None:
        from facenet.fileio import atomic_write_bytes

        manifest = {"format": FORMAT, "version": VERSION, "identity": self.identity, "shards": self.shards}
        atomic_write_bytes(self.directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())

    def report(self) -> BatchReport:
        """Every photo of every listed shard as one ``BatchReport`` (this run's and earlier runs')."""
        skipped = [Skipped(s["path"], s["reason"]) for e in self.shards for s in e["skipped"]]
        photos = sum(len(e["photos"]) for e in self.shards)
        return BatchReport(
            "embed",
            photos=photos,
            embedded_photos=photos - len(skipped),
            faces=sum(e["rows"] for e in self.shards),
            skipped=skipped,
        )


def _only_ours(directory: Path) -> bool:
    """Only files a shard run writes (a run killed before its first manifest)."""
    return all(
        p.name in (".lock", "skipped.json") or SHARD_RE.match(p.name) or LEFTOVER_RE.match(p.name)
        for p in directory.iterdir()
    )


def _check_identity(directory: Path, stored: dict, wanted: dict) -> None:
    if stored == wanted:
        return
    differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    detail = "; ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} now" for k in differ)
    raise FaceNetError(
        f"{directory} holds embeddings made with other settings ({detail}): resume it with the same "
        "--model and options, or write into another directory"
    )


def _shard_problem(path: Path, rows: int) -> str:
    """Why a listed shard cannot be trusted ("" when it can): missing, unreadable footer, other row count."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return "missing"
    try:
        found = pq.ParquetFile(path).metadata.num_rows
    except Exception as exc:  # noqa: BLE001 - a truncated or overwritten file
        return f"unreadable ({type(exc).__name__})"
    return "" if found == rows else f"{found} rows where the manifest lists {rows}"


def _warn(message: str) -> None:
    print(f"facenet embed: warning: {message}", file=sys.stderr)


@dataclass
class EmbeddedShards:
    """The rows of a shard directory, in shard order: ``paths[i]`` is the photo of ``embeddings[i]``."""

    paths: list[str]
    embeddings: np.ndarray
    faces: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    notes: list[tuple[str, ...]]
    model: str
    identity: dict
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def read_shards(directory: str | os.PathLike) -> EmbeddedShards:
    """Read the shards a directory's manifest lists (``facenet embed PHOTOS --out DIR/``), for ``cluster`` and
    any other consumer of embeddings: ``paths`` (one per row: the photo's absolute path; a photo with
    ``--all-faces`` has a row per face, ``faces[i]`` its index), ``embeddings`` (N, d) unit float32 rows,
    ``boxes`` (N, 4), ``scores`` (NaN without a detector), ``notes``, the ``model`` id every row was made
    with, the run's ``identity`` (model and options) and the ``skipped`` photos with their reasons.

    Only listed shards are read, so a directory being written (or left by a killed run) reads as its done
    part; nothing is changed on disk (a re-run of ``facenet embed`` reconciles). A listed shard that is
    missing or holds another number of rows than listed raises ``FaceNetError``.
    """
    import pyarrow.parquet as pq

    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FaceNetError(
            f"{directory}: no {MANIFEST} (not a directory written by facenet embed --out DIR/)"
        ) from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise FaceNetError(f"{path} is not a facenet shard manifest of version {VERSION}")
    identity = manifest["identity"]
    dims = int(identity["embedding_size"])
    paths: list[str] = []
    blocks: list[np.ndarray] = []
    faces: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    notes: list[tuple[str, ...]] = []
    for entry in manifest["shards"]:
        shard = directory / entry["file"]
        try:
            table = pq.read_table(shard)
        except Exception as exc:  # noqa: BLE001
            raise FaceNetError(f"{shard}: unreadable shard ({type(exc).__name__}: {exc})") from None
        if table.num_rows != entry["rows"]:
            raise FaceNetError(f"{shard}: {table.num_rows} rows where {MANIFEST} lists {entry['rows']}")
        paths.extend(table.column("image").to_pylist())
        emb = table.column("embedding").combine_chunks()
        blocks.append(emb.values.to_numpy(zero_copy_only=False).reshape(-1, dims))
        faces.append(table.column("face").to_numpy())
        boxes.append(np.stack([table.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1))
        scores.append(table.column("score").to_numpy(zero_copy_only=False).astype(np.float32))
        notes.extend(tuple(n) for n in table.column("notes").to_pylist())
    return EmbeddedShards(
        paths=paths,
        embeddings=np.concatenate(blocks).astype(np.float32) if blocks else np.empty((0, dims), np.float32),
        faces=np.concatenate(faces).astype(np.int64) if faces else np.empty(0, np.int64),
        boxes=np.concatenate(boxes).astype(np.float32) if boxes else np.empty((0, 4), np.float32),
        scores=np.concatenate(scores) if scores else np.empty(0, np.float32),
        notes=notes,
        model=identity["model"],
        identity=identity,
        skipped=[Skipped(s["path"], s["reason"]) for e in manifest["shards"] for s in e["skipped"]],
    )
