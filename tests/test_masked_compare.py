"""Masked faces compared as masked (issue 24, item 2): which faces count as masked (``mask_sensitivity``), and
the thresholds they get in verification and open-set identification, from the library to the CLI."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

import facenet
from facenet.data.images import load_image
from facenet.errors import ModelFileError
from facenet.evaluate.calibrate import face_promises, openset_promise
from facenet.gallery import Gallery, Record
from facenet.models.modelfile import ModelInfo
from facenet.occluder import lower_face_covered, mask_sensitivity, pair_threshold

MASKED = {
    "covered_below": 0.4,
    "threshold": 1.6,
    "far_thresholds": {"1e-02": 1.7, "1e-03": 1.5},
    "far_calibration": {"entries": {"1e-02": {"kind": "measured", "tar": 0.9}}},
}
PLAIN = {"1e-02": 1.5, "1e-03": 1.3}


def _stub(masked: dict, threshold: float = 1.42):
    """An embedder's face for the rules that read only its metadata; embedding anything is an error."""

    def refuse(crops):
        raise AssertionError("no embedding should be needed")

    info = SimpleNamespace(masked=masked, far_thresholds=PLAIN, far_calibration={}, threshold=threshold)
    return SimpleNamespace(info=info, threshold=threshold, embed_crops=refuse, name="stub")


def test_a_model_without_a_masked_calibration_compares_every_face_alike_at_no_cost():
    plain = _stub({})
    crops = [np.zeros((8, 8, 3), np.uint8)] * 3
    assert lower_face_covered(plain, crops).tolist() == [False] * 3  # its embed_crops would raise
    assert pair_threshold(plain, [True, False]) == (1.42, False)
    promises = face_promises(plain, 10, [True, False])
    assert [p.masked for p in promises] == [False, False] and promises[0] == promises[1]


def test_only_a_masked_face_against_an_unmasked_one_is_verified_as_masked():
    model = _stub(MASKED)
    assert pair_threshold(model, [True, False]) == (1.6, True)
    assert pair_threshold(model, [False, True]) == (1.6, True)
    assert pair_threshold(model, [False, False]) == (1.42, False)  # a clean pair: never compared as masked
    assert pair_threshold(model, [True, True]) == (1.42, False)  # alike already


def test_a_masked_face_gets_the_masked_tables_promise():
    model = _stub(MASKED)
    promises = face_promises(model, 10, [False, True, False])
    assert [p.masked for p in promises] == [False, True, False]
    # 1e-2 over 10 comparisons: 1e-3 per comparison, each from its own table
    assert promises[0].threshold == pytest.approx(1.3) and promises[1].threshold == pytest.approx(1.5)
    assert promises[1].as_dict()["compared_as"] == "masked" and promises[0].as_dict()["compared_as"] == "plain"
    assert "for masked faces" in promises[1].summary and "masked" not in promises[0].summary
    assert promises[1].expected_tar == 0.9  # the masked calibration's own entries
    assert openset_promise(model.info, 1e-2, 10, masked=True) == promises[1]


def test_the_gallery_applies_each_querys_own_threshold(tmp_path):
    rng = np.random.default_rng(0)
    people = rng.normal(size=(4, 16)).astype(np.float32)
    people /= np.linalg.norm(people, axis=1, keepdims=True)
    with Gallery.open(str(tmp_path / "g.db"), "m", 16) as g:
        g.enroll_many([Record(f"p{i}", people[i : i + 1], ["a.png"]) for i in range(4)])
        queries = np.stack([people[0], people[0], people[1]])
        everyone = g.identify(queries, k=4)
        limits = np.array([everyone[0][1].distance + 1e-3, everyone[0][0].distance + 1e-3, 0.0])
        got = g.identify(queries, k=4, threshold=limits)
    for result, all_of_them, limit in zip(got, everyone, limits):  # brute force: every match strictly closer
        assert result == [m for m in all_of_them if m.distance < limit]
    assert [len(r) for r in got] == [2, 1, 0]


def test_the_masked_entry_is_stored_checked_and_part_of_the_model_id():
    info = ModelInfo(arch="x", embedding_size=8, provenance={"weights_sha256": "ab" * 32})
    masked = dataclasses.replace(info, masked=MASKED)
    assert ModelInfo.from_json(masked.to_json()).masked == MASKED
    assert masked.model_id != info.model_id and masked.id == info.id  # other answers, the same embeddings
    disordered = dataclasses.replace(info, masked={**MASKED, "far_thresholds": {"1e-02": 1.0, "1e-03": 1.5}})
    with pytest.raises(ModelFileError, match="do not grow"):
        ModelInfo.from_json(disordered.to_json())


# -- the default model on real faces, with a mask the project never drew ------------------------


