"""MTCNN: our cascade against facenet-pytorch's own ``detect_face`` run on the same real photos.

facenet-pytorch imports torchvision (absent here) only for ``batched_nms`` and ``to_tensor``;
the test stubs those two with a brute-force IoU NMS written here, imports the reference
module straight from the installed wheel, and compares boxes, scores and landmarks.
"""


import numpy as np
import pytest
import torch

from facenet.align import get_detector
from facenet.align.mtcnn import find_weights, nms
from facenet.data.images import load_image
from facenet.errors import FaceNetError
from facenet.peers import load_peer_module

LFW_SAMPLES = ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Abba_Eban/Abba_Eban_0001.jpg",
               "Serena_Williams/Serena_Williams_0001.jpg", "George_W_Bush/George_W_Bush_0010.jpg"]


def _brute_force_batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision semantics: IoU of continuous corners, within a group, kept indices by decreasing score."""
    b, g = boxes.double().numpy(), idxs.numpy()
    iw = (np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])).clip(min=0)
    ih = (np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])).clip(min=0)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iou = iw * ih / (area[:, None] + area[None, :] - iw * ih)
    suppress = (iou > iou_threshold) & (g[:, None] == g[None, :])
    removed = np.zeros(len(b), bool)
    keep = []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if not removed[i]:
            keep.append(i)
            removed |= suppress[i]
    return torch.as_tensor(keep, dtype=torch.long)


@pytest.fixture(scope="module")
def reference_detect_face():
    module = load_peer_module("models/utils/detect_face.py", {
        "torchvision": {}, "torchvision.transforms": {}, "torchvision.transforms.functional": {},
        "torchvision.ops": {}, "torchvision.ops.boxes": {"batched_nms": _brute_force_batched_nms}})
    if module is None:
        pytest.skip("facenet-pytorch not installed")
    return module.detect_face


@pytest.fixture(scope="module")
def mtcnn():
    try:
        return get_detector("mtcnn")
    except FaceNetError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("rel", LFW_SAMPLES)
def test_matches_facenet_pytorch_reference(rel, lfw_dir, mtcnn, reference_detect_face):
    image = load_image(lfw_dir / "images" / rel)
    with torch.no_grad():
        ref_boxes, ref_points = reference_detect_face(image, 20, mtcnn.pnet, mtcnn.rnet, mtcnn.onet,
                                                      [0.6, 0.7, 0.7], 0.709, torch.device("cpu"))
    ref_boxes, ref_points = np.asarray(ref_boxes[0], dtype=float), np.asarray(ref_points[0], dtype=float)
    ours = mtcnn.detect(image)
    assert len(ours) == len(ref_boxes) >= 1
    order = np.argsort(-ref_boxes[:, 4], kind="stable")
    for det, i in zip(ours, order):
        np.testing.assert_allclose(det.box, ref_boxes[i, :4], atol=0.5)
        np.testing.assert_allclose(det.score, ref_boxes[i, 4], atol=1e-4)
        np.testing.assert_allclose(det.landmarks, ref_points[i], atol=0.5)


def test_nms_against_brute_force():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (60, 2))], axis=1)
    scores = rng.uniform(size=60)
    keep = nms(boxes, scores, 0.4)
    # Brute force with the same inclusive-pixel IoU: every dropped box overlaps a better kept one.
    def iou(a, b):
        iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
        return iw * ih / (area(a) + area(b) - iw * ih)
    kept = set(keep.tolist())
    assert list(keep) == sorted(keep, key=lambda i: -scores[i])
    for i in range(60):
        blockers = [k for k in kept if k != i and scores[k] > scores[i] and iou(boxes[k], boxes[i]) > 0.4]
        assert (i in kept) == (not blockers)


def test_missing_weights_names_install_command(tmp_path):
    with pytest.raises(FaceNetError, match="pip install --no-deps facenet-pytorch==2.5.3"):
        find_weights(tmp_path)


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        (tmp_path / name).write_bytes(b"not a torch file")
    with pytest.raises(FaceNetError, match="pnet.pt"):
        get_detector("mtcnn", weights=tmp_path)


def test_lower_thresholds_are_tried_only_when_nothing_is_found(monkeypatch):
    """The masked-face retry: a second cascade at retry_thresholds runs only after an empty first pass."""
    from facenet.align.mtcnn import MTCNNDetector

    detector = MTCNNDetector()
    calls = []
    results = {detector.thresholds: [], detector.retry_thresholds: ["found"]}
    monkeypatch.setattr(detector, "_cascade", lambda img, thresholds: calls.append(thresholds) or results[thresholds])
    assert detector.detect(np.zeros((60, 60, 3), np.uint8)) == ["found"]
    assert calls == [(0.6, 0.7, 0.7), (0.5, 0.4, 0.5)]
    calls.clear()
    results[detector.thresholds] = ["first"]
    assert detector.detect(np.zeros((60, 60, 3), np.uint8)) == ["first"] and calls == [(0.6, 0.7, 0.7)]
    assert MTCNNDetector(retry_thresholds=None).retry_thresholds is None
