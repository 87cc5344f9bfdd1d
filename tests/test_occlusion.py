"""Occluders follow the landmarks (mask on the mouth, sunglasses on the eyes), are deterministic,
and the training set of looks differs from the evaluation set."""

import numpy as np
import pytest

from facenet.errors import FaceNetError
from facenet.occlusion import KINDS, occlude

# A face in a 200x200 grey image, rolled by 20 degrees: eyes, nose tip, mouth corners.
ANGLE = np.deg2rad(20)
ROT = np.array([[np.cos(ANGLE), -np.sin(ANGLE)], [np.sin(ANGLE), np.cos(ANGLE)]])
FACE = np.array([[-20, -15], [20, -15], [0, 10], [-15, 30], [15, 30]], float) @ ROT.T + [100, 95]
IMAGE = np.full((200, 200, 3), 128, np.uint8)


def changed(a, b, point, radius=4):
    x, y = np.round(point).astype(int)
    patch = lambda im: im[y - radius : y + radius + 1, x - radius : x + radius + 1].astype(int)  # noqa: E731
    return np.abs(patch(a) - patch(b)).mean() > 20


@pytest.mark.parametrize("kind", ["mask", "cloth_mask", "n95", "scarf"])
def test_mouth_coverings_land_on_the_mouth_and_leave_the_eyes(kind):
    out = occlude(IMAGE, FACE, kind, seed=3)
    mouth = (FACE[3] + FACE[4]) / 2
    assert changed(IMAGE, out, mouth)
    assert not changed(IMAGE, out, FACE[0]) and not changed(IMAGE, out, FACE[1])


def test_sunglasses_cover_the_eyes_and_leave_the_mouth():
    out = occlude(IMAGE, FACE, "sunglasses", seed=3)
    assert changed(IMAGE, out, FACE[0]) and changed(IMAGE, out, FACE[1])
    assert not changed(IMAGE, out, (FACE[3] + FACE[4]) / 2)


def test_cap_shadow_darkens_above_the_eyes_not_the_mouth():
    out = occlude(IMAGE, FACE, "cap_shadow", seed=1).astype(int)
    forehead = np.round(FACE[:2].mean(0) + ROT @ [0, -25]).astype(int)
    mouth = np.round((FACE[3] + FACE[4]) / 2).astype(int)
    assert out[forehead[1], forehead[0]].mean() < 100 and out[mouth[1], mouth[0]].mean() == 128


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_per_seed_and_variants_differ(kind):
    a, b = occlude(IMAGE, FACE, kind, seed=7), occlude(IMAGE, FACE, kind, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, IMAGE)
    assert not np.array_equal(a, occlude(IMAGE, FACE, kind, seed=7, variant="train"))
    assert a.dtype == np.uint8 and a.shape == IMAGE.shape


def test_follows_scale_and_position():
    """The same face twice as large elsewhere: the mask covers the corresponding place."""
    big = np.full((400, 400, 3), 128, np.uint8)
    face2 = (FACE - [100, 95]) * 2 + [220, 190]
    out = occlude(big, face2, "mask", seed=3)
    assert changed(big, out, (face2[3] + face2[4]) / 2, radius=8)
    assert not changed(big, out, face2[0], radius=8)


def test_bad_arguments_are_clear():
    with pytest.raises(FaceNetError, match="unknown occluder"):
        occlude(IMAGE, FACE, "helmet")
    with pytest.raises(FaceNetError, match="variant"):
        occlude(IMAGE, FACE, "mask", variant="test")
    with pytest.raises(FaceNetError, match="too close"):
        occlude(IMAGE, np.zeros((5, 2)), "mask")


def test_occlude_command_writes_deterministic_pngs(tmp_path, capsys):
    from PIL import Image

    from facenet.align.base import Detection
    from facenet.cli import main

    class Fixed:  # a detector with one known face
        name = "fixed"

        def detect(self, image):
            return [Detection((70, 70, 130, 140), 0.99, FACE)]

    import facenet.align.base as base

    base._BACKENDS["fixed-test"] = "tests_fixed:Fixed"
    import sys
    import types

    sys.modules["tests_fixed"] = types.SimpleNamespace(Fixed=Fixed)
    try:
        (tmp_path / "src" / "p").mkdir(parents=True)
        Image.fromarray(IMAGE).save(tmp_path / "src" / "p" / "a.jpg")
        for out in ("one", "two"):
            assert (
                main(
                    [
                        "occlude",
                        str(tmp_path / "src"),
                        str(tmp_path / out),
                        "--kind",
                        "sunglasses",
                        "--detector",
                        "fixed-test",
                        "--seed",
                        "4",
                    ]
                )
                == 0
            )
        a = np.asarray(Image.open(tmp_path / "one" / "p" / "a.png"))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "two" / "p" / "a.png")))
        assert changed(IMAGE, a, FACE[0])
        assert "1 photo(s) written" in capsys.readouterr().out
    finally:
        del base._BACKENDS["fixed-test"], sys.modules["tests_fixed"]
