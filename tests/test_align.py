"""Detection backends on real LFW photos, synthetic scenes with known face positions, bad inputs, alignment."""

import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from facenet.align import Detection, extract_faces, get_detector
from facenet.align.crop import (
    TEMPLATE,
    Recipe,
    align_face,
    crop_face,
    cut_face,
    select_faces,
    similarity_transform,
    template_points,
)
from facenet.data.images import load_image
from facenet.errors import FaceNetError, NoFaceError

BACKENDS = ["mtcnn", "yunet", "dlib"]
LFW_FACE = (75, 65, 175, 190)  # where LFW's labelled face lies in its 250x250 photos (x1, y1, x2, y2)


@pytest.fixture(scope="module", params=BACKENDS)
def detector(request):
    try:
        return get_detector(request.param)
    except FaceNetError as exc:
        pytest.skip(str(exc))


def lfw(lfw_dir, rel):
    return load_image(lfw_dir / "images" / rel)


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return iw * ih / (area(a) + area(b) - iw * ih)


def plausible(det: Detection):
    (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = det.landmarks
    assert lex < nx < rex and mlx < mrx, "left/right points on the wrong side"
    assert max(ley, rey) < ny < min(mly, mry), "eyes above nose above mouth"
    x1, y1, x2, y2 = det.box
    slack = 0.1 * det.width
    assert np.all((det.landmarks >= [x1 - slack, y1 - slack]) & (det.landmarks <= [x2 + slack, y2 + slack]))


@pytest.mark.parametrize("rel", ["Aaron_Eckhart/Aaron_Eckhart_0001.jpg", "Abba_Eban/Abba_Eban_0001.jpg"])
def test_real_lfw_face_near_centre(detector, lfw_dir, rel):
    image = lfw(lfw_dir, rel)
    dets = detector.detect(image)
    assert dets and [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    face = select_faces(dets, image.shape, "largest")[0]
    cx, cy = face.center
    assert abs(cx - 125) < 25 and abs(cy - 125) < 25
    assert 100 < face.landmarks[:2, 1].mean() < 130  # LFW eyes sit near y = 110..120
    plausible(face)


def test_face_pasted_at_known_offset(detector, lfw_dir):
    canvas = np.full((360, 480, 3), 128, np.uint8)
    ox, oy = 210, 90
    canvas[oy : oy + 250, ox : ox + 250] = lfw(lfw_dir, "Aaron_Eckhart/Aaron_Eckhart_0001.jpg")
    expected = (LFW_FACE[0] + ox, LFW_FACE[1] + oy, LFW_FACE[2] + ox, LFW_FACE[3] + oy)
    dets = detector.detect(canvas)
    assert len(dets) == 1
    assert iou(dets[0].box, expected) > 0.5
    plausible(dets[0])


@pytest.fixture(scope="module")
def two_faces(lfw_dir):
    """Canvas 1000 wide: a 250 px face in the centre, a 1.4x bigger one near the right edge."""
    canvas = np.full((400, 1000, 3), 128, np.uint8)
    small = lfw(lfw_dir, "Abba_Eban/Abba_Eban_0001.jpg")
    big = np.asarray(Image.fromarray(lfw(lfw_dir, "Aaron_Eckhart/Aaron_Eckhart_0001.jpg")).resize((350, 350)))
    canvas[75:325, 375:625] = small
    canvas[25:375, 640:990] = big
    return canvas


def test_several_faces_and_selection(detector, two_faces):
    dets = detector.detect(two_faces)
    assert len(dets) == 2
    assert select_faces(dets, two_faces.shape, "largest")[0].center[0] > 640
    assert 375 < select_faces(dets, two_faces.shape, "central")[0].center[0] < 625
    every = select_faces(dets, two_faces.shape, "all")
    assert len(every) == 2 and every[0].score >= every[1].score


def test_extract_all_faces_in_score_order():
    class Fixed:  # stands in for a detector, so the test times alignment only
        name = "fixed"

        def detect(self, image):
            return [
                Detection((10, 10, 60, 60), 0.8, np.zeros((5, 2))),
                Detection((100, 20, 200, 120), 0.9, np.zeros((5, 2))),
            ]

    crops = extract_faces(np.zeros((150, 250, 3), np.uint8), Fixed(), size=96, recipe=Recipe(margin=0.2), which="all")
    assert [c.image.shape for c in crops] == [(96, 96, 3)] * 2
    assert [c.detection.score for c in crops] == [0.9, 0.8]


def test_no_face_names_the_file(detector, tmp_path):
    path = tmp_path / "grey_wall.png"
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(path)
    with pytest.raises(NoFaceError, match="grey_wall.png"):
        extract_faces(path, detector)


@pytest.mark.parametrize("shape", [(1, 1, 3), (8, 8, 3), (12, 40, 3)])
def test_tiny_images_find_nothing_without_crashing(detector, shape):
    assert detector.detect(np.full(shape, 200, np.uint8)) == []


def test_detectors_reject_non_rgb_arrays(detector):
    with pytest.raises(FaceNetError, match="H,W,3 uint8"):
        detector.detect(np.zeros((50, 50), np.uint8))


def test_unknown_backend_and_options():
    with pytest.raises(FaceNetError, match="mtcnn"):
        get_detector("haar")
    face = get_detector("center").detect(np.zeros((100, 100, 3), np.uint8))[0]
    with pytest.raises(FaceNetError, match="largest"):
        select_faces([face], (100, 100, 3), "biggest")
    with pytest.raises(FaceNetError, match="similarity"):
        Recipe(mode="warp")
    with pytest.raises(FaceNetError, match="not a number of pixels"):
        Recipe(margin=32)


def test_missing_yunet_model_says_where_to_get_it(tmp_path):
    with pytest.raises(FaceNetError, match="OpenCV Zoo"):
        get_detector("yunet", model=tmp_path / "missing.onnx")


def test_missing_dlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(FaceNetError, match="pip install"):
        get_detector("dlib")


def test_center_detector_box_and_landmarks():
    det = get_detector("center", fraction=0.5).detect(np.zeros((250, 300, 3), np.uint8))
    assert len(det) == 1
    np.testing.assert_allclose(det[0].box, (87.5, 62.5, 212.5, 187.5))
    np.testing.assert_allclose(det[0].landmarks, TEMPLATE * 125 + [87.5, 62.5])


def test_crop_face_is_sandbergs_crop():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (200, 220, 3), dtype=np.uint8)
    det = Detection((50.7, 40.2, 150.9, 140.3), 1.0, np.zeros((5, 2)))
    # relative margin 32/100.2: 16 px per side in x, 15.98 in y, then int(): x 34..166, y 24..156 -> 132 x 132
    np.testing.assert_array_equal(crop_face(image, det, size=132, margin=32 / 100.2), image[24:156, 34:166])
    edge = Detection((-30.0, 150.0, 100.0, 260.0), 1.0, np.zeros((5, 2)))  # clipped to the image
    # margin 0.3 of 130 x 110: 19.5 / 16.5 px per side -> x 0..119, y 133..200
    expected = np.asarray(Image.fromarray(image[133:200, 0:119]).resize((64, 64), Image.BILINEAR))
    np.testing.assert_array_equal(crop_face(image, edge, size=64, margin=0.3), expected)
    with pytest.raises(FaceNetError, match="outside"):
        crop_face(image, Detection((300, 300, 400, 400), 1.0, np.zeros((5, 2))))


@pytest.mark.parametrize("mode", ["crop", "similarity"])
def test_margin_is_relative_so_a_bigger_photo_gives_the_same_crop(mode):
    rng = np.random.default_rng(4)
    small = cv2.GaussianBlur(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), (0, 0), 4)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)  # the same scene at 4x the resolution
    marks = TEMPLATE * 100 + 50
    face = Detection((50, 50, 150, 150), 1.0, marks)
    face4 = Detection((200, 200, 600, 600), 1.0, marks * 4 + 1.5)  # pixel centres move by 1.5 at 4x
    recipe = Recipe(mode=mode, margin=0.3)
    a = cut_face(small, face, 64, recipe).astype(float)
    b = cut_face(big, face4, 64, recipe).astype(float)
    assert np.abs(a - b).mean() < 2.0