@pytest.fixture(scope="module")
def default():
    return facenet.load_model()


@pytest.fixture(scope="module")
def powell(lfw_dir):
    """Colin Powell: three clean photos and a fourth with the held-out renderer's surgical mask."""
    pytest.importorskip("dlib", reason="the held-out mask renderer needs dlib: pip install dlib-bin")
    from facenet.evaluate.heldout_masks import mask_photo

    folder = lfw_dir / "images" / "Colin_Powell"
    clean = [load_image(folder / f"Colin_Powell_{n:04d}.jpg") for n in (1, 2, 3, 4)]
    return clean[:3], mask_photo(clean[3], "surgical", seed=1, which="central")


def test_the_default_tells_masked_faces_from_clean_ones(default, powell, lfw_dir):
    assert default.info.masked["covered_below"] > 0
    masked_people = []
    for name in ("Aaron_Peirsol", "Serena_Williams", "Colin_Powell", "Laura_Bush"):
        photo = load_image(lfw_dir / "images" / name / f"{name}_0001.jpg")
        from facenet.evaluate.heldout_masks import mask_photo

        for pixels, masked in ((photo, False), (mask_photo(photo, "surgical", seed=2, which="central"), True)):
            crop = default.find_faces(pixels, which="central").faces[0].image
            masked_people.append((masked, float(mask_sensitivity(default, [crop])[0])))
            assert lower_face_covered(default, [crop])[0] == masked
    clean = [s for m, s in masked_people if not m]
    covered = [s for m, s in masked_people if m]
    assert max(covered) < default.info.masked["covered_below"] < min(clean)


def test_verify_and_identify_compare_a_masked_photo_as_masked(default, powell, tmp_path):
    clean, masked = powell
    plain = facenet.verify(clean[0], clean[1], model=default)
    assert plain.compared_as == "plain" and plain.threshold == default.threshold
    as_masked = facenet.verify(clean[0], masked, model=default)
    assert as_masked.compared_as == "masked" and as_masked.threshold == default.info.masked["threshold"]
    assert as_masked.same
    by_hand = facenet.verify(clean[0], masked, model=default, threshold=1.0)
    assert by_hand.compared_as == "plain" and by_hand.threshold == 1.0  # a threshold of one's own is kept

    gallery = tmp_path / "g.db"
    facenet.enroll("Colin Powell", clean[:2], gallery=gallery, model=default)
    (face,) = facenet.identify(masked, gallery=gallery, model=default, which="central")
    assert face.compared_as == "masked" and face.open_set.masked
    assert face.open_set.threshold == openset_promise(default.info, 1e-2, 2, masked=True).threshold
    assert [m.name for m in face.matches] == ["Colin Powell"]
    (face,) = facenet.identify(clean[2], gallery=gallery, model=default, which="central")
    assert face.compared_as == "plain" and face.open_set.threshold == openset_promise(default.info, 1e-2, 2).threshold


def test_the_cli_says_which_faces_it_compared_as_masked(default, powell, tmp_path, capsys):
    from PIL import Image

    from facenet.cli import main

    clean, masked = powell
    for n, pixels in enumerate(clean[:2]):
        Image.fromarray(pixels).save(tmp_path / f"enrol{n}.png")
    Image.fromarray(masked).save(tmp_path / "masked.png")
    Image.fromarray(clean[2]).save(tmp_path / "clean.png")
    assert main(["verify", str(tmp_path / "enrol0.png"), str(tmp_path / "masked.png")]) == 0  # the same person
    out = capsys.readouterr().out
    assert f"threshold {default.info.masked['threshold']:.4f}  (compared as masked: one face is masked)" in out
    assert main(["verify", str(tmp_path / "enrol0.png"), str(tmp_path / "clean.png")]) == 0
    assert "masked" not in capsys.readouterr().out
    gallery = ["--gallery", str(tmp_path / "g.db")]
    enrol = [str(tmp_path / f"enrol{n}.png") for n in range(2)]
    assert main(["gallery", "enroll", "Colin Powell", *enrol, *gallery]) == 0
    capsys.readouterr()
    photos = [str(tmp_path / "masked.png"), str(tmp_path / "clean.png")]
    assert main(["identify", *photos, "--which", "central", *gallery]) == 0
    out, err = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert "(compared as masked)" in lines[str(tmp_path / "masked.png")]
    assert "masked" not in lines[str(tmp_path / "clean.png")]
    assert "# masked faces (1): threshold" in err and "for masked faces" in err
    assert main(["gallery", "list", *gallery]) == 0  # the promise for clean faces, then for masked ones
    promises = [line for line in capsys.readouterr().out.splitlines() if line.startswith("# open set at 2 ")]
    assert len(promises) == 2 and "for masked faces" in promises[1] and "masked" not in promises[0]
