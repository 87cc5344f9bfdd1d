"""The training data path: batch augmentation as tensor ops, the decoded-crop cache, the loader's own rate."""

import numpy as np
import pytest
import torch
from PIL import Image

from facenet.data.synthetic import SyntheticFaces
from facenet.train.augment import (Augmentation, BatchAugmentation, _colour, _jitter, _occlude, colour_batch,
                                   jitter_batch, occlude_batch)

SIZE = 64


@pytest.fixture(scope="module")
def face():
    return SyntheticFaces(4, seed=0, size=SIZE).render(1, 0)


def as_batch(face):
    return torch.from_numpy(face).permute(2, 0, 1)[None].float()


def as_image(batch):
    return batch[0].permute(1, 2, 0).numpy()


def f64(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(4))
def test_batch_jitter_matches_opencv_on_the_same_draws(face, seed):
    want = _jitter(face, np.random.default_rng(seed)).astype(np.float32)
    rng = np.random.default_rng(seed)  # the same draws, in _jitter's order
    scale, angle, shift = rng.uniform(0.9, 1.1), rng.uniform(-8, 8), rng.uniform(-0.06, 0.06, size=2) * SIZE
    got = as_image(jitter_batch(as_batch(face), f64(scale), f64(angle), torch.from_numpy(shift)[None]))
    inside = np.s_[12:-12, 12:-12]  # the borders differ by design (reflection with or without the edge pixel)
    assert np.abs(got - want)[inside].max() < 2.0  # OpenCV interpolates in fixed point and rounds to uint8
    assert np.abs(got - want)[inside].mean() < 0.5


def test_batch_jitter_with_the_identity_transform_changes_nothing(face):
    x = as_batch(face)
    torch.testing.assert_close(jitter_batch(x, f64(1.0), f64(0.0), f64(0.0, 0.0)[None]), x, atol=1e-3, rtol=0)


@pytest.mark.parametrize("seed", range(3))
def test_batch_colour_matches_the_per_face_colour_jitter(face, seed):
    want = _colour(face, np.random.default_rng(seed), 0.3).astype(np.float32)
    brightness, contrast, saturation = np.random.default_rng(seed).uniform(0.7, 1.3, size=3)
    got = as_image(colour_batch(as_batch(face), f64(brightness), f64(contrast), f64(saturation)))
    assert np.abs(got - want).max() <= 1.0 + 1e-3  # the per-face path truncates to uint8


@pytest.mark.parametrize("seed", range(6))
def test_batch_occlusion_matches_the_per_face_occluder(face, seed):
    want = _occlude(face, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)  # _occlude's draws: colour, which band, where
    colour = rng.integers(0, 256, size=3, dtype=np.uint8)
    if rng.random() < 0.5:
        top = int(SIZE * rng.uniform(0.28, 0.38))
        bottom = top + int(SIZE * 0.14)
    else:
        top, bottom = int(SIZE * rng.uniform(0.55, 0.68)), SIZE
    got = occlude_batch(as_batch(face), torch.tensor([True]), f64(top), f64(bottom), f64(*colour)[None])
    np.testing.assert_array_equal(as_image(got), want.astype(np.float32))
    untouched = occlude_batch(as_batch(face), torch.tensor([False]), f64(top), f64(bottom), f64(*colour)[None])
    np.testing.assert_array_equal(as_image(untouched), face.astype(np.float32))


def test_batch_augmentation_flips_about_half_and_depends_only_on_seed_and_position(face):
    images = as_batch(face).repeat(64, 1, 1, 1).to(torch.uint8)
    flip_only = BatchAugmentation(crop=False, flip=True, colour=0.0)
    out = flip_only(images, seed=5)
    flipped = torch.all(out == images.float().flip(3), dim=(1, 2, 3))
    assert torch.all(flipped | torch.all(out == images.float(), dim=(1, 2, 3)))
    assert 16 < int(flipped.sum()) < 48
    full = BatchAugmentation(crop=True, flip=True, colour=0.2, occlusion=0.5)
    whole = full(images, seed=9)
    torch.testing.assert_close(full(images[40:], seed=9, first=40, total=64), whole[40:])  # a rank's slice
    assert not torch.equal(full(images, seed=10), whole)
    assert whole.dtype == torch.float32 and whole.min() >= 0 and whole.max() <= 255


def test_per_face_augmentation_turned_off_only_fits_the_crop(face):
    plain = Augmentation(SIZE, crop=False, flip=False, colour=0.0, occlusion=0.0)
    np.testing.assert_array_equal(plain(face, np.random.default_rng(0)), face)
