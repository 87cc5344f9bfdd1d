"""Training-time augmentation, deterministic from a per-sample seed.

Every random choice comes from a NumPy generator seeded with (run seed, step,
position in batch), so a resumed run sees exactly the pixels an uninterrupted
run would, whatever the number of data-loading workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facenet.data.images import fit_to_input
from facenet.occlusion import KINDS, occlude


@dataclass(frozen=True)
class Augmentation:
    """What happens to one face in the loader. With ``landmarks`` (where the five landmarks sit in an
    aligned crop of this size: the template of the data's recipe) the occluders are the landmark-placed
    masks, sunglasses, scarves, hands and cap shadows of ``facenet.occlusion``, drawn in their *train*
    looks (evaluation draws the others) before the jitter, so they move with the face; without, a
    flat band over the eyes or the lower face stands in (synthetic faces, box crops)."""

    size: int
    crop: bool = True  # random shift/scale/rotation jitter (the reference's random 160 crop of 182)
    flip: bool = True
    colour: float = 0.2  # max relative brightness / contrast / saturation change
    occlusion: float = 0.0  # probability of an occluder
    landmarks: tuple | None = None  # ((x, y) x 5) in a size x size crop: landmark-placed occluders

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.views(image, rng)[0]

    def views(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(the face as training sees it, the same view without its landmark-placed occluder): a teacher
        embeds the second, so the student learns to give an occluded face its unoccluded embedding."""
        face = fit_to_input(image, self.size)
        occluded = face
        if self.landmarks is not None and self.occlusion > 0 and rng.random() < self.occlusion:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            occluded = occlude(face, np.asarray(self.landmarks), kind, seed=int(rng.integers(2**31)), variant="train")
        if occluded is face:
            return (view := self._rest(face, rng)), view
        state = rng.bit_generator.state  # both views get the same jitter, flip and colour draws
        view = self._rest(occluded, rng)
        rng.bit_generator.state = state
        return view, self._rest(face, rng)

    def _rest(self, face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.crop:
            face = _jitter(face, rng)
        if self.flip and rng.random() < 0.5:
            face = face[:, ::-1]
        if self.colour > 0:
            face = _colour(face, rng, self.colour)
        if self.landmarks is None and self.occlusion > 0 and rng.random() < self.occlusion:
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
        out[top : top + int(size * 0.14)] = colour
    else:
        out[int(size * rng.uniform(0.55, 0.68)) :] = colour
    return out


@dataclass(frozen=True)
class BatchAugmentation:
    """``Augmentation``'s jitter, flip, colour and occlusion as tensor ops on a whole batch.

    It runs where the batch is (``--augment-on device``): on a GPU the loader's workers then only
    decode and crop, which is what lets a few CPU cores feed a fast GPU. The random draws are the
    same distributions as ``Augmentation``'s, taken from a CPU generator seeded per step, so the
    result depends on (seed, step) alone (a resumed run sees the same pixels) and not on the device
    or the number of processes: ``first`` and ``total`` place a rank's slice in the global batch.
    Differences from the per-face path: values stay float (no rounding to uint8 in between) and
    the jitter's borders repeat the edge pixel before reflecting (OpenCV's path reflects without it).
    """

    crop: bool = True
    flip: bool = True
    colour: float = 0.2
    occlusion: float = 0.0

    def __call__(self, images: torch.Tensor, seed: int, first: int = 0, total: int | None = None) -> torch.Tensor:
        """uint8 (or float 0..255) N,3,S,S -> float32 N,3,S,S in 0..255, on the images' device."""
        n, size = len(images), images.shape[-1]
        total = n if total is None else total
        u = torch.rand(total, 14, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        u = u[first : first + n]
        x = images.float()
        if self.crop:
            x = jitter_batch(
                x, scale=0.9 + 0.2 * u[:, 0], angle=-8 + 16 * u[:, 1], shift=(-0.06 + 0.12 * u[:, 2:4]) * size
            )
        if self.flip:
            x = torch.where(_per_image(u[:, 4] < 0.5, x), x.flip(3), x)
        if self.colour > 0:
            factors = 1 - self.colour + 2 * self.colour * u[:, 5:8]
            x = colour_batch(x, *factors.T)
        if self.occlusion > 0:
            eyes = u[:, 9] < 0.5
            top = (size * torch.where(eyes, 0.28 + 0.10 * u[:, 10], 0.55 + 0.13 * u[:, 10])).floor()
            bottom = torch.where(eyes, top + int(size * 0.14), torch.full_like(top, size))
            colours = (u[:, 11:14] * 256).floor()
            x = occlude_batch(x, u[:, 8] < self.occlusion, top, bottom, colours)
        return x


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image values (N,) drawn on the CPU, shaped N,1,1,1 on ``like``'s device and dtype family."""
    values = values.to(like.dtype) if values.is_floating_point() else values
    return values.to(like.device, non_blocking=True).view(-1, 1, 1, 1)


def jitter_batch(x: torch.Tensor, scale: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image similarity transforms about the centre, as ``cv2.getRotationMatrix2D(centre, angle,
    scale)`` plus ``shift`` pixels and ``cv2.warpAffine`` (bilinear) would apply them to square images."""
    size = x.shape[-1]
    rad = torch.deg2rad(angle)
    alpha, beta = scale * torch.cos(rad), scale * torch.sin(rad)
    centre = size / 2
    # OpenCV's forward map in pixel coordinates: dst = A src + t
    t = torch.stack([(1 - alpha) * centre - beta * centre, beta * centre + (1 - alpha) * centre], 1) + shift
    inv = torch.stack([torch.stack([alpha, -beta], 1), torch.stack([beta, alpha], 1)], 1) / (scale**2)[:, None, None]
    # grid_sample's normalised coordinates (align_corners=False): pixel = k * u + o
    k, o = size / 2, (size - 1) / 2
    offset = (inv @ (o - t)[:, :, None])[:, :, 0] - o
    theta = torch.cat([inv, (offset / k)[:, :, None]], 2).to(x.device, x.dtype, non_blocking=True)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_batch(
    x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor
) -> torch.Tensor:
    """``_colour``'s saturation, contrast and brightness change, per image, without the uint8 rounding."""
    grey = x.mean(dim=1, keepdim=True)
    x = grey + (x - grey) * _per_image(saturation, x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * _per_image(contrast, x) + mean * _per_image(brightness, x)
    return x.clamp(0, 255)


def occlude_batch(
    x: torch.Tensor, apply: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, colours: torch.Tensor
) -> torch.Tensor:
    """Rows ``top`` (inclusive) to ``bottom`` (exclusive) of the images where ``apply`` filled with a flat colour."""
    rows = torch.arange(x.shape[2], device=x.device, dtype=x.dtype).view(1, 1, -1, 1)
    band = (rows >= _per_image(top, x)) & (rows < _per_image(bottom, x)) & _per_image(apply, x)
    return torch.where(band, colours.to(x.device, x.dtype, non_blocking=True)[:, :, None, None], x)
