"""One squared-L2 function for every NumPy caller (issue 26, item 10): checked against brute force."""

import re
from pathlib import Path

import numpy as np
import pytest

import facenet
from facenet.distances import squared_l2


def _brute(x, y) -> float:
    return sum((float(p) - float(q)) ** 2 for p, q in zip(x, y))


@pytest.fixture
def unit_rows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 16)).astype(np.float32), rng.normal(size=(7, 16)).astype(np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)


def test_pairs_one_against_many_and_matrices_match_brute_force(unit_rows):
    a, b = unit_rows
    np.testing.assert_allclose(squared_l2(a, b[:5]), [_brute(x, y) for x, y in zip(a, b)], rtol=1e-5)
    np.testing.assert_allclose(squared_l2(a[0], b), [_brute(a[0], y) for y in b], rtol=1e-5)
    np.testing.assert_allclose(squared_l2(a, b, pairwise=True), [[_brute(x, y) for y in b] for x in a], atol=1e-5)
    assert squared_l2(a, a, pairwise=True).min() >= 0  # rounding never makes a distance negative
    assert facenet.distance(a[0], b[0]) == pytest.approx(_brute(a[0], b[0]), rel=1e-5)


def test_the_inputs_precision_is_kept_and_at_least_float32(unit_rows):
    a, b = unit_rows
    assert squared_l2(a, b[:5]).dtype == np.float32 and squared_l2([[0, 1]], [[1, 0]]).dtype == np.float64
    d64 = squared_l2(a.astype(np.float64), b.astype(np.float64), pairwise=True)
    assert d64.dtype == np.float64
    np.testing.assert_allclose(d64, [[_brute(x, y) for y in b] for x in a], atol=1e-12)


def test_no_other_squared_l2_helper_in_the_package():
    """The package once had five (api, embedder, evaluation, calibration, gallery) and export's own; training
    keeps its torch one."""
    package = Path(facenet.__file__).parent
    pattern = re.compile(r"\*\* ?2\)\.sum|np\.sum\(\(.* - .*\*\* ?2|np\.square\(.* - |- 2(\.0)? \*.* @ ")
    found = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "distances.py" and path.relative_to(package).parts[0] not in ("train", "losses")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == []
