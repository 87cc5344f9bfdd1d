"""The service's engine: the embedder and the gallery behind one worker thread (see ``facenet.serve.app``)."""

from __future__ import annotations

import asyncio
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from facenet.data.images import DEFAULT_MAX_PIXELS, load_image
from facenet.embedder import FaceEmbedder, squared_distance
from facenet.errors import BadImageError, FaceNetError, GalleryError, GalleryUnavailableError, NoFaceError
from facenet.serve.schemas import PersonOut
from facenet.serve.security import Problem

log = logging.getLogger("facenet.serve")
CHANGE_WAIT_S = 1.0  # longest wait for another process's change before the follower checks anyway


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    max_upload_bytes: int = 10 * 2**20  # whole request body, all photos together
    max_pixels: int = DEFAULT_MAX_PIXELS  # per photo, checked from the header before decoding
    max_files: int = 20  # photos per request (enrol, cluster, embed)
    max_pending: int = 32  # requests running or waiting for the worker; more are answered 503


@dataclass(frozen=True)
class Upload:
    filename: str  # cleaned for messages and gallery labels; never used as a path
    data: bytes


class Engine:
    """The embedder and the gallery behind one worker thread (see the module docstring)."""

    def __init__(self, embedder: FaceEmbedder, gallery_location: str, limits: Limits, policy: str | None = None):
        self.embedder, self.gallery_location, self.limits, self.policy = embedder, gallery_location, limits, policy
        self.gallery = None
        self.pending = 0
        self._executor: ThreadPoolExecutor | None = None
        self._follower: asyncio.Task | None = None
        self._listener: ThreadPoolExecutor | None = None  # blocks in wait_for_change, so never on the worker

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facenet-worker")
        await self._call(self._open_gallery)
        self._listener = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facenet-listener")
        self._follower = asyncio.create_task(self._follow_changes())

    async def stop(self) -> None:
        if self._executor is None:
            return
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
            # let the listener's current wait (at most CHANGE_WAIT_S) end before the gallery closes
            await asyncio.get_running_loop().run_in_executor(None, self._listener.shutdown)
            self._follower = self._listener = None
        if self.gallery is not None:
            await self._call(self.gallery.close)
            self.gallery = None
        self._executor.shutdown(wait=True)
        self._executor = None

    @property
    def ready(self) -> bool:
        return self.gallery is not None

    async def run(self, fn, *args):
        """Run ``fn(*args)`` on the worker, or answer 503 when too many requests already wait for it."""
        if self.pending >= self.limits.max_pending:
            raise Problem(503, f"the server is busy ({self.pending} requests in progress); retry in a moment",
                          code="busy", headers={"Retry-After": "1"})
        self.pending += 1
        try:
            return await self._call(fn, *args)
        finally:
            self.pending -= 1

    async def _call(self, fn, *args):
        if self._executor is None:
            raise Problem(503, "the server is starting or stopping; retry in a moment", code="not_ready",
                          headers={"Retry-After": "1"})
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open_gallery(self) -> None:
        from facenet.gallery import Gallery

        gallery = Gallery.open(self.gallery_location, self.embedder.name, self.embedder.embedding_size,
                               policy=self.policy)
        gallery.sync()  # every face in the index before the first request
        self.gallery = gallery

    async def _follow_changes(self) -> None:
        """Apply other processes' changes as they happen, between requests (on the worker thread)."""
        loop = asyncio.get_running_loop()
        while True:
            if await loop.run_in_executor(self._listener, self.gallery.wait_for_change, CHANGE_WAIT_S):
                try:
                    await self._call(self.gallery.sync)
                except FaceNetError as exc:
                    log.warning("gallery catch-up failed (retrying): %s", exc)

    # -- photos -> crops -> embeddings (worker thread) --

    def decode(self, upload: Upload) -> np.ndarray:
        if not upload.data:
            raise BadImageError(f"{upload.filename}: empty upload; choose a photo file")
        try:  # the header alone gives the size: refuse huge photos before decoding a pixel
            with Image.open(io.BytesIO(upload.data)) as probe:
                width, height = probe.size
        except Image.DecompressionBombError:
            width = height = None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
            width = height = 0  # not readable; load_image below says why
        if width is None or width * height > self.limits.max_pixels:
            size = "over 179 million" if width is None else f"{width}x{height}"
            raise Problem(413, f"{upload.filename}: a {size}-pixel photo is above this server's limit of "
                               f"{self.limits.max_pixels} pixels; send a smaller photo", code="too_many_pixels")
        try:
            return load_image(upload.data, max_pixels=self.limits.max_pixels)
        except BadImageError as exc:
            raise BadImageError(str(exc).replace("<bytes>", upload.filename, 1)) from None

    def analyse(self, upload: Upload) -> tuple[np.ndarray, dict]:
        """The model-sized crop of the photo's face (the model recipe's choice), and a report of every face found."""
        pixels = self.decode(upload)
        height, width = pixels.shape[:2]
        found = self.embedder.find_faces(pixels, source=upload.filename)
        used = found.faces[0].detection
        detected = self.embedder.detector is not None
        faces = [{"box": [round(v, 1) for v in d.box], "score": round(d.score, 4) if detected else None,
                  "used": d is used} for d in found.detections]
        return found.faces[0].image, {"filename": upload.filename, "width": width, "height": height, "faces": faces}

    def embed(self, uploads: list[Upload]) -> tuple[np.ndarray, list[dict]]:
        analysed = [self.analyse(u) for u in uploads]
        return self.embedder.embed_crops([a[0] for a in analysed]), [a[1] for a in analysed]

    # -- the jobs behind the endpoints (worker thread) --

    def verify(self, uploads: list[Upload], threshold: float | None) -> dict:
        emb, reports = self.embed(uploads)
        limit = self.embedder.threshold if threshold is None else threshold
        distance = float(squared_distance(emb[0], emb[1]))
        return {"distance": distance, "threshold": limit, "same": distance < limit, "model": self.embedder.name,
                "photos": reports}

    def embed_photos(self, uploads: list[Upload]) -> dict:
        emb, reports = self.embed(uploads)
        return {"model": self.embedder.name, "embeddings": emb.tolist(), "photos": reports}

    def identify(self, upload: Upload, top_k: int, threshold: float | None) -> dict:
        emb, reports = self.embed([upload])
        from facenet.evaluate.calibrate import identification_threshold

        limit = identification_threshold(self.embedder, self.gallery.comparisons()) if threshold is None else threshold
        matches = self.gallery.identify(emb, k=top_k, threshold=limit)[0]
        return {"known": bool(matches), "threshold": limit, "model": self.embedder.name, "photo": reports[0],
                "matches": [{"name": m.name, "distance": m.distance} for m in matches]}

    def enrol(self, name: str, uploads: list[Upload], merge: bool) -> PersonOut:
        from facenet.gallery import Record

        emb, _ = self.embed(uploads)  # every photo must have a face, or nothing is enrolled
        try:
            self.gallery.enroll_many([Record(name, emb, [u.filename for u in uploads])], merge=merge)
        except GalleryError as exc:
            if merge or isinstance(exc, GalleryUnavailableError):
                raise
            raise Problem(409, f"{name!r} is already enrolled; send merge=true to add these photos to them",
                          code="name_taken") from exc
        person = next(p for p in self.gallery.people() if p.name == name)
        return PersonOut(name=person.name, faces=person.faces, created=person.created)

    def model(self) -> dict:
        from facenet.embedder import trained_on

        info = getattr(self.embedder, "info", None)  # a baseline adapter has no model file
        return {"name": self.embedder.name, "model_id": info.model_id if info else "",
                "embedding_size": self.embedder.embedding_size, "threshold": self.embedder.threshold,
                "trained_on": trained_on(info) if info else "see its own documentation"}

    def people(self) -> dict:
        return {"model": self.gallery.model_id, "policy": self.gallery.policy,
                "people": [{"name": p.name, "faces": p.faces, "created": p.created} for p in self.gallery.people()]}

    def remove(self, name: str) -> dict:
        try:
            return {"name": name, "faces_removed": self.gallery.remove(name)}
        except GalleryUnavailableError:
            raise
        except GalleryError as exc:
            raise Problem(404, f"no person named {name!r} in the gallery; GET /api/people lists who is enrolled",
                          code="unknown_person") from exc

    def cluster(self, uploads: list[Upload], threshold: float | None, method: str) -> dict:
        from facenet.cluster import cluster_embeddings

        crops, kept, skipped = [], [], []
        for index, upload in enumerate(uploads):
            try:
                crops.append(self.analyse(upload)[0])
                kept.append({"index": index, "filename": upload.filename})
            except (BadImageError, NoFaceError) as exc:
                skipped.append({"index": index, "filename": upload.filename, "detail": str(exc)})
        limit = self.embedder.threshold if threshold is None else threshold
        emb = self.embedder.embed_crops(crops) if crops else np.empty((0, self.embedder.embedding_size))
        labels = cluster_embeddings(emb, method=method, threshold=limit)
        clusters = [[m for m, lab in zip(kept, labels) if lab == c] for c in range(int(labels.max(initial=-1)) + 1)]
        return {"threshold": limit, "clusters": clusters, "skipped": skipped,
                "unclustered": [m for m, lab in zip(kept, labels) if lab < 0]}
