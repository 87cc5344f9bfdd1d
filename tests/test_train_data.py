"""The training data path: batch augmentation as tensor ops, the decoded-crop cache, the loader's own rate."""

import numpy as np
import pytest
import torch
from PIL import Image

from facenet.data.synthetic import SyntheticFaces
from facenet.train.augment import (
    Augmentation,
    BatchAugmentation,
    _colour,
    _jitter,
    _occlude,
    colour_batch,
    jitter_batch,
    occlude_batch,
)

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


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """6 identities x 4 JPEG photos of different sizes (not square, not the input size)."""
    root = tmp_path_factory.mktemp("faces")
    people = SyntheticFaces(6, seed=2, size=96)
    for person in range(6):
        (root / f"p{person}").mkdir()
        for i in range(4):
            image = Image.fromarray(people.render(person, i)).resize((90 + 7 * i, 110))
            image.save(root / f"p{person}" / f"{i}.jpg", quality=90)
    return root


def folder_config(tmp_path, data, **overrides):
    from test_train import tiny_config

    return tiny_config(
        tmp_path / "run",
        data=str(data),
        identities_per_batch=3,
        faces_per_identity=2,
        holdout_identities=0.0,
        **overrides,
    )


def test_cached_crops_give_the_batches_of_the_uncached_folder(tmp_path, jpeg_folder):
    from facenet.data.sampler import PKSampler
    from facenet.train.data import CachedCrops, StepBatches, build_sources, face_augmentation

    config = folder_config(tmp_path, jpeg_folder, augment_occlusion=0.5)
    plain, _ = build_sources(config)
    cached, _ = build_sources(folder_config(tmp_path, jpeg_folder, cache_crops=True))
    assert isinstance(cached, CachedCrops) and cached.crops.shape == (24, 32, 32, 3)
    assert cached.crops.dtype == np.uint8
    sampler = PKSampler(plain.labels, 3, 2, seed=config.seed)
    want = StepBatches(plain, sampler, face_augmentation(config), config.seed)
    got = StepBatches(cached, sampler, face_augmentation(config), config.seed)
    for step in range(3):
        assert torch.equal(got[step][0], want[step][0]) and torch.equal(got[step][1], want[step][1])


def test_device_augmented_run_resumes_bit_for_bit(tmp_path, monkeypatch, jpeg_folder):
    from test_precision import _final_weights, _interrupt_at_call
    from test_train import losses

    from facenet.train.loop import train

    settings = dict(augment_on="device", augment_occlusion=0.3, cache_crops=True, steps=6, eval_every=6)
    reference = folder_config(tmp_path / "a", jpeg_folder, **settings)
    train(reference, progress=False)
    interrupted = folder_config(tmp_path / "b", jpeg_folder, **settings)
    restore = _interrupt_at_call(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, progress=False)
    restore()
    train(interrupted, resume=True, progress=False)
    assert losses(tmp_path / "b" / "run") == losses(tmp_path / "a" / "run")
    want, got = _final_weights(tmp_path / "a" / "run"), _final_weights(tmp_path / "b" / "run")
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_device_augmentation_leaves_only_the_crop_to_the_workers(tmp_path, jpeg_folder):
    from facenet.train.data import batch_augmentation, face_augmentation

    on_device = folder_config(tmp_path, jpeg_folder, augment_on="device", augment_occlusion=0.2)
    assert face_augmentation(on_device) == Augmentation(32, crop=False, flip=False, colour=0.0, occlusion=0.0)
    assert batch_augmentation(on_device) == BatchAugmentation(crop=True, flip=True, colour=0.2, occlusion=0.2)
    assert batch_augmentation(folder_config(tmp_path, jpeg_folder)) is None


def test_loader_measurement_counts_the_images_it_delivers(tmp_path, jpeg_folder, monkeypatch):
    import facenet.train.data as data

    delivered = []
    real = data.standardise
    monkeypatch.setattr(data, "standardise", lambda x, method: delivered.append(len(x)) or real(x, method))
    rate = data.measure_loader(folder_config(tmp_path, jpeg_folder, workers=1), torch.device("cpu"), steps=4)
    assert delivered == [6] * 6  # 2 warm-up batches, 4 timed, of P x K = 3 x 2
    assert rate["images_per_s"] > 0 and rate["workers"] == 1 and rate["steps"] == 4


def test_workers_default_to_the_cores_left_by_the_training_process(monkeypatch):
    import os

    from facenet.train.data import loader_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert loader_workers(-1) == 7 and loader_workers(0) == 0 and loader_workers(3) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert loader_workers(-1) == 1


def test_cli_speed_options_reach_the_configuration(tmp_path):
    import argparse

    from facenet.commands.train import config_from_args, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "train",
            "--out",
            str(tmp_path / "r"),
            "--precision",
            "bf16",
            "--augment-on",
            "device",
            "--cache",
            "--compile",
            "--workers",
            "3",
        ]
    )
    config = config_from_args(args)
    assert (config.precision, config.augment_on, config.cache_crops, config.compile, config.workers) == (
        "bf16",
        "device",
        True,
        True,
        3,
    )
    default = config_from_args(parser.parse_args(["train", "--out", str(tmp_path / "r")]))
    assert (default.precision, default.augment_on, default.cache_crops, default.compile) == (
        "auto",
        "workers",
        False,
        False,
    )


def test_each_rank_decodes_only_its_share_of_the_global_batch():
    """Data-parallel loading: the ranks' shards, put together, are the one-process batch, and each rank
    reads only its own faces (W times less decoding and augmentation than the whole batch)."""
    from facenet.data.sampler import PKSampler
    from facenet.train.augment import Augmentation
    from facenet.train.config import TrainConfig
    from facenet.train.data import StepBatches, build_sources

    config = TrainConfig(
        arch="nns",
        image_size=32,
        synthetic_identities=12,
        synthetic_images_per_identity=4,
        holdout_identities=0.0,
        seed=1,
    )
    source, _ = build_sources(config)
    reads = []

    class Counting:
        labels, num_identities = source.labels, source.num_identities

        def __len__(self):
            return len(source)

        def image(self, i):
            reads.append(i)
            return source.image(i)

    sampler = PKSampler(source.labels, 4, 2, seed=1)
    whole_images, whole_labels, _ = StepBatches(Counting(), sampler, Augmentation(32), 1)[3]
    assert len(reads) == 8
    shards = []
    for rank in range(2):
        reads.clear()
        images, labels, _ = StepBatches(Counting(), sampler, Augmentation(32), 1, shard=(rank, 2))[3]
        assert len(reads) == 4 and torch.equal(labels, whole_labels)
        shards.append(images)
    assert torch.equal(torch.cat(shards), whole_images)
