"""Held-out verification pairs: valid, distinct, balanced, reproducible, and sampled in bounded memory."""

import itertools
import tracemalloc

import numpy as np
import pytest

from facenet.errors import DataError
from facenet.train.data import held_out_pairs


def test_pairs_are_valid_distinct_balanced_and_reproducible():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 30, 200)
    p = held_out_pairs(labels, 400, seed=3)
    assert len(p.same) == 400 and p.same.sum() == 200
    assert (labels[p.first[p.same]] == labels[p.second[p.same]]).all()
    assert (labels[p.first[~p.same]] != labels[p.second[~p.same]]).all()
    pairs = set(zip(p.first.tolist(), p.second.tolist()))
    assert len(pairs) == 400 and all(i < j for i, j in pairs)
    assert sorted(np.bincount(p.folds).tolist()) == [40] * 10
    again = held_out_pairs(labels, 400, seed=3)
    assert np.array_equal(again.first, p.first) and np.array_equal(again.second, p.second)


def test_few_positive_pairs_are_all_used():
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 3, 4, 5, 6, 7])  # 1 + 1 + 3 = 5 positive pairs in all
    p = held_out_pairs(labels, 6000, seed=0, n_folds=2)
    brute = {(i, j) for i, j in itertools.combinations(range(12), 2) if labels[i] == labels[j]}
    assert set(zip(p.first[p.same].tolist(), p.second[p.same].tolist())) == brute
    with pytest.raises(DataError, match="too few"):
        held_out_pairs(np.arange(10), 6000, seed=0)  # nobody has two images


def test_memory_does_not_grow_with_the_square_of_the_images():
    """200,000 held-out images (CASIA-WebFace scale): listing every pair would need ~320 GB."""
    labels = np.repeat(np.arange(10_000), 20)
    tracemalloc.start()
    p = held_out_pairs(labels, 6000, seed=1)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(p.same) == 6000 and peak < 100 * 2**20


def test_max_images_keeps_a_sample():
    labels = np.repeat(np.arange(500), 10)
    p = held_out_pairs(labels, 2000, seed=2, max_images=1000)
    assert len(np.unique(np.concatenate([p.first, p.second]))) <= 1000
