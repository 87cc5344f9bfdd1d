import json

import numpy as np
import pytest
from PIL import Image

from facenet import cli
from facenet.data.images import load_image
from facenet.errors import DataError, NoFaceError
from facenet.evaluate.pairs import read_pairs
from facenet.evaluate.protocol import evaluate_pairs

# 2 folds x 3 pairs per class; the pixel value of each image indexes EMB below, so
# fold 0 has squared distances same 0.10 0.20 0.35 / different 0.25 0.50 0.60 and
# fold 1 same 0.10 0.20 0.70 / different 0.40 0.50 0.60 (as in test_kfold_by_hand).
DISTANCES = [0.10, 0.20, 0.35, 0.25, 0.50, 0.60, 0.10, 0.20, 0.70, 0.40, 0.50, 0.60]
PAIRS = """2 3
P0 1 2
P1 1 2
P2 1 2
P3 1 Q3 1
P4 1 Q4 1
P5 1 Q5 1
P6 1 2
P7 1 2
P8 1 2
P9 1 Q9 1
P10 1 Q10 1
P11 1 Q11 1
"""


class FakeEmbedder:
    """Image with pixel value v -> EMB[v]: [0, 0] for the first image of each pair, [sqrt(d), 0] for the second."""

    name = "fake"
    embedding_size = 2
    threshold = 0.3

    def __init__(self, fail_on=()):
        self.table = {2 * k: [0.0, 0.0] for k in range(12)} | {
            2 * k + 1: [np.sqrt(d), 0.0] for k, d in enumerate(DISTANCES)
        }
        self.fail_on = set(fail_on)
        self.calls = 0

    def embed(self, images, batch_size=32):
        self.calls += len(images)
        values = [int(load_image(im)[0, 0, 0]) for im in images]
        if self.fail_on & set(values):
            raise NoFaceError("no face")
        return np.array([self.table[v] for v in values], dtype=np.float32)


@pytest.fixture
def lfw_like(tmp_path):
    images = tmp_path / "images"
    for k in range(12):
        second = ("Q", 1) if k % 6 >= 3 else ("P", 2)
        for offset, (prefix, idx) in enumerate([("P", 1), second]):
            folder = images / f"{prefix}{k}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (2 * k + offset,) * 3).save(folder / f"{prefix}{k}_{idx:04d}.png")
    pairs = tmp_path / "pairs.txt"
    pairs.write_text(PAIRS)
    return pairs, images


def test_read_pairs_folds_paths_and_labels(lfw_like, tmp_path):
    pairs, images = lfw_like
    ps = read_pairs(pairs, images, ext="png")
    assert ps.n_folds == 2 and not ps.missing
    assert list(ps.folds) == [0] * 6 + [1] * 6
    assert list(ps.same) == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    assert ps.pairs[3].path1 == images / "P3" / "P3_0001.png"
    assert ps.pairs[3].path2 == images / "Q3" / "Q3_0001.png"


def test_headerless_file_is_one_fold_and_can_be_resplit(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("".join(f"A{k} 1 2\n" for k in range(4)) + "".join(f"A{k} 1 B{k} 12\n" for k in range(4)))
    ps = read_pairs(f, tmp_path)
    assert ps.n_folds == 1 and set(ps.folds.tolist()) == set()  # every image is missing here
    assert len(ps.missing) == 8 and ps.missing[4].path2.name == "B0_0012.jpg"
    split = read_pairs(f, tmp_path, folds=2)
    assert [p.fold for p in split.missing] == [0, 0, 1, 1, 0, 0, 1, 1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("2 1\nA 1 2\nA 1 B 1\nA 1 2\n", "promises 2 folds"),
        ("1 1\nA 1 B 1\nA 1 2\n", ":2: fold 1 expects a matched"),
        ("A 1 2\nA 1 2 3 4\n", ":2: .*got 5 fields"),
        ("A 1 2\n\nA x 2\n", ":3: image number 'x'"),
        ("A 1 2\nA 0 2\n", ":2: image number '0'"),
        ("\n\n", "no pairs"),
    ],
)
def test_malformed_pairs_file_names_the_line(tmp_path, text, message):
    f = tmp_path / "p.txt"
    f.write_text(text)
    with pytest.raises(DataError, match=message):
        read_pairs(f, tmp_path)


