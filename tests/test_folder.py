import numpy as np
import pytest
import torch.utils.data
from PIL import Image

from facenet.data.folder import FolderDataset
from facenet.errors import DataError


def make_tree(root, counts, ext="png"):
    for name, n in counts.items():
        folder = root / name
        folder.mkdir(parents=True)
        for k in range(n):
            Image.fromarray(np.full((6, 5, 3), 10 * k, np.uint8)).save(folder / f"{k:02d}.{ext}")
    return root


def test_scans_sorted_identities_and_samples(tmp_path):
    root = make_tree(tmp_path, {"bob": 2, "alice": 3, "carol": 1})
    (root / "alice" / "notes.txt").write_text("not an image")
    (root / "alice" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    (root / "README.md").write_text("top-level files are not identities")
    ds = FolderDataset(root)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert ds.classes == ["alice", "bob", "carol"]
    assert len(ds) == 6
    assert [(p.parent.name, p.name, y) for p, y in ds.samples][:4] == [
        ("alice", "00.png", 0),
        ("alice", "01.png", 0),
        ("alice", "02.png", 0),
        ("bob", "00.png", 1),
    ]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(ds.images_per_class, [3, 2, 1])
    image, label = ds[4]
    assert image.shape == (6, 5, 3) and image.dtype == np.uint8 and label == 1
    assert (image == 10).all()


def test_extensions_are_case_insensitive_and_configurable(tmp_path):
    root = make_tree(tmp_path, {"a": 2})
    (root / "a" / "X.JPG").write_bytes((root / "a" / "00.png").read_bytes())
    assert len(FolderDataset(root)) == 3
    assert len(FolderDataset(root, extensions=("jpg",))) == 1


def test_min_images_drops_small_identities(tmp_path):
    ds = FolderDataset(make_tree(tmp_path, {"a": 1, "b": 3, "c": 2}), min_images=2)
    assert ds.classes == ["b", "c"]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1])
    with pytest.raises(DataError, match="at least 4"):
        FolderDataset(tmp_path, min_images=4)


def test_errors_for_missing_or_empty_datasets(tmp_path):
    with pytest.raises(DataError, match="not found"):
        FolderDataset(tmp_path / "missing")
    with pytest.raises(DataError, match="no identity sub-folders"):
        FolderDataset(tmp_path)
    (tmp_path / "someone").mkdir()
    (tmp_path / "someone" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        FolderDataset(tmp_path)


def test_reads_a_synthetic_dataset(tmp_path):
    from facenet.data.synthetic import write_dataset

    root = write_dataset(tmp_path, num_identities=3, images_per_identity=2, size=32)
    ds = FolderDataset(root)
    assert ds.classes == ["id_00000", "id_00001", "id_00002"]
    assert ds[5][0].shape == (32, 32, 3) and ds[5][1] == 2


def test_training_data_reads_every_suffix_the_commands_read(tmp_path):
    """One list of image suffixes: a .gif in a training folder counts (it did not), as in embed and align."""
    from facenet.align.dataset import find_images
    from facenet.data.images import expand_image_paths

    root = make_tree(tmp_path / "data", {"ann": 2}, ext="gif")
    assert len(FolderDataset(root)) == 2
    assert len(find_images(root)) == 2 and len(expand_image_paths([str(root)])) == 2
