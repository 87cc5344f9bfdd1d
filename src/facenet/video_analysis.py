"""Who appears when in a video: sampled frames -> faces -> tracks -> one identification per track -> timeline.

The loop the rest of the project lacked, built from its parts:

- **Frames** come from a file (sampled at ``fps``: every frame is grabbed, only the sampled ones are decoded
  into pixels), a webcam index or a network stream (rtsp/http), read by a thread that keeps only the newest
  frame, so a slow analysis drops stale frames rather than falling behind, and reopens the stream when it fails.
- **Faces** are found through the project's one detection path (``FaceFinder.find``: detection on a reduced
  copy of a big frame, crops cut as the model's recipe says).
- **Tracks** come from norfair (BSD-3; Kalman-filtered boxes matched by IoU), not from a hand-written tracker.
- **Identification** is per track, not per frame: each track keeps its best few crops (size x sharpness x
  detector score), embeds them once and asks the gallery once, with the open-set threshold ``facenet identify``
  uses (a track most of whose best crops are masked: the masked one, as ``identify`` gives a masked face); it
  asks again when the track's evidence has doubled (2, 4, 8... sightings) and when it ends.
- **Strangers**: tracks nobody in the gallery matches are clustered over the whole video (``facenet.cluster``,
  the model's threshold) into stable "Unknown N" identities, numbered by first appearance.

Memory is bounded: a live track holds ``BEST_CROPS`` model-sized crops, an ended one its summary and (unless
``keep_faces=False``) its best crop.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facenet.distances import squared_l2
from facenet.errors import FaceNetError, NoFaceError, VideoError
from facenet.occluder import lower_face_covered, masked_entry

BEST_CROPS = 3  # crops kept (and embedded) per track
MIN_SIGHTINGS = 2  # a track seen fewer times is a flicker, not a person
TRACK_MEMORY_S = 1.0  # a track missed for longer than this (in video time) has ended
IOU_MATCH = 0.1  # a detection continues a track when their boxes overlap at least this much (IoU)
UNKNOWN = "Unknown"
VIDEO_MIN_FACE = 0.05  # smallest face found: 5% of the frame's shorter side (36 px at 720p, 54 px at 1080p); a
# face much smaller is too small to identify (``facenet.align.finder.SMALL_FACE``), and a video's frames are
# detected 4x faster at this working size than at photos' 2%


# ----------------------------------------------------------------------------------------------- frames


@dataclass
class Frame:
    """One sampled frame: ``time`` in seconds of video (live: since the stream opened), ``index`` its number in
    the source, ``pixels`` H,W,3 uint8 RGB."""

    time: float
    index: int
    pixels: np.ndarray


def is_live(source) -> bool:
    """A webcam index (an int, or digits) or a network stream URL, rather than a file."""
    if isinstance(source, int):
        return True
    text = str(source)
    return text.isdigit() or "://" in text


class FileFrames:
    """Frames of a video file sampled at ``fps`` (``None``: every frame), by their timestamps."""

    def __init__(self, path: str | os.PathLike, fps: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"no such video file: {self.path}")
        self.capture = cv2.VideoCapture(str(self.path))
        if not self.capture.isOpened():
            raise VideoError(f"{self.path} is not a video OpenCV can read (corrupt, truncated, or not a video)")
        native = self.capture.get(cv2.CAP_PROP_FPS)
        self.native_fps = native if native and math.isfinite(native) and 0 < native < 1000 else 25.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self.fps = None if not fps or fps >= self.native_fps else float(fps)
        self.position = 0  # frames grabbed so far (progress)

    @property
    def duration(self) -> float | None:
        return None if self.frame_count is None else self.frame_count / self.native_fps

    def __iter__(self) -> Iterator[Frame]:
        step = 1.0 / self.fps if self.fps else 0.0
        due = 0.0
        index = -1
        try:
            while True:
                if not self.capture.grab():
                    break
                index += 1
                self.position = index + 1
                t = index / self.native_fps
                if t + 1e-6 < due:
                    continue
                ok, bgr = self.capture.retrieve()
                if not ok or bgr is None:
                    break
                due = (math.floor(t / step + 1e-6) + 1) * step if step else 0.0
                yield Frame(t, index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            self.capture.release()
        # containers whose header only estimates the count (from duration x rate) may promise a few frames more
        if self.frame_count is not None and self.frame_count - (index + 1) > max(2, 0.02 * self.frame_count):
            raise VideoError(
                f"{self.path} ends at frame {index + 1} of the {self.frame_count} its header promises "
                f"({(index + 1) / self.native_fps:.1f} s): the file is truncated or corrupt"
            )

    def close(self) -> None:
        self.capture.release()


class LiveFrames:
    """The newest frame of a webcam or stream, sampled at ``fps``: a reader thread keeps only the latest frame
    (stale ones are dropped, so a slow analysis never falls behind) and reopens the source when it fails,
    giving up after ``reconnect_s`` seconds without a frame. ``opener`` makes the capture (tests pass a fake)."""

    def __init__(
        self,
        source,
        fps: float | None = None,
        reconnect_s: float = 30.0,
        opener: Callable[[object], object] | None = None,
    ):
        self.source = int(source) if str(source).isdigit() else source
        self.fps = fps or None
        self.reconnect_s = reconnect_s
        self.opener = opener or cv2.VideoCapture
        self.frame_count = None
        self.position = 0
        self.dropped = 0
        self.reconnects = 0
        self._latest: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._error: str | None = None
        self._start = time.monotonic()
        capture = self._open()
        if capture is None:
            raise VideoError(f"cannot open the live source {self._shown()}")
        self._thread = threading.Thread(target=self._read, args=(capture,), daemon=True, name="facenet-video-reader")
        self._thread.start()

    def _shown(self) -> str:
        text = str(self.source)
        return text.split("@")[-1] if "://" in text else text  # never print a stream's password

    def _open(self):
        capture = self.opener(self.source)
        return capture if capture is not None and capture.isOpened() else None

    def _read(self, capture) -> None:
        index = 0
        while not self._stop.is_set():
            ok, bgr = capture.read() if capture is not None else (False, None)
            if ok and bgr is not None:
                self._offer(Frame(time.monotonic() - self._start, index, bgr))
                index += 1
                continue
            if capture is not None:
                capture.release()
            capture, given_up = None, time.monotonic() + self.reconnect_s
            delay = 0.1
            while capture is None and not self._stop.is_set() and time.monotonic() < given_up:
                self._stop.wait(delay)
                delay = min(2 * delay, 2.0)
                capture = self._open()
            if capture is None:
                if not self._stop.is_set():
                    self._error = f"the live source {self._shown()} gave no frame for {self.reconnect_s:.0f} s"
                self._offer(None)
                return
            self.reconnects += 1
        if capture is not None:
            capture.release()

    def _offer(self, frame: Frame | None) -> None:
        """Make ``frame`` the one waiting (None: the end); one the analysis has not taken yet is stale: dropped."""
        while True:
            try:
                self._latest.put_nowait(frame)
                return
            except queue.Full:
                try:
                    if self._latest.get_nowait() is not None:
                        self.dropped += 1
                except queue.Empty:
                    pass

    def __iter__(self) -> Iterator[Frame]:
        due = 0.0
        while True:
            frame = self._latest.get()
            if frame is None:
                break
            if self.fps and frame.time + 1e-6 < due:
                continue
            due = frame.time + 1.0 / self.fps if self.fps else 0.0
            self.position = frame.index + 1
            frame.pixels = cv2.cvtColor(frame.pixels, cv2.COLOR_BGR2RGB)
            yield frame
        if self._error:
            raise VideoError(self._error)

    def close(self) -> None:
        self._stop.set()
        try:
            self._latest.get_nowait()  # let a reader blocked on put() finish
        except queue.Empty:
            pass


def open_frames(source, fps: float | None = None, reconnect_s: float = 30.0):
    """``FileFrames`` for a file, ``LiveFrames`` for a webcam index or a stream URL."""
    if is_live(source):
        return LiveFrames(source, fps, reconnect_s)
    return FileFrames(source, fps)


# ----------------------------------------------------------------------------------------------- tracks


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the crop's grey levels: blur lowers it."""
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def quality(crop: np.ndarray, box, score: float, input_size: int) -> float:
    """How good a crop is to identify from: detector score x face size (up to the model's input) x sharpness
    (saturating: beyond a clearly sharp crop it no longer counts)."""
    side = min(box[2] - box[0], box[3] - box[1])
    size = min(1.0, max(side, 0.0) / input_size)
    sharp = 1.0 - math.exp(-sharpness(crop) / 100.0)
    score = 1.0 if not math.isfinite(score) else score
    return float(score * size * (0.2 + 0.8 * sharp))