def test_protocol_by_hand_with_fake_embedder(lfw_like):
    pairs, images = lfw_like
    embedder = FakeEmbedder()
    r = evaluate_pairs(embedder, pairs, images, ext="png", progress=False, batch_size=5)
    assert embedder.calls == 24  # every image embedded once
    np.testing.assert_allclose(r.metrics.distances, DISTANCES, atol=1e-6)
    np.testing.assert_allclose(r.metrics.accuracy, [4 / 6, 5 / 6])
    assert r.accuracy == pytest.approx(0.75) and r.threshold == pytest.approx((0.3 + 0.225) / 2, abs=1e-6)
    assert r.n_pairs == 12 and r.n_missing == 0 and r.n_failed == 0
    summary = json.loads(r.to_json())
    assert summary["accuracy_mean"] == pytest.approx(0.75) and len(summary["folds"]) == 2
    assert "75.00% +- 8.33" in r.table()


def test_missing_images_and_embedder_failures_are_counted(lfw_like):
    pairs, images = lfw_like
    (images / "P0" / "P0_0002.png").unlink()
    r = evaluate_pairs(FakeEmbedder(fail_on={2 * 7 + 1}), pairs, images, ext="png", progress=False)
    assert r.n_missing == 1 and r.n_failed == 1 and r.n_pairs == 10
    assert str(images / "P0" / "P0_0002.png") in r.missing
    assert str(images / "P7" / "P7_0002.png") in r.missing


class HalvesEmbedder:
    """[mean of left half, mean of right half]: a horizontal flip swaps the two."""

    name, embedding_size, threshold = "halves", 2, 1.0

    def embed(self, images, batch_size=32):
        arrays = [load_image(im).astype(np.float64) for im in images]
        e = np.array([[a[:, :4].mean(), a[:, 4:].mean()] for a in arrays])
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_flip_sum_and_concat(tmp_path):
    images = tmp_path / "im"
    for name, (left, right) in {"A": (200, 50), "B": (10, 240)}.items():
        (images / name).mkdir(parents=True)
        arr = np.zeros((8, 8, 3), np.uint8)
        arr[:, :4], arr[:, 4:] = left, right
        for i in (1, 2):
            Image.fromarray(arr).save(images / name / f"{name}_{i:04d}.png")
    pairs = tmp_path / "p.txt"
    pairs.write_text("2 1\nA 1 2\nA 1 B 1\nB 1 2\nB 2 A 2\n")
    none = evaluate_pairs(HalvesEmbedder(), pairs, images, ext="png", progress=False)
    summed = evaluate_pairs(HalvesEmbedder(), pairs, images, ext="png", progress=False, flip="sum")
    concat = evaluate_pairs(HalvesEmbedder(), pairs, images, ext="png", progress=False, flip="concat")
    assert none.metrics.distances[1] > 0.5
    np.testing.assert_allclose(summed.metrics.distances, 0, atol=1e-6)  # e + flip(e) is symmetric for everyone
    # concat of unit halves re-normalised: squared L2 is the mean of the two halves' distances
    np.testing.assert_allclose(concat.metrics.distances, none.metrics.distances, atol=1e-6)


def test_cli_reports_malformed_pairs_file_as_one_line(tmp_path, capsys):
    bad = tmp_path / "p.txt"
    bad.write_text("A 1 2 3 4\n")
    assert cli.main(["evaluate", "--model", "dlib-cpp", "--pairs", str(bad), "--images", str(tmp_path)]) == 2
    assert "p.txt:1:" in capsys.readouterr().err


def test_cache_resumes_without_re_embedding(lfw_like, tmp_path):
    pairs, images = lfw_like
    cache = tmp_path / "emb.npz"
    first = evaluate_pairs(FakeEmbedder(), pairs, images, ext="png", progress=False, cache=cache)
    again = FakeEmbedder()
    second = evaluate_pairs(again, pairs, images, ext="png", progress=False, cache=cache, distance="cosine")
    assert again.calls == 0 and (cache.stat().st_mode & 0o777) == 0o600
    np.testing.assert_allclose(second.labels, first.labels)
    with pytest.raises(DataError, match="flip 'none' \\(here 'sum'\\)"):
        evaluate_pairs(FakeEmbedder(), pairs, images, ext="png", progress=False, cache=cache, flip="sum")


