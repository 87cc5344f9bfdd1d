"""Synthetic videos made from LFW photos, for the video tests and ``benchmarks/bench_video.py``.

A scene is a still background with actors: each a face photo (its central part, as a square tile) that enters
at ``start``, moves in a straight line from ``origin`` to ``target`` and leaves at ``end``. Later actors are
drawn over earlier ones (a crossing hides the one behind). Written with OpenCV's VideoWriter into the caller's
folder (a test's tmp_path); the truth of where each actor is, frame by frame, comes with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass(frozen=True)
class Actor:
    name: str
    photo: Path
    start: float
    end: float
    origin: tuple[float, float]  # top-left of the tile, as fractions of the frame's width and height
    target: tuple[float, float]
    size: float = 0.35  # tile side as a fraction of the frame's height

    def box(self, t: float, width: int, height: int) -> tuple[int, int, int, int] | None:
        """The tile's box (x1, y1, x2, y2) in pixels at time ``t``, None when the actor is off screen."""
        if not self.start <= t < self.end:
            return None
        u = (t - self.start) / max(self.end - self.start, 1e-9)
        x = (self.origin[0] + u * (self.target[0] - self.origin[0])) * width
        y = (self.origin[1] + u * (self.target[1] - self.origin[1])) * height
        side = round(self.size * height)
        return round(x), round(y), round(x) + side, round(y) + side


def tile(photo: Path, side: int) -> np.ndarray:
    """The photo's central 60% (an LFW face and its surroundings), resized to side x side, BGR."""
    image = cv2.imread(str(photo))
    h, w = image.shape[:2]
    m = round(0.2 * min(h, w))
    return cv2.resize(image[m : h - m, m : w - m], (side, side), interpolation=cv2.INTER_AREA)


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A still, textured background (gradient and a little noise), BGR."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    base = 60 + 80 * x + 40 * y + np.array([0, 20, 40])[None, None, :]
    return np.clip(base + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)


def write_scene(
    path: Path,
    actors: list[Actor],
    duration: float,
    fps: float = 10.0,
    size: tuple[int, int] = (640, 360),
    fourcc: str = "mp4v",
) -> int:
    """Write the scene as a video file; returns the number of frames."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path} with {fourcc}")
    still = background(width, height)
    tiles = {a.name: tile(a.photo, round(a.size * height)) for a in actors}
    frames = round(duration * fps)
    for i in range(frames):
        t = i / fps
        frame = still.copy()
        for actor in actors:
            box = actor.box(t, width, height)
            if box is None:
                continue
            x1, y1, x2, y2 = box
            picture = tiles[actor.name]
            cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
            if cx2 > cx1 and cy2 > cy1:
                frame[cy1:cy2, cx1:cx2] = picture[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
        writer.write(frame)
    writer.release()
    return frames


def who_is_at(actors: list[Actor], t: float, box, size: tuple[int, int]) -> str | None:
    """The actor whose tile holds the centre of ``box`` at time ``t`` (the one drawn on top), if any."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for actor in reversed(actors):
        b = actor.box(t, *size)
        if b and b[0] <= cx < b[2] and b[1] <= cy < b[3]:
            return actor.name
    return None
