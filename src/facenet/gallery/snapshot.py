"""Index snapshots: a process starts from the FAISS index saved with the gallery, then catches up.

Without a snapshot every process rebuilds its index from the store when it opens the gallery: minutes
for HNSW at a million faces. A snapshot is one ``.npz`` file holding the serialized FAISS index
(``faiss.serialize_index``), the face ids it holds with their owners (person ids; no names), the
change-feed position ``seq`` it reflects, the gallery's random ``gallery_id``, the model, and a CRC32 of
all of it. Where it lives:

* a gallery file ``G``: beside it, ``G.index`` (mode 0600, like the gallery);
* a PostgreSQL gallery: ``$XDG_CACHE_HOME/facenet/gallery-index/<sha256 of the URL>.index`` (each
  machine keeps its own; the URL never holds a password).

**Opening.** The snapshot is used only if it reads back whole (CRC), belongs to this gallery
(``gallery_id``: a copy exported, or another gallery later created at the same path, has its own), was
made for the same model, embedding size, storage and index kind, and is not ahead of the store (``seq``
<= the feed's head: a store restored from an older backup). Then the store is asked, in one read, how
many faces added up to ``seq`` are still present and the sum of their ids; they must be exactly the
snapshot's faces less those removed since, and a sample of the snapshot's vectors (its newest faces and
some at random) must equal the store's. Only then does the process catch up through the change feed
from ``seq`` like any other (enrolments and removals made since). Anything wrong: a log line saying why,
and the index is rebuilt from the store (never a wrong answer), then a new snapshot is written.

The feed is never compacted (removal tombstones are kept, ``facenet.gallery.store``), so a snapshot
however old can always catch up; removals replay exactly (a removed face id is skipped or deleted).

**Removals.** Faces are personal data: a snapshot holding a removed person's embedding is deleted (not
rewritten in place) by the process that removes them, before ``Gallery.remove`` returns, and by every
process that sees the removal in the feed. A process holding an index writes a new snapshot in the
background; its HNSW graph still holds removed nodes until its next rebuild, so their vectors are zeroed in
the copy that is written. A gallery file's removal is wiped from its pages (``secure_delete``); the
deleted snapshot file is freed like any deleted file.

**When one is written** (atomically: a temporary file, then ``os.replace``): after a process rebuilt its
index from the store, after a background index build (the HNSW switch, the rebuild after removals), after
a removal, at ``close`` when at least ``CHANGES_BEFORE_CLOSE`` faces changed since the last one, and by
``facenet gallery snapshot``. Automatic snapshots start at ``MIN_FACES`` faces (a smaller index rebuilds
in well under a second); the command writes one whatever the size. Writing happens on a background
thread; only taking the copy holds the gallery (about a second at a million faces).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facenet.errors import GalleryError
from facenet.gallery.store import is_url
from facenet.paths import cache_home

log = logging.getLogger(__name__)

FORMAT = 1
SUFFIX = ".index"
CHANGES_BEFORE_CLOSE = 1000
MIN_FACES = 10_000
_SAMPLE = 32  # newest and random faces whose vectors are compared with the store's


class SnapshotError(GalleryError):
    """A snapshot that cannot be used (the message says why)."""


@dataclass
class Snapshot:
    header: dict
    index: np.ndarray  # FAISS bytes
    removed: np.ndarray  # HNSW ids skipped (their vectors zeroed)
    ids: np.ndarray  # live faces
    persons: np.ndarray  # their owners

    @property
    def seq(self) -> int:
        return int(self.header["seq"])


def snapshot_path(location: str | os.PathLike) -> Path:
    """Where the snapshot of the gallery at ``location`` lives (see the module docstring)."""
    if is_url(location):
        return cache_home() / "gallery-index" / (hashlib.sha256(str(location).encode()).hexdigest() + SUFFIX)
    path = Path(location).expanduser()
    return path.with_name(path.name + SUFFIX)


def _crc(header: dict, arrays: list[np.ndarray]) -> int:
    crc = zlib.crc32(json.dumps(header, sort_keys=True).encode())
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data, crc)
    return crc


def write(path: Path, snap: Snapshot) -> int:
    """Write ``snap`` to ``path`` atomically, owner-only; returns its size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    header = dict(snap.header, crc=_crc(snap.header, [snap.index, snap.removed, snap.ids, snap.persons]))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), np.uint8),
                index=snap.index,
                removed=snap.removed,
                ids=snap.ids,
                persons=snap.persons,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.stat().st_size


