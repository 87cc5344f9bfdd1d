"""PKSampler: batch composition, determinism, exact resume, small and single-image identities."""

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import DataLoader

from facenet.data.sampler import PKSampler
from facenet.errors import DataError


def labels_with_counts(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_batches_hold_p_identities_of_k_distinct_faces():
    labels = labels_with_counts([10] * 12 + [5] * 3)
    s = PKSampler(labels, p=4, k=5, seed=1)
    assert len(s) == 15 // 4 and s.batch_size == 20
    seen = []
    for batch in s:
        assert len(batch) == 20 and len(set(batch)) == 20
        ids = [labels[i] for i in batch]
        blocks = [ids[j : j + 5] for j in range(0, 20, 5)]
        assert all(len(set(b)) == 1 for b in blocks)  # K consecutive faces per identity
        assert len({b[0] for b in blocks}) == 4
        seen += [b[0] for b in blocks]
    assert len(seen) == len(set(seen))  # an identity appears at most once per epoch


def test_deterministic_from_seed_and_epoch():
    labels = labels_with_counts([6] * 20)
    a, b = PKSampler(labels, 4, 3, seed=5), PKSampler(labels, 4, 3, seed=5)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(labels, 4, 3, seed=6)) != first


def test_resume_mid_epoch_is_exact_through_a_dataloader():
    labels = labels_with_counts([4] * 30)
    s = PKSampler(labels, 3, 4, seed=2)
    s.set_epoch(3)
    full = [b.tolist() for b in DataLoader(range(len(labels)), batch_sampler=s)]
    resumed = PKSampler(labels, 3, 4, seed=2)  # a fresh process after a crash at step 4
    resumed.set_epoch(3, start=4)
    assert [b.tolist() for b in DataLoader(range(len(labels)), batch_sampler=resumed)] == full[4:]
    assert resumed.batch(3, 7) == full[7]
    with pytest.raises(DataError):
        resumed.set_epoch(0, start=len(s) + 1)


def test_identities_with_fewer_than_k_images_use_all_then_repeat_evenly():
    labels = labels_with_counts([2, 3, 8, 8])
    s = PKSampler(labels, 4, 6, seed=0)
    (batch,) = list(s)
    per_id = {}
    for i in batch:
        per_id.setdefault(labels[i], []).append(i)
    for ident, items in per_id.items():
        have = int((labels == ident).sum())
        counts = Counter(items)
        assert len(items) == 6
        assert len(counts) == min(have, 6)  # every image used before any repeat
        assert max(counts.values()) - min(counts.values()) <= 1  # repeats spread evenly


def test_mostly_singleton_dataset_uses_singletons_only_as_extra_negatives():
    labels = labels_with_counts([1] * 50 + [3] * 6)
    single = set(np.flatnonzero(np.isin(labels, np.arange(50))).tolist())
    s = PKSampler(labels, 2, 3, seed=0, extra_negatives=4)
    assert len(s) == 3 and s.batch_size == 10
    for batch in s:
        assert len(batch) == 10
        assert not single & set(batch[:6])  # P x K part: identities with >= 2 images only
        extra = batch[6:]
        assert set(extra) <= single and len(set(extra)) == 4
    assert all(not single & set(b) for b in PKSampler(labels, 2, 3))  # default: excluded
    with pytest.raises(DataError, match="extra_negatives"):
        PKSampler(labels, 2, 3, extra_negatives=51)


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(DataError, match="lower p"):
        PKSampler(labels_with_counts([1] * 10 + [2] * 2), p=3, k=2)
    with pytest.raises(DataError):
        PKSampler([0, 0, 1, 1], p=2, k=1)
    with pytest.raises(DataError):
        PKSampler([], p=2, k=2)


def test_string_labels():
    s = PKSampler(["bob", "ann", "bob", "ann", "cy"], p=2, k=2, seed=0)
    (batch,) = list(s)
    assert sorted(batch) == [0, 1, 2, 3]
