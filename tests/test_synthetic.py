import os

import numpy as np
import pytest
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from facenet.data.images import load_image
from facenet.data.synthetic import SyntheticFaces, write_dataset
from facenet.errors import DataError

SIZE = 64


def test_same_seed_same_pixels_and_other_seed_differs():
    a = SyntheticFaces(5, seed=3, size=SIZE, occlusion_prob=0.5)
    b = SyntheticFaces(5, seed=3, size=SIZE, occlusion_prob=0.5)
    c = SyntheticFaces(5, seed=4, size=SIZE, occlusion_prob=0.5)
    for identity, index in [(0, 0), (2, 7), (4, 1)]:
        img = a.render(identity, index)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8 and img.flags.writeable
        np.testing.assert_array_equal(img, b.render(identity, index))
        assert np.abs(img.astype(int) - c.render(identity, index)).mean() > 10
    assert a.traits(1) != c.traits(1)


def test_identities_extend_consistently_with_dataset_size():
    small, large = SyntheticFaces(3, seed=1, size=SIZE), SyntheticFaces(100, seed=1, size=SIZE)
    for identity in range(3):
        assert small.traits(identity) == large.traits(identity)
        np.testing.assert_array_equal(small.render(identity, 5), large.render(identity, 5))


def test_images_of_one_identity_differ_but_traits_stay():
    faces = SyntheticFaces(4, seed=0, size=SIZE)
    traits = faces.traits(2)
    assert all(faces.traits(2) == traits for _ in range(3))
    imgs = [faces.render(2, k).astype(int) for k in range(6)]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 5  # pose, lighting, background change
    assert len({faces.traits(i).skin for i in range(4)}) > 1


def test_skin_tones_are_shared_between_identities():
    from facenet.data.synthetic import SKIN_TONES

    faces = SyntheticFaces(60, seed=0)
    nearest = [int(np.argmin(np.abs(np.array(SKIN_TONES) - faces.traits(i).skin).sum(1))) for i in range(60)]
    counts = np.bincount(nearest, minlength=len(SKIN_TONES))
    assert counts.max() >= 5  # many people per tone: colour cannot identify them


def test_occlusions_change_the_image():
    plain = SyntheticFaces(3, seed=0, size=SIZE, occlusion_prob=0.0)
    occluded = SyntheticFaces(3, seed=0, size=SIZE, occlusion_prob=1.0)
    diffs = [np.abs(plain.render(1, k).astype(int) - occluded.render(1, k)).mean() for k in range(4)]
    assert min(diffs) > 0


def test_bad_arguments():
    with pytest.raises(DataError):
        SyntheticFaces(0)
    with pytest.raises(DataError):
        SyntheticFaces(3, occlusion_prob=1.5)
    with pytest.raises(DataError, match="out of range"):
        SyntheticFaces(3).render(3, 0)


def _grey16(images):
    """Prewhitened 16x16 grey thumbnails: a crude appearance feature."""
    x = np.stack(
        [np.asarray(Image.fromarray(im).convert("L").resize((16, 16), Image.BILINEAR), np.float32) for im in images]
    ).reshape(len(images), -1)
    x -= x.mean(1, keepdims=True)
    return x / (x.std(1, keepdims=True) + 1e-6)


def _held_out_accuracy(features, labels, train, classifier):
    classifier.fit(features[train], labels[train])
    return float((classifier.predict(features[~train]) == labels[~train]).mean())


def test_identity_is_in_the_face_not_in_the_mean_colour():
    ids, per = 30, 8
    faces = SyntheticFaces(ids, seed=0, size=SIZE)
    images = np.stack([faces.render(i, k) for i in range(ids) for k in range(per)])
    labels = np.repeat(np.arange(ids), per)
    train = np.tile(np.arange(per) < per // 2, ids)
    chance = 1 / ids

    mean_rgb = images.reshape(len(images), -1, 3).mean(1)
    colour_acc = max(
        _held_out_accuracy(mean_rgb, labels, train, clf) for clf in (KNeighborsClassifier(1), NearestCentroid())
    )
    pixel_acc = _held_out_accuracy(_grey16(images), labels, train, NearestCentroid())
    assert colour_acc < 0.15, colour_acc  # chance is 0.033
    assert pixel_acc > 3 * chance, pixel_acc  # the face geometry does carry identity
    assert pixel_acc > colour_acc + 0.05

    # The same mean-colour classifier separates a naive generator (one fixed colour per identity,
    # mild noise) almost perfectly, so the low score above is the data's doing, not the classifier's.
    rng = np.random.default_rng(0)
    naive = rng.uniform(40, 220, (ids, 3))[labels] + rng.normal(0, 2, (len(labels), 3))
    assert _held_out_accuracy(naive, labels, train, NearestCentroid()) > 0.9


def test_write_dataset_layout_and_resume(tmp_path):
    out = write_dataset(tmp_path / "synth", num_identities=3, images_per_identity=2, seed=5, size=SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["id_00000", "id_00001", "id_00002"]
    files = sorted(out.glob("*/*.png"))
    assert [f.relative_to(out).as_posix() for f in files][:2] == ["id_00000/0000.png", "id_00000/0001.png"]
    assert len(files) == 6
    faces = SyntheticFaces(3, seed=5, size=SIZE)
    np.testing.assert_array_equal(load_image(out / "id_00002" / "0001.png"), faces.render(2, 1))

    # A killed run leaves a temporary file and a missing image; a rerun keeps finished files,
    # removes the temporary and fills the gap.
    kept = out / "id_00001" / "0000.png"
    kept.write_bytes(kept.read_bytes())
    os.utime(kept, (1_000_000, 1_000_000))
    (out / "id_00001" / "0001.png").unlink()
    stale = out / "id_00001" / ".0001.png.abc123.tmp"
    stale.write_bytes(b"half a png")
    write_dataset(out, num_identities=3, images_per_identity=2, seed=5, size=SIZE)
    assert not stale.exists()
    assert kept.stat().st_mtime == 1_000_000
    np.testing.assert_array_equal(load_image(out / "id_00001" / "0001.png"), faces.render(1, 1))
    assert len(list(out.glob("*/*"))) == 6


def test_write_dataset_jpeg_and_bad_format(tmp_path):
    out = write_dataset(tmp_path, 1, 1, size=SIZE, ext="jpg")
    assert load_image(out / "id_00000" / "0000.jpg").shape == (SIZE, SIZE, 3)
    with pytest.raises(DataError):
        write_dataset(tmp_path, 1, 1, ext="gif")