def read_header(path: Path) -> dict:
    """The header alone (cheap: one small member of the archive)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return json.loads(bytes(data["header"]).decode())
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated, not a zip, not ours
        raise SnapshotError(f"unreadable ({type(exc).__name__}: {exc})") from exc


def read(path: Path) -> Snapshot:
    """The snapshot at ``path``, whole and intact (CRC), or SnapshotError saying why not."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            snap = Snapshot(
                {k: v for k, v in header.items() if k != "crc"},
                *(data[k] for k in ("index", "removed", "ids", "persons")),
            )
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise SnapshotError(f"unreadable ({type(exc).__name__}: {exc})") from exc
    if header.get("format") != FORMAT:
        raise SnapshotError(f"format {header.get('format')!r}, not {FORMAT}")
    if _crc(snap.header, [snap.index, snap.removed, snap.ids, snap.persons]) != header.get("crc"):
        raise SnapshotError("its checksum does not match (damaged)")
    if len(snap.ids) != len(snap.persons):
        raise SnapshotError("damaged (ids and owners differ in number)")
    return snap


def discard(path: Path, before: int | None = None) -> bool:
    """Delete the snapshot at ``path`` (only if it reflects a feed position below ``before``, when given);
    True if one was deleted."""
    try:
        if before is not None:
            try:
                if int(read_header(path).get("seq", -1)) >= before:
                    return False
            except SnapshotError:
                pass
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# -- a gallery's side ------------------------------------------------------------------------------


def capture(gallery) -> Snapshot | None:
    """What ``gallery``'s index holds now (None before its first load); the caller holds its lock."""
    index = gallery._index
    if index is None or gallery._gallery_id is None:  # the id is read by the gallery's own thread
        return None
    kind, data, removed = index.serialize()
    ids = np.fromiter(gallery._face_person.keys(), np.int64, len(gallery._face_person))
    persons = np.fromiter(gallery._face_person.values(), np.int64, len(gallery._face_person))
    header = {
        "format": FORMAT,
        "gallery_id": gallery._gallery_id,
        "model_id": gallery.model_id,
        "embedding_size": gallery.embedding_size,
        "storage": gallery.storage,
        "requested": index.requested,
        "kind": kind,
        "seq": int(gallery._seq),
        "faces": len(ids),
        "written": time.time(),
    }
    return Snapshot(header, data, removed, ids, persons)


def save(gallery, path: Path | None = None) -> tuple[Path, Snapshot, int] | None:
    """Write ``gallery``'s index as a snapshot; (path, snapshot, bytes), or None when there is nothing to write
    or a removal happened since the copy was taken (the next write covers it)."""
    path = path or snapshot_path(gallery.location)
    if gallery._index is not None:
        gallery._index.wait_for_fold()  # before the gallery's lock: its queries go on while new faces go in
    with gallery._lock:
        snap, removals = capture(gallery), gallery._removals_seen
    if snap is None:
        return None
    size = write(path, snap)
    # May run on the writer thread: the store (an SQLite connection belongs to its thread) is not asked.
    if gallery._removals_seen != removals:  # someone was removed meanwhile: this copy may hold them
        discard(path, before=snap.seq + 1)
        return None
    gallery._snapshot_seq, gallery._changed_since_snapshot = snap.seq, 0
    return path, snap, size


