"""``facenet align``: whole-dataset alignment, report, resume, workers, and source files left untouched."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from facenet.align.crop import Recipe
from facenet.align.dataset import AlignSettings, align_dataset, read_recipe
from facenet.cli import main
from facenet.errors import DataError, FaceNetError


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def synthetic_tree(root, people=2, per_person=3):
    rng = np.random.default_rng(0)
    for i in range(people):
        for j in range(per_person):
            path = root / f"person_{i}" / f"img_{j}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (90 + 10 * j, 80, 3), dtype=np.uint8)).save(path)
    return root


@pytest.fixture()
def real_tree(tmp_path, lfw_dir):
    src = tmp_path / "src"
    (src / "alice").mkdir(parents=True)
    (src / "bob").mkdir()
    shutil.copy(lfw_dir / "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg", src / "alice/a1.jpg")
    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(src / "alice/grey.png")
    shutil.copy(lfw_dir / "images/Abba_Eban/Abba_Eban_0001.jpg", src / "bob/b1.jpg")
    two = np.full((300, 560, 3), 128, np.uint8)
    two[25:275, 20:270] = np.asarray(Image.open(src / "alice/a1.jpg"))
    two[25:275, 290:540] = np.asarray(Image.open(src / "bob/b1.jpg"))
    Image.fromarray(two).save(src / "bob/two.png")
    (src / "bob/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return src


@pytest.fixture()
def yunet_settings():
    from facenet.align import get_detector

    try:
        get_detector("yunet")
    except FaceNetError as exc:
        pytest.skip(str(exc))
    return AlignSettings(recipe=Recipe(detector="yunet"))


def test_real_dataset_outputs_report_and_untouched_sources(real_tree, tmp_path, yunet_settings):
    before = snapshot(real_tree)
    dst = tmp_path / "dst"
    report = align_dataset(real_tree, dst, yunet_settings, progress=False)
    assert snapshot(real_tree) == before
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*.png")) == ["alice/a1.png", "bob/b1.png", "bob/two.png"]
    for p in dst.rglob("*.png"):
        assert Image.open(p).size == (160, 160)
        assert p.stat().st_mode & 0o777 == 0o600
    assert report.images == 5 and report.aligned == 3
    assert report.no_face == ["alice/grey.png"]
    assert report.several_faces == {"bob/two.png": 2}
    assert list(report.bad_image) == ["bob/broken.jpg"] and "broken.jpg" in report.bad_image["bob/broken.jpg"]
    saved = json.loads((dst / "align_report.json").read_text())
    assert saved["no_face"] == ["alice/grey.png"] and saved["aligned"] == 3
    assert not list(dst.rglob("*.tmp"))

    # Resume: finished outputs are skipped and not rewritten; a deleted one is made again.
    stamps = {p: p.stat().st_mtime_ns for p in dst.rglob("*.png")}
    (dst / "bob/b1.png").unlink()
    again = align_dataset(real_tree, dst, yunet_settings, progress=False)
    assert again.skipped == 2 and again.aligned == 1 and (dst / "bob/b1.png").exists()
    assert again.several_faces == {"bob/two.png": 2}  # remembered from the first run
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.exists() and p.name != "b1.png")
    assert snapshot(real_tree) == before


def test_fallback_and_all_faces(real_tree, tmp_path, yunet_settings):
    settings = AlignSettings(recipe=Recipe(detector="yunet", margin=0.2), fallback="center", which="all", size=96)
    report = align_dataset(real_tree, tmp_path / "dst", settings, progress=False)
    assert report.fallback_center == ["alice/grey.png"] and report.no_face == []
    assert (tmp_path / "dst/alice/grey.png").exists()
    assert (tmp_path / "dst/bob/two_0.png").exists() and (tmp_path / "dst/bob/two_1.png").exists()
    assert report.faces_written == 5


def test_workers_give_the_same_files(tmp_path):
    src = synthetic_tree(tmp_path / "src")
    before = snapshot(src)
    settings = AlignSettings(recipe=Recipe(detector="center", margin=0.1), size=64)
    one = align_dataset(src, tmp_path / "one", settings, workers=1, progress=False)
    two = align_dataset(src, tmp_path / "two", settings, workers=2, progress=False)
    assert one.aligned == two.aligned == 6
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.png"))
    assert len(files) == 6
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()
    assert snapshot(src) == before


def test_refuses_overlapping_or_missing_folders(tmp_path):
    src = synthetic_tree(tmp_path / "src", people=1, per_person=1)
    settings = AlignSettings(recipe=Recipe(detector="center"))
    for dst in (src, src / "aligned", tmp_path):
        with pytest.raises(DataError, match="overlaps"):
            align_dataset(src, dst, settings, progress=False)
    with pytest.raises(DataError, match="not a folder"):
        align_dataset(tmp_path / "nowhere", tmp_path / "out", settings, progress=False)


def test_cli(tmp_path, capsys):
    src = synthetic_tree(tmp_path / "src", people=1, per_person=2)
    assert main(["align", str(src), str(tmp_path / "dst"), "--detector", "center", "--size", "48", "--quiet"]) == 0
    assert "2 aligned" in capsys.readouterr().out
    assert Image.open(tmp_path / "dst/person_0/img_1.png").size == (48, 48)
    assert main(["align", str(tmp_path / "missing"), str(tmp_path / "d2"), "--detector", "center"]) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["crop", "similarity"])
def test_trained_model_cuts_faces_like_its_training_data(tmp_path, mode):
    """align writes its recipe, train copies it into the model file, and embedding a photo with that
    model makes exactly the crop the training folder holds for the same photo."""
    from facenet.embedder import load_embedder
    from facenet.models.modelfile import read_model_info

    src = synthetic_tree(tmp_path / "src", people=3, per_person=4)
    dst = tmp_path / "aligned"
    assert (
        main(
            [
                "align",
                str(src),
                str(dst),
                "--detector",
                "center",
                "--size",
                "48",
                "--mode",
                mode,
                "--margin",
                "0.15",
                "--quiet",
            ]
        )
        == 0
    )
    assert read_recipe(dst) == {
        "detector": "center",
        "mode": mode,
        "margin": 0.15,
        "template": "facenet",
        "which": "largest",
        "size": 48,
    }
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(dst),
                "--out",
                str(run),
                "--arch",
                "nns",
                "--image-size",
                "48",
                "--steps",
                "2",
                "--identities-per-batch",
                "2",
                "--faces-per-identity",
                "2",
                "--holdout",
                "0",
                "--eval-every",
                "100",
                "--checkpoint-every",
                "100",
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    model = run / "model.safetensors"
    assert read_model_info(model).recipe == {
        "detector": "center",
        "mode": mode,
        "margin": 0.15,
        "template": "facenet",
        "which": "largest",
    }
    embedder = load_embedder(model, backend="torch")  # detector and cut from the model's recipe
    assert embedder.detector.name == "center"
    for photo in sorted(src.glob("*/*.png"))[:4]:
        crop = embedder.find_faces(photo).faces[0].image
        held = np.asarray(Image.open(dst / photo.parent.name / photo.name))
        np.testing.assert_array_equal(crop, held)
    # a folder aligned with one recipe refuses crops made with another
    with pytest.raises(DataError, match="another recipe"):
        align_dataset(src, dst, AlignSettings(recipe=Recipe(detector="center", margin=0.4), size=48), progress=False)


@pytest.mark.parametrize("names", [("a.jpg", "a.png"), ("a.jpg", "A.png"), ("a.jpg", "a_0.png")])
def test_images_whose_crops_would_share_a_file_are_refused_before_writing(tmp_path, names):
    """a.jpg and a.png both gave a.png: the second overwrote the first, or was skipped as already aligned."""
    src = tmp_path / "src"
    (src / "p").mkdir(parents=True)
    for name in names:
        Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(src / "p" / name)
    with pytest.raises(DataError, match="same file.*rename one"):
        align_dataset(src, tmp_path / "dst", AlignSettings(recipe=Recipe(detector="center")), progress=False)
    assert not (tmp_path / "dst").exists() or not any((tmp_path / "dst").rglob("*"))
