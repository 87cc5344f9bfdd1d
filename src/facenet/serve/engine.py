"""The service's engine: photos analysed in a small thread pool, the gallery on one worker thread, and a
time budget for every request (the routes and the rest of the design: ``facenet.serve.app``).

* Photo -> faces -> embeddings runs in a pool of ``Limits.workers`` threads (default: one per core),
  one task per photo, so the photos of one request, and of requests side by side, use every core:
  Pillow, OpenCV, ONNX Runtime and PyTorch release the GIL. Each photo reaches the face finder as
  its encoded bytes, so a big JPEG is decoded at the finder's reduced working size. A detector keeps
  state between calls (YuNet's input size, ...), so each pool thread uses a finder of its own unless
  the detectors are thread-safe (MTCNN on ONNX Runtime), when all share one.
* The gallery stays on **one** worker thread: SQLite connections belong to the thread that opened
  them, and one writer needs no locks.
* The event loop only hands work out and gathers the answers; it never decodes, detects or embeds,
  so ``/healthz`` answers at once however busy the pool is.
* Start-up returns at once, so the server opens its socket and ``/healthz`` answers while the face
  finders are built and the gallery loads in the background (minutes at a million faces); ``ready``
  (``/readyz``) turns true when both are done, and until then every request for work is answered 503
  with ``Retry-After``. A gallery that cannot be opened yet (a database that is down) is retried.
* Each request gets a deadline when it is admitted (``Limits.time_budget_s``): time spent waiting for
  the pool or the worker counts, so a flood of slow requests is dropped instead of keeping the server
  busy long after their clients gave up. Past it, the request is answered 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import copy
import io
import logging
import math
import os
import queue
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from facenet.align import Detection, FaceFinder, get_detector, list_detectors, select_faces
from facenet.distances import squared_l2
from facenet.embedder import FaceEmbedder
from facenet.errors import BadImageError, FaceNetError, GalleryError, GalleryUnavailableError, NoFaceError
from facenet.evaluate.calibrate import face_promises
from facenet.occluder import lower_face_covered, masked_entry, pair_threshold
from facenet.serve.schemas import PersonOut
from facenet.serve.security import Problem

log = logging.getLogger("facenet.serve")
CHANGE_WAIT_S = 1.0  # longest wait for another process's change before the follower checks anyway
OPEN_RETRY_S = 2.0  # between attempts to open a gallery that cannot be reached yet
READ_MAX_TOP_K = 5  # candidates per face for a client without the admin key


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server, and how much of the machine it gets."""

    max_upload_bytes: int = 10 * 2**20  # whole request body, all photos together
    max_pixels: int = 50_000_000  # per photo, checked from the header before decoding (48 MP phone photos pass)
    max_files: int = 20  # photos per request (enrol, cluster, embed)
    max_pending: int = 32  # requests in progress (working or waiting); more are answered 503
    time_budget_s: float = 10.0  # per request, from its admission, waiting included
    workers: int = os.cpu_count() or 1  # threads analysing photos
    rate_limit: str | None = "120/minute"  # requests under /api/ per client (key scope and address); None: no limit


@dataclass(frozen=True)
class Upload:
    filename: str  # cleaned for messages and gallery labels; never used as a path
    data: bytes


class Deadline:
    """When a request's time is up: ``budget_s`` after it was admitted."""

    def __init__(self, budget_s: float):
        self.budget_s, self.at = budget_s, time.monotonic() + budget_s

    def check(self) -> None:
        """503 once the time is up. Called before and between stages: a running detector or forward pass
        cannot be interrupted, so a request overruns its budget by at most the stage it was in."""
        if time.monotonic() >= self.at:
            # within one budget, every request that waited before this one has finished or been dropped
            raise Problem(
                503,
                f"this request needed more than the server's time budget of {self.budget_s:g} s "
                "(the server is busy, or the photos are many or large); retry later",
                code="over_time_budget",
                headers={"Retry-After": str(math.ceil(self.budget_s))},
            )


@dataclass(frozen=True)
class Analysed:
    """One photo: the faces asked for (the recipe's choice first), one embedding row each, and its report."""

    faces: list  # list[AlignedFace]
    embeddings: np.ndarray
    report: dict  # a PhotoReport
    covered: np.ndarray | None = None  # per face, lower_face_covered (where asked: verify and identify)