def load(gallery) -> int | None:
    """Set ``gallery``'s index from its snapshot if a valid one exists (see the module docstring); the feed
    position it reflects, or None (no snapshot, or one not usable: logged, to be rebuilt)."""
    from facenet.gallery.index import FaceIndex

    path = snapshot_path(gallery.location)
    started = time.perf_counter()
    try:
        snap = read(path)
        _check(gallery, snap)
        index = FaceIndex.deserialize(
            gallery.embedding_size, snap.header["requested"], snap.header["kind"], snap.index, snap.removed
        )
        if len(index) != len(snap.ids):
            raise SnapshotError(f"its index holds {len(index)} faces, its list {len(snap.ids)}")
        _check_store(gallery, snap, index)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a damaged, stale or foreign snapshot is never used: rebuilt from the store
        reason = str(exc) if isinstance(exc, GalleryError) else f"{type(exc).__name__}: {exc}"
        log.warning(
            "gallery %s: index snapshot %s not used: %s; rebuilding the index from the store",
            gallery.location,
            path,
            reason,
        )
        return None
    gallery._install(index, snap.ids, snap.persons, snap.seq)
    log.info(
        "gallery %s: index of %d faces loaded from snapshot %s (feed position %d) in %.2f s",
        gallery.location,
        len(snap.ids),
        path,
        snap.seq,
        time.perf_counter() - started,
    )
    return snap.seq


def _check(gallery, snap: Snapshot) -> None:
    h = snap.header
    if h.get("gallery_id") != gallery._gallery_id:
        raise SnapshotError("it belongs to another gallery (gallery_id differs)")
    for key, want in (
        ("model_id", gallery.model_id),
        ("embedding_size", gallery.embedding_size),
        ("storage", gallery.storage),
        ("requested", gallery._index_kind),
    ):
        if h.get(key) != want:
            raise SnapshotError(f"it was made for {key} {h.get(key)!r}, not {want!r}")


def _check_store(gallery, snap: Snapshot, index) -> None:
    """The store agrees with the snapshot at its feed position (one read), and on a sample of vectors."""
    head, count, total, removed_since = gallery.store.faces_upto(snap.seq)
    if snap.seq > head:
        raise SnapshotError(f"it is ahead of the store (feed position {snap.seq} > {head}; restored from a backup?)")
    present = snap.ids[~np.isin(snap.ids, removed_since)] if len(removed_since) else snap.ids
    if (len(present), int(present.sum())) != (count, total):
        raise SnapshotError(
            f"the store holds {count} faces up to feed position {snap.seq}, the snapshot {len(present)} "
            "(a stale or foreign snapshot)"
        )
    if not len(present):
        return
    rng = np.random.default_rng()
    sample = np.unique(np.concatenate([np.sort(present)[-_SAMPLE:], rng.choice(present, min(_SAMPLE, len(present)))]))
    stored = gallery.store.stored_vectors(sample.tolist())
    sample = np.array([i for i in sample.tolist() if i in stored], np.int64)  # removed meanwhile: not comparable
    if len(sample) and not np.allclose(
        index.vectors(sample), np.stack([stored[i] for i in sample.tolist()]), atol=1e-6
    ):
        raise SnapshotError("its vectors differ from the store's (a stale or foreign snapshot)")


class Writer:
    """Writes a gallery's snapshots on a background thread, one at a time (a request while one is being
    written makes one more write follow it)."""

    def __init__(self, gallery):
        self.gallery = gallery
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False

    def later(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._again = True
                return
            self._thread = threading.Thread(target=self._run, name="facenet-gallery-snapshot", daemon=True)
            self._thread.start()

    def wait(self) -> None:
        thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            try:
                written = save(self.gallery)
                if written:
                    log.info(
                        "gallery %s: index snapshot written to %s (%d faces, %d bytes)",
                        self.gallery.location,
                        written[0],
                        len(written[1].ids),
                        written[2],
                    )
            except Exception as exc:  # a snapshot is an optimisation: never fatal
                log.warning("gallery %s: index snapshot not written: %s", self.gallery.location, exc)
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False
