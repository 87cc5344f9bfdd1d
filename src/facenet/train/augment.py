"""Training-time augmentation, deterministic from a per-sample seed.

Every random choice comes from a NumPy generator seeded with (run seed, step,
position in batch), so a resumed run sees exactly the pixels an uninterrupted
run would, whatever the number of data-loading workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facenet.data.images import fit_to_input


@dataclass(frozen=True)
class Augmentation:
    size: int
    crop: bool = True            # random shift/scale/rotation jitter (the reference's random 160 crop of 182)
    flip: bool = True
    colour: float = 0.2          # max relative brightness / contrast / saturation change
    occlusion: float = 0.0       # probability of a synthetic occluder (band over eyes or lower face)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        face = fit_to_input(image, self.size)
        if self.crop:
            face = _jitter(face, rng)
        if self.flip and rng.random() < 0.5:
            face = face[:, ::-1]
        if self.colour > 0:
            face = _colour(face, rng, self.colour)
        if self.occlusion > 0 and rng.random() < self.occlusion:
            face = _occlude(face, rng)
        return np.ascontiguousarray(face)


def _jitter(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random similarity transform: +-10% scale, +-6% shift, +-8 degrees, reflected borders."""
    size = face.shape[0]
    scale = rng.uniform(0.9, 1.1)
    angle = rng.uniform(-8, 8)
    shift = rng.uniform(-0.06, 0.06, size=2) * size
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
    matrix[:, 2] += shift
    return cv2.warpAffine(face, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _colour(face: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    x = face.astype(np.float32)
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * saturation
    x = (x - x.mean()) * contrast + x.mean() * brightness
    return np.clip(x, 0, 255).astype(np.uint8)


def _occlude(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A flat-coloured band over the eyes (glasses) or the lower face (mask, scarf)."""
    size = face.shape[0]
    out = face.copy()
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    if rng.random() < 0.5:
        top = int(size * rng.uniform(0.28, 0.38))
        out[top:top + int(size * 0.14)] = colour
    else:
        out[int(size * rng.uniform(0.55, 0.68)):] = colour
    return out