class Engine:
    """The embedder, the photo pool and the gallery's worker (see the module docstring)."""

    def __init__(
        self, embedder: FaceEmbedder, gallery_location: str, limits: Limits, policy: str | None = None, index="auto"
    ):
        self.embedder, self.gallery_location, self.limits, self.policy = embedder, gallery_location, limits, policy
        self.index = index
        self.gallery = None
        self.pending = 0
        self.not_ready = "the gallery is loading"  # why /readyz says 503; None once ready
        self._loading: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None  # the gallery's one worker thread
        self._pool: ThreadPoolExecutor | None = None  # photo analysis
        self._finders: queue.SimpleQueue | None = None  # one FaceFinder per pool thread
        self._follower: asyncio.Task | None = None
        self._listener: ThreadPoolExecutor | None = None  # blocks in wait_for_change, so never on the worker

    async def start(self) -> None:
        """Start the threads and begin loading; returns at once (see the module docstring)."""
        # The server checks the pixel count itself (check_size) before anything is decoded, so Pillow's
        # own warning about big images would only put a raw traceback-like line in the server's log.
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
        self._pool = ThreadPoolExecutor(max_workers=self.limits.workers, thread_name_prefix="facenet-photo")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facenet-worker")
        self._listener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facenet-listener")
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        """Face finders, then the gallery with every face in its index; then follow other processes' changes."""
        try:
            self._finders = await asyncio.to_thread(self._make_finders)
            while True:
                try:
                    await self._call(self._executor, self._open_gallery)
                    break
                except GalleryUnavailableError as exc:  # a database that is down: it may come back
                    self.not_ready = f"the gallery cannot be opened yet (retrying): {exc}"
                    log.warning("%s", self.not_ready)
                    await asyncio.sleep(OPEN_RETRY_S)
        except Exception as exc:  # a gallery of another model, ...: /readyz stays 503 and says so
            self.not_ready = "the service could not start; its log says why"
            if isinstance(exc, FaceNetError):
                log.error("facenet service failed to start: %s", exc)
            else:
                log.exception("facenet service failed to start")
            return
        self.not_ready = None
        log.info(
            "facenet service ready: model %s, gallery %s (%d faces)",
            self.embedder.name,
            self.gallery.location,
            len(self.gallery),
        )
        try:  # what the gallery's size gets; every answer about the gallery says it too (open_set)
            promise = await self._call(self._executor, self._promise)
            log.log(logging.WARNING if promise.note else logging.INFO, "%s", promise.note or promise.summary)
        except FaceNetError as exc:
            log.warning("open-set promise unavailable: %s", exc)
        self._follower = asyncio.create_task(self._follow_changes())

    async def stop(self) -> None:
        if self._executor is None:
            return
        if self._loading is not None:
            self._loading.cancel()  # a load in progress on the worker finishes; the gallery is closed below
            await asyncio.gather(self._loading, return_exceptions=True)
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            # let the listener's current wait (at most CHANGE_WAIT_S) end before the gallery closes
        await self._call(self._executor, self._close_gallery)  # after any open still queued on the worker
        for executor in (self._executor, self._pool, self._listener):
            executor.shutdown(wait=True)
        self._executor = self._pool = self._listener = None

    def _close_gallery(self) -> None:
        if self.gallery is not None:
            self.gallery.close()
            self.gallery = None

    @property
    def ready(self) -> bool:
        return self.not_ready is None and self._executor is not None

    def check_ready(self) -> None:
        if not self.ready:
            raise Problem(
                503,
                f"the service is starting: {self.not_ready or 'stopping'}; retry in a moment",
                code="not_ready",
                headers={"Retry-After": "1"},
            )

    async def run(self, job, *args):
        """Admit a request and await ``job(deadline, *args)``; 503 while the service is not ready, or when
        ``max_pending`` are already in progress."""
        self.check_ready()
        if self.pending >= self.limits.max_pending:
            raise Problem(
                503,
                f"the server is busy ({self.pending} requests in progress); retry in a moment",
                code="busy",
                headers={"Retry-After": "1"},
            )
        self.pending += 1
        try:
            return await job(Deadline(self.limits.time_budget_s), *args)
        finally:
            self.pending -= 1

    async def _call(self, executor: ThreadPoolExecutor | None, fn, *args):
        if executor is None:
            raise Problem(
                503,
                "the server is starting or stopping; retry in a moment",
                code="not_ready",
                headers={"Retry-After": "1"},
            )
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _on_worker(self, deadline: Deadline, fn, *args):
        """``fn(*args)`` on the gallery's worker, only if the deadline still holds when the worker takes it up."""

        def checked():
            deadline.check()
            return fn(*args)

        return await self._call(self._executor, checked)

    def _open_gallery(self) -> None:
        from facenet.gallery import Gallery

        gallery = Gallery.open(
            self.gallery_location,
            self.embedder.name,
            self.embedder.embedding_size,
            policy=self.policy,
            index=self.index,
        )
        gallery.sync()  # every face in the index before the first request
        self.gallery = gallery

    async def _follow_changes(self) -> None:
        """Apply other processes' changes as they happen, between requests (on the worker thread)."""
        loop = asyncio.get_running_loop()
        while True:
            if await loop.run_in_executor(self._listener, self.gallery.wait_for_change, CHANGE_WAIT_S):
                try:
                    await self._call(self._executor, self.gallery.sync)
                except FaceNetError as exc:
                    log.warning("gallery catch-up failed (retrying): %s", exc)

    # -- photos -> faces -> embeddings (pool threads) --

    def _make_finders(self) -> queue.SimpleQueue:
        """One face finder per pool thread: the embedder's own, shared when its detectors are thread-safe
        (MTCNN on ONNX Runtime: no second set of sessions to build), else copies with detectors of their own."""
        embedder, device = self.embedder, str(self.embedder.device)
        finders = queue.SimpleQueue()
        shared = embedder.finder()
        finders.put(shared)
        for _ in range(self.limits.workers - 1):
            finders.put(
                shared
                if shared.thread_safe
                else FaceFinder(
                    _own_copy(embedder.detector, device),
                    embedder.recipe,
                    embedder.info.input_size,
                    _own_copy(embedder.fallback_detector, device),
                    embedder.min_face,
                )
            )
        return finders

    def check_size(self, upload: Upload) -> None:
        """Refuse an empty upload, and one with too many pixels from its header alone, before decoding a pixel."""
        if not upload.data:
            raise BadImageError(f"{upload.filename}: empty upload; choose a photo file")
        try:
            with Image.open(io.BytesIO(upload.data)) as probe:
                width, height = probe.size
        except Image.DecompressionBombError:
            width = height = None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            width = height = 0  # not readable; the finder says why
        if width is None or width * height > self.limits.max_pixels:
            size = "over 179 million" if width is None else f"{width}x{height}"
            raise Problem(
                413,
                f"{upload.filename}: a {size}-pixel photo is above this server's limit of "
                f"{self.limits.max_pixels} pixels; send a smaller photo",
                code="too_many_pixels",
            )

    def analyse(self, upload: Upload, deadline: Deadline, which: str | None = None, masks: bool = False) -> Analysed:
        """The photo's faces (``which``: "all", "largest", "central"; ``None``: the recipe's), embedded,
        and a report of every face found; with ``masks``, which faces are masked. Runs on a pool thread."""
        deadline.check()  # the time it waited for a pool thread counts
        self.check_size(upload)
        finder = self._finders.get()  # as many finders as pool threads: never waits
        try:  # the encoded bytes, so that a big JPEG is decoded at the finder's reduced size
            found = finder.find(upload.data, which, upload.filename)
        except BadImageError as exc:
            raise BadImageError(str(exc).replace("<bytes>", upload.filename, 1)) from None
        finally:
            self._finders.put(finder)
        deadline.check()
        width, height = found.size
        chosen = select_faces([f.detection for f in found.faces], (height, width), self.embedder.recipe.which)[0]
        faces = sorted(found.faces, key=lambda f: f.detection is not chosen)
        report = {
            "filename": upload.filename,
            "width": width,
            "height": height,
            "faces": [
                {"box": _box(d), "score": _score(d), "used": any(d is f.detection for f in faces)}
                for d in found.detections
            ],
        }
        crops = [f.image for f in faces]
        rows = self.embedder.embed_crops(crops)
        return Analysed(faces, rows, report, lower_face_covered(self.embedder, crops, rows) if masks else None)

    async def analyse_all(
        self,
        uploads: list[Upload],
        deadline: Deadline,
        which: str | None = None,
        skip_bad: bool = False,
        masks: bool = False,
    ) -> list:
        """Every photo analysed at once in the pool, in upload order (``analyse``). The first photo's error (in
        upload order, whichever thread met one first) is raised; with ``skip_bad``, a photo that is unreadable
        or shows no face stays in the list as its error."""
        results = await asyncio.gather(
            *(self._call(self._pool, self.analyse, u, deadline, which, masks) for u in uploads),
            return_exceptions=True,
        )
        skippable = (BadImageError, NoFaceError) if skip_bad else ()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, skippable):
                raise result
        return results

    # -- the jobs behind the endpoints: job(deadline, *args) --

    async def verify(
        self, deadline: Deadline, uploads: list[Upload], threshold: float | None, which: str | None
    ) -> dict:
        a, b = await self.analyse_all(uploads, deadline, which, masks=threshold is None)
        limit, masked = (
            (threshold, False) if threshold is not None else pair_threshold(self.embedder, [a.covered[0], b.covered[0]])
        )
        distance = float(squared_l2(a.embeddings[0], b.embeddings[0]))
        return {
            "distance": distance,
            "threshold": limit,
            "same": distance < limit,
            "model": self.embedder.name,
            "photos": [a.report, b.report],
            "faces": [_face(a.faces[0]), _face(b.faces[0])],
            "compared_as": "masked" if masked else "plain",
        }

    async def embed_photos(self, deadline: Deadline, uploads: list[Upload]) -> dict:
        photos = await self.analyse_all(uploads, deadline)
        return {
            "model": self.embedder.name,
            "embeddings": [p.embeddings[0].tolist() for p in photos],
            "photos": [p.report for p in photos],
        }

    async def identify(
        self, deadline: Deadline, upload: Upload, top_k: int, threshold: float | None, which: str, may_widen: bool
    ) -> dict:
        """``may_widen`` (the admin key): ``threshold`` past the model's open-set threshold for this
        gallery and ``top_k`` past ``READ_MAX_TOP_K`` are allowed; otherwise they are refused with 403."""
        if top_k > READ_MAX_TOP_K and not may_widen:
            raise Problem(403, f"without the admin key, top_k is at most {READ_MAX_TOP_K}", code="search_too_wide")
        (photo,) = await self.analyse_all([upload], deadline, which, masks=threshold is None)
        return await self._on_worker(deadline, self._identify, photo, top_k, threshold, may_widen)

    def _promise(self):
        """The open-set promise at the gallery's current size (``identification_promise``); on the worker."""
        from facenet.evaluate.calibrate import identification_promise

        return identification_promise(self.embedder, self.gallery.comparisons())

    def _masked_promise(self) -> dict | None:
        """The same for masked faces, where the model has a masked table (``ModelInfo.masked``); on the worker."""
        from facenet.evaluate.calibrate import identification_promise

        if not masked_entry(self.embedder):
            return None
        return identification_promise(self.embedder, self.gallery.comparisons(), masked=True).as_dict()

    def _identify(self, photo: Analysed, top_k: int, threshold: float | None, may_widen: bool) -> dict:
        if threshold is None:  # each face's own promise: a masked face has the masked table's (issue 24)
            promises = face_promises(self.embedder, self.gallery.comparisons(), photo.covered)
            limits = [p.threshold for p in promises]
        else:
            open_set = self._promise().threshold
            if threshold > open_set and not may_widen:
                raise Problem(
                    403,
                    f"without the admin key, the threshold is at most the model's open-set threshold "
                    f"for this gallery, {open_set:.4f}; leave it out to use that",
                    code="search_too_wide",
                )
            promises, limits = [None] * len(photo.faces), [threshold] * len(photo.faces)
        answers = self.gallery.identify(photo.embeddings, k=top_k, threshold=np.array(limits))
        faces = [
            {
                **_face(face),
                "known": bool(matches),
                "matches": [{"name": m.name, "distance": m.distance} for m in matches],
                "threshold": limit,
                "compared_as": "masked" if face_promise is not None and face_promise.masked else "plain",
            }
            for face, matches, limit, face_promise in zip(photo.faces, answers, limits, promises)
        ]
        return {
            "known": faces[0]["known"],
            "matches": faces[0]["matches"],
            "threshold": limits[0],
            "model": self.embedder.name,
            "photo": photo.report,
            "faces": faces,
            "open_set": promises[0].as_dict() if threshold is None else None,
        }

    async def enrol(self, deadline: Deadline, name: str, uploads: list[Upload], merge: bool) -> PersonOut:
        photos = await self.analyse_all(uploads, deadline)  # every photo must have a face, or nothing is enrolled
        rows = np.stack([p.embeddings[0] for p in photos])
        # written only now: every photo embedded, and (checked on the worker) the deadline still holds
        return await self._on_worker(deadline, self._enrol, name, rows, [u.filename for u in uploads], merge)

    def _enrol(self, name: str, rows: np.ndarray, filenames: list[str], merge: bool) -> PersonOut:
        from facenet.gallery import Record

        try:
            self.gallery.enroll_many([Record(name, rows, filenames)], merge=merge)
        except GalleryError as exc:
            if merge or isinstance(exc, GalleryUnavailableError):
                raise
            raise Problem(
                409, f"{name!r} is already enrolled; send merge=true to add these photos to them", code="name_taken"
            ) from exc
        person = self.gallery.person(name)  # one indexed lookup, not a listing of everyone
        return PersonOut(name=person.name, faces=person.faces, created=person.created)

    async def model(self, open_set: bool = True) -> dict:
        """The model, and (``open_set``: for callers who may read the gallery) its open-set promise at the
        gallery's current size (None until the gallery is loaded, or while it cannot be read: this answer
        never waits for the gallery or fails with it)."""
        from facenet.embedder import trained_on

        info = getattr(self.embedder, "info", None)  # a baseline adapter has no model file
        promise = masked = None
        if open_set and self.ready:
            try:
                promise = (await self._call(self._executor, self._promise)).as_dict()
                masked = await self._call(self._executor, self._masked_promise)
            except FaceNetError as exc:
                log.warning("open-set promise unavailable for /api/model: %s", exc)
        return {
            "name": self.embedder.name,
            "model_id": info.id if info else self.embedder.name,
            "embedding_size": self.embedder.embedding_size,
            "threshold": self.embedder.threshold,
            "trained_on": trained_on(info) if info else "see its own documentation",
            "open_set": promise,
            "open_set_masked": masked,
        }

    async def people(self, deadline: Deadline) -> dict:
        return await self._on_worker(deadline, self._people)

    def _people(self) -> dict:
        return {
            "model": self.gallery.model_id,
            "policy": self.gallery.policy,
            "people": [{"name": p.name, "faces": p.faces, "created": p.created} for p in self.gallery.people()],
            "open_set": self._promise().as_dict(),
            "open_set_masked": self._masked_promise(),
        }

    async def remove(self, deadline: Deadline, name: str) -> dict:
        return await self._on_worker(deadline, self._remove, name)

    def _remove(self, name: str) -> dict:
        try:
            return {"name": name, "faces_removed": self.gallery.remove(name)}
        except GalleryUnavailableError:
            raise
        except GalleryError as exc:
            raise Problem(
                404,
                f"no person named {name!r} in the gallery; GET /api/people lists who is enrolled",
                code="unknown_person",
            ) from exc

    async def cluster(self, deadline: Deadline, uploads: list[Upload], threshold: float | None, method: str) -> dict:
        from facenet.cluster import cluster_embeddings

        photos = await self.analyse_all(uploads, deadline, skip_bad=True)  # a photo without a face is skipped
        members = list(enumerate(zip(uploads, photos)))
        kept = [{"index": i, "filename": u.filename} for i, (u, p) in members if isinstance(p, Analysed)]
        skipped = [
            {"index": i, "filename": u.filename, "detail": str(p)}
            for i, (u, p) in members
            if not isinstance(p, Analysed)
        ]
        emb = np.array([p.embeddings[0] for p in photos if isinstance(p, Analysed)], np.float32)
        limit = self.embedder.threshold if threshold is None else threshold
        deadline.check()
        labels = await self._call(
            self._pool,
            lambda: cluster_embeddings(emb.reshape(-1, self.embedder.embedding_size), method=method, threshold=limit),
        )
        clusters = [[m for m, lab in zip(kept, labels) if lab == c] for c in range(int(labels.max(initial=-1)) + 1)]
        return {
            "threshold": limit,
            "clusters": clusters,
            "skipped": skipped,
            "unclustered": [m for m, lab in zip(kept, labels) if lab < 0],
        }


def _own_copy(detector, device: str):
    """A detector for one more pool thread (``None`` stays ``None``). A registered backend is built again by
    name with its default options, as ``facenet serve`` builds it (MTCNN's ONNX Runtime sessions and
    YuNet's OpenCV object cannot be copied); any other detector object is deep-copied."""
    if detector is None:
        return None
    if detector.name in list_detectors():
        return get_detector(detector.name, device=device)
    return copy.deepcopy(detector)


def _box(detection: Detection) -> list[float]:
    return [round(v, 1) for v in detection.box]


def _score(detection: Detection) -> float | None:
    """The detector's confidence; ``None`` when photos are taken as face crops (no detector, NaN)."""
    return None if math.isnan(detection.score) else round(detection.score, 4)


def _face(face) -> dict:
    """A face an answer is about: where it is, and why the answer may be unreliable."""
    return {"box": _box(face.detection), "score": _score(face.detection), "notes": list(face.notes)}