@dataclass
class Track:
    """One face followed across frames. ``person`` is its current identity (None before the first
    identification; "Unknown" while nobody in the gallery matches), ``confidence`` the share of its best crops
    whose own nearest person (within the threshold) agrees, ``distance`` the squared-L2 score of the person."""

    id: int
    first: float
    last: float
    box: tuple[float, float, float, float]
    sightings: int = 0
    person: str | None = None
    confidence: float = 0.0
    distance: float | None = None
    embedding: np.ndarray | None = None  # mean of the best crops' embeddings, unit
    best: list = field(default_factory=list)  # [(quality, crop, embedding or None, masked or None)], best first
    masked: bool = False  # most of its best crops are masked: identified with the masked threshold (issue 24)
    identified_at: int = 0  # sightings when last identified
    named: str | None = None  # the timeline's name: ``person``, or the stranger's cluster over the whole video

    def keep(self, crop: np.ndarray, q: float) -> bool:
        """Keep the crop if it is among the best; True when the best set changed."""
        if len(self.best) >= BEST_CROPS and q <= self.best[-1][0]:
            return False
        self.best.append((q, crop, None, None))
        self.best.sort(key=lambda x: -x[0])
        del self.best[BEST_CROPS:]
        return True

    @property
    def best_crop(self) -> np.ndarray | None:
        return self.best[0][1] if self.best else None


