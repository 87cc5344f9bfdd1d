"""YuNet as shipped: its model inside the package, faces too large for it at the working size, threads."""

import hashlib
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from facenet.align import get_detector
from facenet.align.yunet import LARGE_FACE_ABOVE, SHIPPED_MODEL, YuNetDetector
from facenet.data.images import load_image
from facenet.errors import FaceNetError

EYE_LINE = slice(0, 2)


def test_the_model_ships_in_the_package_unchanged(monkeypatch):
    monkeypatch.delenv("FACENET_YUNET_MODEL", raising=False)
    digest = hashlib.sha256(SHIPPED_MODEL.read_bytes()).hexdigest()
    assert digest == "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"  # as in weights/NOTICE
    assert get_detector("yunet")._path == SHIPPED_MODEL
    assert (SHIPPED_MODEL.parent / "LICENSE-MIT-YuNet.txt").read_text().startswith("MIT License")


def test_a_face_filling_a_big_photo_is_found_whole(lfw_dir):
    """A face of ~700 px (twice what YuNet was trained for) is found with its true size, once:
    the reduced copy's detection, not the full-size pass's low-scoring partial one."""
    image = load_image(lfw_dir / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    close_up = cv2.resize(image[65:185, 65:185], (800, 800), interpolation=cv2.INTER_CUBIC)  # face ~100/120 of it
    detector = YuNetDetector()
    assert min(close_up.shape[:2]) > LARGE_FACE_ABOVE
    full_size_only = detector._detect(close_up)
    found = detector.detect(close_up)
    assert len(found) == 1
    assert found[0].width > 0.7 * 800 and found[0].width > max(d.width for d in full_size_only)
    assert found[0].score >= detector.sure_score
    (lx, ly), (rx, ry) = found[0].landmarks[EYE_LINE]
    assert lx < 400 < rx and abs(ly - ry) < 40  # upright eyes either side of the middle


def test_the_same_faces_as_opencvs_own_yunet(lfw_dir):
    """On ONNX Runtime with its own decoding, YuNet finds what OpenCV's FaceDetectorYN finds with the same file:
    the same faces, boxes and landmarks to 1e-3 px, scores to 1e-4 (LFW photos, a group, odd sizes)."""
    folder = lfw_dir / "images"
    photos = [load_image(p) for p in sorted(folder.glob("*/*_0001.jpg"))[::400]]
    group = np.concatenate([photos[0], photos[1][:, ::-1], photos[2]], axis=1)  # three faces side by side
    photos += [group, cv2.resize(group, (1001, 333), interpolation=cv2.INTER_AREA), photos[3][:77, :45]]
    detector = YuNetDetector()
    opencv = cv2.FaceDetectorYN.create(str(SHIPPED_MODEL), "", (320, 320), 0.6, 0.3, 5000)
    faces = 0
    for image in photos:
        opencv.setInputSize((image.shape[1], image.shape[0]))
        rows = opencv.detect(np.ascontiguousarray(image[:, :, ::-1]))[1]
        rows = np.zeros((0, 15)) if rows is None else rows[np.argsort(-rows[:, 14])]
        ours = detector._detect(image)
        assert len(ours) == len(rows)
        for d, row in zip(sorted(ours, key=lambda d: -d.score), rows):
            assert np.allclose(d.box, (row[0], row[1], row[0] + row[2], row[1] + row[3]), atol=1e-3)
            assert np.allclose(d.landmarks, row[4:14].reshape(5, 2), atol=1e-3)
            assert abs(d.score - row[14]) < 1e-4
        faces += len(rows)
    assert faces >= len(photos) + 2  # the group's three faces among them


def test_threads_share_one_detector(lfw_dir):
    """ONNX Runtime's session runs concurrently: answers under threads equal answers one at a time."""
    detector = YuNetDetector()
    names = [
        "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
        "Abba_Eban/Abba_Eban_0001.jpg",
        "Tony_Blair/Tony_Blair_0001.jpg",
        "Serena_Williams/Serena_Williams_0001.jpg",
    ]
    images = [load_image(lfw_dir / "images" / n) for n in names] * 4
    alone = [[d.box for d in detector.detect(im)] for im in images]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda im: [d.box for d in detector.detect(im)], images))
    assert together == alone and all(alone)


def test_a_photo_turned_sideways_scores_below_the_sure_score(lfw_dir):
    detector = YuNetDetector()
    image = load_image(lfw_dir / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    upright = detector.detect(image)[0].score
    turned = [d.score for d in detector.detect(np.ascontiguousarray(np.rot90(image)))]
    assert upright >= detector.sure_score
    assert all(s < detector.sure_score for s in turned)


def test_a_model_that_cannot_be_read_is_refused_at_once(tmp_path):
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(FaceNetError, match="not a usable YuNet model"):
        YuNetDetector(model=bad)