def test_a_cache_made_with_other_face_finding_is_refused(lfw_like, tmp_path, model_file, capsys):
    """Detector, its options, --no-detect, --on-no-face, --min-face and the recipe decide the embeddings: a
    cache made with other ones used to be reused silently."""
    pairs, images = lfw_like
    common = [
        "evaluate",
        "--model",
        str(model_file),
        "--pairs",
        str(pairs),
        "--images",
        str(images),
        "--ext",
        "png",
        "--backend",
        "torch",
        "--no-progress",
        "--cache",
        str(tmp_path / "c.npz"),
    ]
    assert cli.main([*common, "--detector", "center"]) == 0
    assert cli.main([*common, "--detector", "center"]) == 0  # the same settings: reused
    capsys.readouterr()
    for other in (
        ["--no-detect"],
        ["--detector", "mtcnn"],
        ["--detector", "center", "--on-no-face", "drop"],
        ["--detector", "center", "--min-face", "0.1"],
    ):
        assert cli.main([*common, *other]) == 2, other
        assert "holds embeddings made otherwise" in capsys.readouterr().err


def test_the_cache_key_names_every_face_finding_setting(model_file):
    from facenet.align import get_detector
    from facenet.embedder import load_embedder
    from facenet.evaluate.protocol import cache_key

    def key(**settings):
        return cache_key(load_embedder(model_file, backend="torch", **settings), "none")

    assert key(detector="center") == key(detector="center")
    variants = [
        key(detector="center"),
        key(detector=get_detector("center", fraction=0.8)),
        key(detect=False),
        key(detector="center", which="central"),
        key(detector="center", min_face=0.1),
    ]
    assert len({json.dumps(k, sort_keys=True) for k in variants}) == len(variants)


def test_write_thresholds_stores_calibration_in_the_model_file(lfw_like, tmp_path, model_file, capsys, monkeypatch):
    import shutil

    from facenet.commands import evaluate as evaluate_cmd
    from facenet.models.modelfile import read_model_info

    pairs, images = lfw_like
    model = tmp_path / "model.safetensors"
    shutil.copy(model_file, model)
    before = read_model_info(model)
    out = tmp_path / "r.json"
    # The untrained model sees every grey photo alike: its "best" threshold is 0 or below (by the CPU's
    # rounding: bit-identical embeddings on one, float noise on another), and is refused.
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                str(model),
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--ext",
                "png",
                "--no-detect",
                "--backend",
                "torch",
                "--no-progress",
                "--write-thresholds",
            ]
        )
        == 2
    )
    assert "does not tell same from different" in capsys.readouterr().err and read_model_info(model) == before
    monkeypatch.setattr(evaluate_cmd, "_embedder", lambda args: FakeEmbedder())  # distances known in advance
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                str(model),
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--ext",
                "png",
                "--no-detect",
                "--backend",
                "torch",
                "--no-progress",
                "--json",
                str(out),
                "--write-thresholds",
            ]
        )
        == 0
    )
    after = read_model_info(model)
    assert after.weights_id == before.weights_id and after.model_id != before.model_id  # new thresholds, same weights
    assert after.threshold == pytest.approx(json.loads(out.read_text())["threshold"], abs=1e-4)
    assert set(after.far_thresholds) == {"1e-02"}  # 24 images of 21 people: ~270 different-people pairs
    assert "thresholds written" in capsys.readouterr().out
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                "dlib-cpp",
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--ext",
                "png",
                "--write-thresholds",
            ]
        )
        == 2
    )
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                str(model),
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--ext",
                "png",
                "--write-thresholds",
                "--occlude",
                "mask",
            ]
        )
        == 2
    )
    assert "without --occlude" in capsys.readouterr().err and read_model_info(model) == after
    for other in (["--distance", "cosine"], ["--flip", "sum"], ["--flip", "concat"], ["--subtract-mean"]):
        # another unit (angle/pi) or other embeddings than the ones every command compares: refused up front
        assert (
            cli.main(
                [
                    "evaluate",
                    "--model",
                    str(model),
                    "--pairs",
                    str(pairs),
                    "--images",
                    str(images),
                    "--ext",
                    "png",
                    "--no-detect",
                    "--no-progress",
                    "--write-thresholds",
                    *other,
                ]
            )
            == 2
        )
        assert f"without {other[0]}" in capsys.readouterr().err and read_model_info(model) == after