@dataclass(frozen=True)
class Event:
    """What happened: ``kind`` "appeared" (a track's first identification), "identified" (its identity changed
    on new evidence), "left" (the track ended: ``time`` is its last sighting, reported once the tracker has
    given it up, up to ``TRACK_MEMORY_S`` later), or "frame" (a sampled frame's tracked faces, with
    ``frame_events=True``). ``time`` in seconds of video; ``person`` "Unknown N" for strangers (numbered as they
    come; the timeline's numbers come from clustering the whole video)."""

    kind: str
    time: float
    track: int | None = None
    person: str | None = None
    confidence: float = 0.0
    box: tuple | None = None
    faces: tuple = ()  # "frame": ((track, person, box), ...)


# ----------------------------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Segment:
    person: str
    start: float
    end: float
    confidence: float
    distance: float | None
    tracks: tuple[int, ...]
    masked: bool = False  # a track of it was compared as masked

    def as_dict(self) -> dict:
        return {
            "person": self.person,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "confidence": round(self.confidence, 3),
            "distance": None if self.distance is None else round(self.distance, 4),
            "tracks": list(self.tracks),
            "compared_as": "masked" if self.masked else "plain",
        }


@dataclass
class Timeline:
    """Who appears when: ``segments`` per person, in order of first appearance; ``complete`` False when the
    analysis stopped early (interrupted, or the source failed: ``error``)."""

    source: str
    fps: float | None
    duration: float
    segments: list[Segment]
    complete: bool = True
    error: str | None = None

    def people(self) -> list[str]:
        seen: list[str] = []
        for s in self.segments:
            if s.person not in seen:
                seen.append(s.person)
        return seen

    def of(self, person: str) -> list[Segment]:
        return [s for s in self.segments if s.person == person]

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "fps": self.fps,
            "duration": round(self.duration, 3),
            "complete": self.complete,
            "error": self.error,
            "people": [
                {"person": p, "known": not p.startswith(UNKNOWN), "segments": [s.as_dict() for s in self.of(p)]}
                for p in self.people()
            ],
        }

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["person", "start", "end", "confidence", "distance", "tracks", "compared_as"])
        for s in self.segments:
            d = s.as_dict()
            distance = "" if d["distance"] is None else d["distance"]
            tracks = ";".join(map(str, d["tracks"]))
            writer.writerow([d["person"], d["start"], d["end"], d["confidence"], distance, tracks, d["compared_as"]])
        return out.getvalue()

    def write(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """``timeline.json`` and ``timeline.csv`` in ``out_dir`` (atomic, owner-only)."""
        from facenet.fileio import atomic_write

        out = Path(out_dir)
        text = json.dumps(self.as_dict(), indent=2) + "\n"
        table = self.csv_text()
        atomic_write(out / "timeline.json", functools.partial(_write_text, text=text))
        atomic_write(out / "timeline.csv", functools.partial(_write_text, text=table))
        return out / "timeline.json", out / "timeline.csv"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


# ----------------------------------------------------------------------------------------------- analysis


class VideoAnalysis:
    """Iterate to run: yields ``Event``s as they happen; ``timeline()`` (at any time, e.g. after Ctrl-C) is the
    timeline of everything seen so far. ``snapshots()`` the best face crop per person of the timeline."""

    def __init__(
        self,
        source,
        embedder,
        gallery=None,
        fps: float | None = 5.0,
        far: float | None = None,
        threshold: float | None = None,
        frame_events: bool = False,
        reconnect_s: float = 30.0,
        on_frame: Callable[[Frame, list[Track]], None] | None = None,
        min_face: float | None = VIDEO_MIN_FACE,
        keep_faces: bool = True,
    ):
        try:
            from norfair import Tracker
        except ImportError:
            raise FaceNetError(
                "facenet video needs the tracker norfair: pip install --no-deps 'norfair==2.3.0' "
                "(scripts/install.sh does; --no-deps keeps its numpy<2 pin from downgrading numpy)"
            ) from None

        from facenet.evaluate.calibrate import DEFAULT_OPENSET_FAR, identification_promise
        from facenet.gallery import Gallery
        from facenet.paths import gallery_location

        if fps is not None and fps <= 0:
            raise VideoError(f"--fps must be positive (or omitted for every frame), not {fps}")
        self.embedder = embedder
        from facenet.align.finder import FaceFinder

        self.finder = FaceFinder(
            embedder.detector, embedder.recipe, embedder.info.input_size, embedder.fallback_detector, min_face
        )
        self.source = source
        self.frames = open_frames(source, fps, reconnect_s)
        self.fps = fps
        self.frame_events = frame_events
        self.on_frame = on_frame
        self.keep_faces = keep_faces
        try:  # closed with the analysis
            self.gallery = Gallery.open(gallery_location(gallery), embedder.name, embedder.embedding_size, create=False)
        except BaseException:
            self.frames.close()
            raise
        self.promise = self.masked_promise = None
        if threshold is None:
            self.promise = identification_promise(embedder, self.gallery.comparisons(), far or DEFAULT_OPENSET_FAR)
            threshold = self.promise.threshold
            if masked_entry(embedder):  # a masked track has its own threshold (issue 24)
                comparisons = self.gallery.comparisons()
                self.masked_promise = identification_promise(embedder, comparisons, far or DEFAULT_OPENSET_FAR, True)
        self.threshold = float(threshold)
        step = 1.0 / min(fps or math.inf, getattr(self.frames, "native_fps", 30.0) or 30.0)
        self.memory = max(2, round(TRACK_MEMORY_S / step))  # sampled frames a track survives unseen
        self.tracker = Tracker(
            distance_function="iou",
            distance_threshold=1.0 - IOU_MATCH,
            hit_counter_max=self.memory,
            initialization_delay=0,
        )
        self.live: dict[int, Track] = {}  # norfair id -> track
        self.ended: list[Track] = []
        self._next_id = 1
        self._unknowns: list[tuple[np.ndarray, str]] = []  # online "Unknown N" centroids, for events
        self.last_time = 0.0
        self.samples = 0
        self.complete = False
        self.error: str | None = None
        self._closed = False

    # -- the loop

    def __iter__(self) -> Iterator[Event]:
        try:
            for frame in self.frames:
                yield from self._step(frame)
        except VideoError as exc:  # the tracks seen so far still end, with their events
            self.error = str(exc)
            yield from self._end_all()
            self.close()
            raise
        except BaseException:  # Ctrl-C, or the caller stopped iterating: end quietly
            self.finish()
            raise
        self.complete = True
        yield from self._end_all()
        self.close()

    def finish(self) -> None:
        """End every live track (without events) and release the source and the gallery: what a caller that
        stops early (Ctrl-C) does before asking for the timeline."""
        if not self._closed:
            for _ in self._end_all():
                pass
        self.close()

    def _step(self, frame: Frame) -> Iterator[Event]:
        from norfair import Detection

        self.samples += 1
        self.last_time = frame.time
        try:
            found = self.finder.find(frame.pixels, "all", source=f"frame {frame.index}").faces
        except NoFaceError:
            found = []
        detections = []
        for face in found:
            x1, y1, x2, y2 = face.detection.box
            data = {"frame": frame.index, "face": face}
            detections.append(Detection(np.array([[x1, y1], [x2, y2]], dtype=float), data=data))
        self.tracker.update(detections)
        seen = set()
        for obj in self.tracker.tracked_objects:
            data = obj.last_detection.data
            if obj.id is None or data is None or data["frame"] != frame.index:
                continue
            seen.add(obj.id)
            face = data["face"]
            track = self.live.get(obj.id)
            if track is None:
                track = self.live[obj.id] = Track(0, frame.time, frame.time, face.detection.box)
            x1, y1, x2, y2 = (float(v) for v in face.detection.box)
            track.last, track.box = frame.time, (x1, y1, x2, y2)
            track.sightings += 1
            q = quality(face.image, face.detection.box, face.detection.score, self.embedder.info.input_size)
            track.keep(face.image, q)
            if track.sightings >= MIN_SIGHTINGS and track.sightings >= 2 * track.identified_at:
                if not track.id:
                    track.id, self._next_id = self._next_id, self._next_id + 1
                event = self._identify(track, frame.time)
                if event:
                    yield event
        alive = {o.id for o in self.tracker.tracked_objects if o.id is not None}
        for key in [k for k in self.live if k not in alive]:
            yield from self._end(self.live.pop(key))
        if self.frame_events or self.on_frame:
            current = [t for k, t in self.live.items() if k in seen and t.id]
            if self.on_frame:
                self.on_frame(frame, current)
            if self.frame_events:
                faces = tuple((t.id, t.person, t.box) for t in current)
                yield Event("frame", frame.time, faces=faces)

    def _identify(self, track: Track, now: float) -> Event | None:
        """Embed the track's best crops not yet embedded, and ask the gallery who the mean of them is: with the
        masked threshold where most of them are masked and the model has one."""
        todo = [i for i, (_, _, e, _) in enumerate(track.best) if e is None]
        if todo:
            crops = [track.best[i][1] for i in todo]
            rows = self.embedder.embed_crops(crops)
            if self.masked_promise is not None:
                covered = lower_face_covered(self.embedder, crops, rows)
            else:
                covered = np.zeros(len(crops), bool)
            for i, row, masked in zip(todo, rows, covered):
                q, crop, _, _ = track.best[i]
                track.best[i] = (q, crop, row, bool(masked))
        rows = np.stack([e for _, _, e, _ in track.best])
        mean = rows.mean(axis=0)
        mean = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        track.embedding = mean
        track.masked = 2 * sum(m for _, _, _, m in track.best) > len(track.best)
        threshold = self.masked_promise.threshold if track.masked and self.masked_promise else self.threshold
        answers = self.gallery.identify(np.vstack([mean[None], rows]), k=1, threshold=threshold)
        track.identified_at = track.sightings
        before = track.person
        if answers[0]:
            match = answers[0][0]
            track.person, track.distance = match.name, float(match.distance)
            track.confidence = sum(bool(a) and a[0].name == match.name for a in answers[1:]) / len(rows)
        else:
            track.person, track.distance = self._unknown(mean), None
            track.confidence = sum(not a for a in answers[1:]) / len(rows)
        if before is None:
            return Event("appeared", now, track.id, track.person, track.confidence, track.box)
        if track.person != before:
            return Event("identified", now, track.id, track.person, track.confidence, track.box)
        return None

    def _unknown(self, embedding: np.ndarray) -> str:
        """The running "Unknown N" of a stranger: the nearest earlier stranger within the model's threshold."""
        for centroid, name in self._unknowns:
            if float(squared_l2(centroid, embedding)) < self.embedder.threshold:
                return name
        name = f"{UNKNOWN} {len(self._unknowns) + 1}"
        self._unknowns.append((embedding, name))
        return name

    def _end(self, track: Track) -> Iterator[Event]:
        if track.sightings < MIN_SIGHTINGS:
            return
        if not track.id:
            track.id, self._next_id = self._next_id, self._next_id + 1
        if track.sightings != track.identified_at:  # last look with everything it gathered
            event = self._identify(track, track.last)
            if event:
                yield event
        track.best = track.best[:1] if self.keep_faces else []  # memory: an ended track keeps its best face only
        self.ended.append(track)
        yield Event("left", track.last, track.id, track.person, track.confidence, track.box)

    def _end_all(self) -> Iterator[Event]:
        for key in list(self.live):
            yield from self._end(self.live.pop(key))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.frames.close()
            self.gallery.close()

    # -- results

    def tracks(self) -> list[Track]:
        """Every track seen at least ``MIN_SIGHTINGS`` times and identified, ended or live, by first sighting,
        each ``named`` for the timeline: strangers by clustering the whole video."""
        done = [t for t in self.ended + list(self.live.values()) if t.id and t.embedding is not None]
        done.sort(key=lambda t: (t.first, t.id))
        strangers = []
        for t in done:
            t.named = t.person
            if t.person is None or t.person.startswith(UNKNOWN):
                strangers.append(t)
        if strangers:
            from facenet.cluster import cluster_embeddings

            labels = cluster_embeddings(
                np.stack([t.embedding for t in strangers if t.embedding is not None]),
                threshold=self.embedder.threshold,
                min_size=1,
            )
            names: dict[int, str] = {}
            for t, label in zip(strangers, labels):  # numbered by first appearance
                names.setdefault(int(label), f"{UNKNOWN} {len(names) + 1}")
                t.named = names[int(label)]
        return done

    def timeline(self, gap: float | None = None) -> Timeline:
        """Per person, their tracks merged into segments where they overlap or lie less than ``gap`` seconds apart
        (default: a track's memory)."""
        gap = TRACK_MEMORY_S if gap is None else gap
        segments: list[Segment] = []
        by_person: dict[str, list[Track]] = {}
        for t in self.tracks():
            by_person.setdefault(t.named or UNKNOWN, []).append(t)
        for person, tracks in by_person.items():
            group: list[Track] = []
            ordered: list[Track | None] = [*sorted(tracks, key=lambda t: t.first), None]
            for nxt in ordered:
                if group and (nxt is None or nxt.first > max(g.last for g in group) + gap):
                    weights = [g.sightings for g in group]
                    distances = [g.distance for g in group if g.distance is not None]
                    segments.append(
                        Segment(
                            person,
                            min(g.first for g in group),
                            max(g.last for g in group),
                            float(np.average([g.confidence for g in group], weights=weights)),
                            min(distances) if distances else None,
                            tuple(g.id for g in group),
                            any(g.masked for g in group),
                        )
                    )
                    group = []
                if nxt is not None:
                    group.append(nxt)
        segments.sort(key=lambda s: (s.start, s.person))
        duration = self.frames.duration if self.complete and getattr(self.frames, "duration", None) else None
        return Timeline(
            str(self.source) if not is_live(self.source) else str(getattr(self.frames, "_shown", lambda: "")()),
            self.fps,
            duration if duration is not None else self.last_time,
            segments,
            complete=self.complete,
            error=self.error,
        )

    def snapshots(self) -> dict[str, np.ndarray]:
        """The best face crop (model-sized, RGB) of each person of the timeline."""
        best: dict[str, tuple[float, np.ndarray]] = {}
        for t in self.tracks():
            name = t.named or UNKNOWN
            if t.best and (name not in best or t.best[0][0] > best[name][0]):
                best[name] = (t.best[0][0], t.best[0][1])
        return {k: v[1] for k, v in best.items()}


def video(
    source,
    gallery: str | os.PathLike | None = None,
    model=None,
    fps: float | None = 5.0,
    far: float | None = None,
    threshold: float | None = None,
    frame_events: bool = False,
    reconnect_s: float = 30.0,
    min_face: float | None = VIDEO_MIN_FACE,
    keep_faces: bool = True,
) -> VideoAnalysis:
    """Who appears when in ``source`` (a video file, a webcam index, or an rtsp/http stream URL), against the
    gallery at ``gallery`` (default: the CLI's). Iterate the result for ``Event``s as they happen; then (or after
    stopping early) ``.timeline()`` is the per-person timeline, ``.snapshots()`` the best face per person.

    ``fps``: frames analysed per second of video (``None``: every frame). ``far``: the wanted chance that a
    stranger is taken for someone enrolled, which sets the open-set threshold for the gallery's size as in
    ``facenet.identify`` (``threshold``: a squared-L2 one by hand). ``min_face``: the smallest face found, as a
    fraction of the frame's shorter side (frames are detected on a copy reduced to match; ``None``: full size).
    ``keep_faces=False``: ended tracks keep no face crop (``snapshots()`` is then empty; for very long videos).
    Raises ``VideoError`` for a source that
    cannot be opened; a file that turns out truncated or corrupt raises it at the end of the iteration, after
    the tracks seen so far have ended (their events yielded, the timeline kept)."""
    from facenet.api import _resolve

    return VideoAnalysis(
        source,
        _resolve(model),
        gallery,
        fps,
        far,
        threshold,
        frame_events,
        reconnect_s,
        min_face=min_face,
        keep_faces=keep_faces,
    )