def test_similarity_transform_matches_opencv_on_noisy_points():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 300, (5, 2))
    dst = template_points(160, 0.2) + rng.normal(0, 2, (5, 2))
    ours = similarity_transform(src, dst)
    ref, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    # LMedS on 5 points is not least squares; compare against the exact LS optimum via residuals instead
    res = lambda m: np.sum((src @ m[:, :2].T + m[:, 2] - dst) ** 2)
    assert res(ours) <= res(ref) + 1e-9
    assert np.isclose(ours[0, 0], ours[1, 1]) and np.isclose(ours[0, 1], -ours[1, 0])  # rotation + scale only


def test_aligned_landmarks_land_on_template():
    """Draw 5 dots at landmarks of a rotated, scaled, shifted face; after alignment they sit on the template."""
    size, margin = 160, 0.2
    angle, scale, shift = np.deg2rad(23), 1.7, np.array([140.0, 90.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    marks = template_points(size, margin) @ rot.T + shift
    image = np.zeros((400, 420, 3), np.uint8)
    for x, y in marks:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1, cv2.LINE_AA, shift=4)
    out = align_face(image, Detection((0, 0, 1, 1), 1.0, marks), size, margin)[:, :, 0].astype(float)
    for tx, ty in template_points(size, margin):
        ys, xs = np.mgrid[int(ty) - 5 : int(ty) + 7, int(tx) - 5 : int(tx) + 7]
        w = out[ys, xs]
        assert w.sum() > 0
        centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
        assert np.linalg.norm(centroid - (tx, ty)) < 1.0