def test_no_face_policy_is_the_same_for_every_model(lfw_like, tmp_path, model_file, capsys):
    """Photos without a face: a centre crop (counted) by default, or their pairs are dropped."""
    pairs, images = lfw_like
    common = [
        "--pairs",
        str(pairs),
        "--images",
        str(images),
        "--ext",
        "png",
        "--no-progress",
        "--detector",
        "mtcnn",
        "--backend",
        "torch",
    ]  # no face in 8x8 grey squares
    for policy, scored in ((None, 12), ("center", 12), ("drop", 0)):  # None: the default policy
        code = cli.main(
            ["evaluate", "--model", str(model_file), *common] + (["--on-no-face", policy] if policy else [])
        )
        text = capsys.readouterr()
        if scored:
            assert (
                code == 0 and f"{scored} pairs scored" in text.out and "24 images without a detected face" in text.out
            )
        else:
            assert code == 2 and "could be scored" in text.err


def test_occluded_protocol_occludes_the_second_photo_or_both(lfw_like, tmp_path, monkeypatch):
    """--occlude draws on the second photo of each pair (or both), placed by the placement detector."""
    import facenet.occlusion as occlusion

    drawn = []

    class Placer:  # one face in the middle of every 8x8 image
        name = "placer"

        def detect(self, image):
            from facenet.align.base import Detection

            return [Detection((1, 1, 7, 7), 1.0, [[2, 3], [6, 3], [4, 4], [3, 6], [5, 6]])]

    def fake_occlude(pixels, landmarks, kind, seed, variant):
        drawn.append(int(pixels[0, 0, 0]))
        return pixels  # the image's value still indexes FakeEmbedder's table

    monkeypatch.setattr(occlusion, "occlude", fake_occlude)
    monkeypatch.setattr("facenet.align.get_detector", lambda name: Placer())
    pairs, images = lfw_like
    one = evaluate_pairs(FakeEmbedder(), pairs, images, ext="png", progress=False, occlude="mask")
    assert sorted(drawn) == [2 * k + 1 for k in range(12)]  # every pair's second photo, once each
    assert one.n_pairs == 12 and one.settings["occlude"] == "mask" and "mask" in one.model
    drawn.clear()
    evaluate_pairs(FakeEmbedder(), pairs, images, ext="png", progress=False, occlude="mask", occlude_side="both")
    assert sorted(drawn) == list(range(24))


@pytest.mark.parametrize(
    "pairs_text, why",
    [
        ("P0 1 2\nP1 1 2\nP3 1 Q3 1\nP4 1 Q4 1\n", "at least 2 folds"),  # header-less: one fold
        ("2 1\nP0 1 2\nP3 1 Q3 1\nP1 1 2\nP4 1 Q4 1\n", None),  # fine
        ("P0 1 2\nP1 1 2\nP2 1 2\nP6 1 2\n", "no mismatched"),  # --folds 2, matched pairs only
    ],
)
def test_unusable_folds_are_refused_before_anything_is_embedded(lfw_like, tmp_path, pairs_text, why):
    _, images = lfw_like
    pairs = tmp_path / "p.txt"
    pairs.write_text(pairs_text)
    embedder = FakeEmbedder()
    folds = 2 if why == "no mismatched" else None
    if why is None:
        evaluate_pairs(embedder, pairs, images, ext="png", progress=False, folds=folds)
        return
    with pytest.raises(DataError, match=why):
        evaluate_pairs(embedder, pairs, images, ext="png", progress=False, folds=folds)
    assert embedder.calls == 0


def test_folds_1_is_refused_by_the_cli_before_embedding(lfw_like, capsys):
    pairs, images = lfw_like
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                "default",
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--ext",
                "png",
                "--folds",
                "1",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "at least 2 folds" in err and "model file not found" not in err


def test_evaluate_accepts_the_default_model_by_name(lfw_like, monkeypatch, tmp_path):
    """As `train --init default` does; it used to say "model file not found: default"."""
    from facenet.commands import evaluate as evaluate_cmd
    from facenet.embedder import ensure_default_model

    pairs, images = lfw_like
    seen = []
    monkeypatch.setattr(evaluate_cmd, "_embedder", lambda args: seen.append(args.model) or FakeEmbedder())
    assert (
        cli.main(
            [
                "evaluate",
                "--model",
                "default",
                "--pairs",
                str(pairs),
                "--images",
                str(images),
                "--ext",
                "png",
                "--no-progress",
            ]
        )
        == 0
    )
    assert seen == [str(ensure_default_model())]
