"""Mask-aware matching (issue 24, item 2), as ``benchmarks/mask_aware_lfw.py`` measures it: a clean face "as
masked" (training-look masks drawn on its crop, ``facenet.occluder.masked_looks``), and the rule that compares
a pair as masked only when the occluder detector calls exactly one face's lower half covered. Measured not to
help the default model (RESULTS.md, "Mask-aware matching"), so nothing in facenet compares this way yet."""

import sys
from pathlib import Path

import numpy as np
import pytest

import facenet
from facenet.align.base import Detection
from facenet.align.crop import Recipe, cut_face, landmarks_in_crop
from facenet.occluder import AS_MASKED_KINDS, masked_looks, to_mask
from facenet.occlusion import occlude


@pytest.fixture(scope="module")
def default_model():
    return facenet.load_model()


@pytest.fixture(scope="module")
def photo(lfw_dir):
    """An LFW photo."""
    return str(sorted((lfw_dir / "images" / "Adrien_Brody").iterdir())[0])


@pytest.mark.parametrize("mode", ["similarity", "crop"])
def test_landmarks_in_crop_are_where_the_cut_puts_them(mode):
    """A dot drawn at each landmark of a photo lands, after the cut, where ``landmarks_in_crop`` says."""
    rng = np.random.default_rng(0)
    points = np.array([[90, 100], [150, 98], [122, 135], [98, 165], [146, 167]], float) + rng.normal(0, 2, (5, 2))
    detection = Detection((60.0, 60.0, 180.0, 210.0), 0.99, points)
    recipe = Recipe(mode=mode, margin=0.3 if mode == "crop" else 0.1, template="openvino")
    want = landmarks_in_crop(detection, 128, recipe, (240, 260))
    for (x, y), (cx, cy) in zip(points, want):
        photo = np.zeros((260, 240, 3), np.uint8)
        photo[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2] = 255
        crop = cut_face(photo, detection, 128, recipe)[..., 0].astype(float)
        ys, xs = np.nonzero(crop > 0)
        weights = crop[ys, xs]
        assert abs(np.average(xs, weights=weights) - cx) < 1.0 and abs(np.average(ys, weights=weights) - cy) < 1.0


def test_the_masked_looks_cover_only_the_lower_face(default_model, photo):
    """Each look changes the crop below the eyes only, and changes it: the view is a masked face, not noise."""
    found = default_model.find_faces(photo)
    face = found.faces[0]
    points = landmarks_in_crop(face.detection, default_model.info.input_size, default_model.recipe, found.size)
    eyes = int(points[:2, 1].max())
    looks = masked_looks(default_model, face, found.size)
    assert len(looks) == len(AS_MASKED_KINDS)
    for kind, look in zip(AS_MASKED_KINDS, looks):
        changed = np.any(look != face.image, axis=2)
        assert not changed[:eyes].any(), f"{kind} changed pixels above the eye line"
        assert changed[points[2, 1].astype(int) :].mean() > 0.3, f"{kind} hardly covers the lower face"
        # the training looks, never the evaluation ones
        assert np.array_equal(look, occlude(face.image, points, kind, seed=0, variant="train"))


def test_the_rule_masks_the_uncovered_face_only_when_the_other_is_covered():
    assert to_mask(["lower", "none"]) == 1 and to_mask(["none", "lower"]) == 0
    assert to_mask(["eyes", "lower"]) == 0  # sunglasses leave the lower face to compare
    for alike in (["none", "none"], ["lower", "lower"], ["eyes", "none"], ["eyes", "eyes"]):
        assert to_mask(alike) is None


def test_the_benchmark_compares_a_clean_pair_as_masked_only_when_the_detector_says_so():
    """``mask_aware_lfw``'s detector-driven comparisons follow ``to_mask``: the uncovered side's as-masked view
    against the covered side, and a pair both called uncovered (or both covered) compared as it is."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mask_aware_lfw as bench

    rng = np.random.default_rng(0)

    def face(label):
        rows = rng.normal(size=(5, 8))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        return bench.Face(rows[0], rows[1], dict(zip(AS_MASKED_KINDS, rows[2:])), label)

    a, b = face("none"), face("none")
    for first, second in ((a, b), (face("lower"), face("lower")), (face("eyes"), face("none"))):
        got = bench.comparisons(first, second, masked_second=False, look="mask")
        plain = bench.distance(first.plain, second.plain)
        for method in ("detector: as masked", "detector: fused"):
            assert got[method] == (pytest.approx(plain), False)
        assert not any(masked for _, masked in got.values())  # the oracle knows no side is masked either

    covered = face("lower")
    got = bench.comparisons(covered, b, masked_second=False, look="mask")
    assert got["detector: as masked"] == (pytest.approx(bench.distance(covered.plain, b.masked)), True)
    got = bench.comparisons(b, covered, masked_second=True, look="mask")
    assert got["detector: as masked"] == (pytest.approx(bench.distance(b.masked, covered.plain)), True)
    assert got["oracle: as masked (matching look)"] == (
        pytest.approx(bench.distance(b.per_kind["mask"], covered.plain)),
        True,
    )
