"""benchmarks/upper_face.py: the pieces its figures rest on (the figures live in RESULTS.md)."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import upper_face  # noqa: E402

from facenet.distances import squared_l2  # noqa: E402


def test_upper_greys_the_rows_from_the_cut_and_nothing_else():
    crops = np.random.default_rng(0).integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    out = upper_face.upper(crops, 6)
    assert (out[:, 6:] == 127).all()
    assert np.array_equal(out[:, :6], crops[:, :6])
    assert not np.shares_memory(out, crops) and not (crops[:, 6:] == 127).all()  # the input is left as it was


def test_the_cut_lies_between_the_eyes_and_the_nose():
    import facenet
    from facenet.align.crop import template_points

    model = facenet.load_model(detect=False)
    points = template_points(model.info.input_size, model.recipe.margin, model.recipe.template)
    eyes, nose = points[:2, 1].mean(), points[2, 1]
    assert eyes < upper_face.cut_row(model) < nose


def test_fused_distance_is_the_mean_of_the_two():
    rng = np.random.default_rng(1)

    def unit(n):
        v = rng.normal(size=(n, 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    plain, up = unit(5), unit(5)
    fused = upper_face.scorings(plain, up)["fused"]
    assert np.allclose(np.linalg.norm(fused, axis=1), 1, atol=1e-6)  # still unit: the FAR table's unit holds
    expected = (squared_l2(plain[:1], plain, pairwise=True) + squared_l2(up[:1], up, pairwise=True)) / 2
    assert np.allclose(squared_l2(fused[:1], fused, pairwise=True), expected, atol=1e-5)
