"""benchmarks/openset_scale.py and face_sets.py: the pieces its figures rest on (the figures live in RESULTS.md)."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import poisson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import face_sets  # noqa: E402
import openset_scale  # noqa: E402


@pytest.mark.parametrize("k, n", [(0, 3865), (1, 3865), (4, 3865), (16, 3865), (300, 100_000)])
def test_poisson_interval_is_exact(k, n):
    low, high = openset_scale.poisson_interval(k, n)
    assert low <= k / n <= high
    # each end is the rate at which the observed count is just 2.5% likely on its side
    assert poisson.cdf(k, high * n) == pytest.approx(0.025, abs=1e-6)
    if k:
        assert poisson.sf(k - 1, low * n) == pytest.approx(0.025, abs=1e-6)
    else:
        assert low == 0.0


def test_poisson_interval_known_values():
    # Garwood's table: 0 events -> [0, 3.689], 4 events -> [1.090, 10.242]
    assert openset_scale.poisson_interval(0, 1) == pytest.approx((0.0, 3.689), abs=1e-3)
    assert openset_scale.poisson_interval(4, 1) == pytest.approx((1.090, 10.242), abs=1e-3)


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    queries, refs = rng.normal(size=(70, 8)).astype(np.float32), rng.normal(size=(33, 8)).astype(np.float32)
    dist, index = face_sets.nearest(queries, refs, chunk=16)
    brute = ((queries[:, None, :].astype(np.float64) - refs[None]) ** 2).sum(-1)
    assert np.array_equal(index, brute.argmin(1))
    assert np.allclose(dist, brute.min(1), atol=1e-4)


def test_faces_not_in_lfw_leaves_out_the_people_named_in_lfw(tmp_path):
    faces = tmp_path / "aligned"
    for relative in ("pubfig83/Adam Sandler/1.png", "pubfig83/Ann Other/1.png", "glint/m.0x/1.png", "glint/m.0y/2.png"):
        (faces / relative).parent.mkdir(parents=True, exist_ok=True)
        (faces / relative).touch()
    paths, labels, sources, named = face_sets.faces_not_in_lfw(faces, ("pubfig83", "glint"))
    assert len(paths) == 4 and named == set()  # no list written: nobody left out
    (tmp_path / "lfw_overlap.txt").write_text("Adam Sandler\nm.0y\n")
    paths, labels, sources, named = face_sets.faces_not_in_lfw(faces, ("pubfig83", "glint"))
    assert named == {"Adam Sandler", "m.0y"}
    assert list(labels) == ["pubfig83/Ann Other", "glint/m.0x"] and list(sources) == ["pubfig83", "glint"]
    assert paths == [faces / "pubfig83/Ann Other/1.png", faces / "glint/m.0x/1.png"]


def test_source_photos_finds_the_photo_each_crop_was_cut_from(tmp_path):
    faces, staged = tmp_path / "aligned", tmp_path / "staged"
    originals = [staged / "utk/photos/1_0_0_2017.jpg.chip.jpg", staged / "celeba/celeba_12/000123.jpg"]
    for photo in originals + [staged / "celeba/celeba_12/000124.jpg"]:
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.touch()
    crops = [faces / "utk/photos/1_0_0_2017.jpg.chip.png", faces / "celeba/celeba_12/000123.png"]
    assert face_sets.source_photos(faces, crops) == originals
    with pytest.raises(SystemExit, match="000999"):
        face_sets.source_photos(faces, [faces / "celeba/celeba_12/000999.png"])


def test_lfw_photos_halves_split_by_person(tmp_path):
    names = ("Ann_A", "Bob_B", "Cy_C", "Di_D", "Ed_E", "Flo_F")
    for name in names:
        for i in (1, 2):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"{name}_{i:04d}.jpg").touch()
    a, b = face_sets.lfw_photos(tmp_path, "a"), face_sets.lfw_photos(tmp_path, "b")
    assert sorted(a + b) == face_sets.lfw_photos(tmp_path)
    assert not {p.parent.name for p in a} & {p.parent.name for p in b}
    assert {p.parent.name for p in a} == {n for n in names if face_sets.lfw_calibration_half(np.array([n]))[0]}


def test_embed_cached_embeds_each_photo_once_and_keeps_order(tmp_path, monkeypatch):
    calls = []

    def embed(chunk):
        calls.append(list(chunk))
        return np.array([[float(p.name)] for p in chunk])

    paths = [tmp_path / str(i) for i in range(5)]
    cache = tmp_path / "e.npz"
    first = face_sets.embed_cached(paths[:3], cache, embed, batch=2)
    relative = [Path("..") / tmp_path.name / p.name for p in paths[::-1]]  # the same photos, spelt otherwise
    monkeypatch.chdir(tmp_path)
    again = face_sets.embed_cached(relative, cache, embed, batch=2)
    assert first[:, 0].tolist() == [0, 1, 2]
    assert again[:, 0].tolist() == [4, 3, 2, 1, 0]
    assert sorted(p.name for chunk in calls for p in chunk) == ["0", "1", "2", "3", "4"]


def test_plot_draws_one_line_for_one_photo_and_one_per_policy_for_five(tmp_path):
    pytest.importorskip("matplotlib")

    def row(enrolled, policy, faces):
        asked = {k: {"dir": 0.9, "stranger_far": float(k)} for k in ("0.01", "0.001")}
        return {"enrolled": enrolled, "policy": policy, "faces": faces, "raw": asked}

    rows = [row(1, "nearest", f) for f in (156, 1156)]
    rows += [row(5, p, f) for p in ("nearest", "template") for f in (780, 1780)]
    openset_scale.plot(rows, tmp_path / "p.png")
    import matplotlib.pyplot as plt

    (dir_axes, _) = plt.gcf().axes
    assert [line.get_label() for line in dir_axes.get_lines()] == [
        "1 photo (every policy)",
        "nearest, 5 photos",
        "template, 5 photos",
    ]
    assert all(len(line.get_xdata()) == 2 for line in dir_axes.get_lines())
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("policy", ["nearest", "mean-of-2", "template"])
def test_best_people_matches_a_brute_force_over_people_and_distractors(policy):
    rng = np.random.default_rng(3)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    faces, owners = unit(rng.normal(size=(9, 6))), np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    distractors, queries = unit(rng.normal(size=(5, 6))), unit(rng.normal(size=(40, 6)))
    best, score, second = openset_scale.best_people(queries, faces, owners, distractors, policy)
    for q, b, s, s2 in zip(queries, best, score, second):
        d = ((faces - q) ** 2).sum(1)
        if policy == "template":
            per_person = [((unit(faces[owners == p].mean(0, keepdims=True))[0] - q) ** 2).sum() for p in range(3)]
        else:
            k = 1 if policy == "nearest" else 2
            per_person = [np.sort(d[owners == p])[:k].mean() for p in range(3)]
        scores = np.array(per_person + list(((distractors - q) ** 2).sum(1)))
        assert b == scores.argmin()
        assert s == pytest.approx(scores.min(), abs=1e-5)
        assert s2 == pytest.approx(np.sort(scores)[1], abs=1e-5)


def test_dir_at_counts_right_answers_within_the_strangers_quantile():
    strangers = np.arange(0, 101, dtype=float)  # the 1% quantile is 1.0
    known = np.array([0.5, 0.9, 1.5, 0.2])
    right = np.array([True, True, True, False])
    assert openset_scale.dir_at(right, known, strangers) == pytest.approx(2 / 4)


def test_pair_rates_match_a_brute_force_count_per_source():
    rng = np.random.default_rng(3)
    queries = rng.normal(size=(700, 8)).astype(np.float32)  # more than one chunk of 512
    pool = rng.normal(size=(90, 8)).astype(np.float32)
    sources = rng.choice(["utk", "yale", "glint"], size=90)
    thresholds = {"1e-03": 6.0, "1e-04": 9.0}
    rates = openset_scale.pair_rates(openset_scale.pairs_below(queries, pool, thresholds), 700, sources, thresholds)
    d = ((queries[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
    for s in ("utk", "yale", "glint"):
        cols = d[:, sources == s]
        assert rates[s]["pairs"] == cols.size
        for key, t in thresholds.items():
            assert rates[s][key] == pytest.approx(np.mean(cols < t), abs=1e-9)


def test_diagnosis_close_pairs_match_a_brute_force_and_utk_ages_read_the_name():
    import openset_diagnosis

    rng = np.random.default_rng(4)
    queries = rng.normal(size=(600, 5)).astype(np.float32)  # more than one chunk of 512
    refs = rng.normal(size=(40, 5)).astype(np.float32)
    pairs = openset_diagnosis.close_pairs(queries, refs, 2.0)
    d = ((queries[:, None, :] - refs[None, :, :]) ** 2).sum(-1)
    assert sorted(map(tuple, pairs.tolist())) == sorted(zip(*np.nonzero(d < 2.0)))
    assert openset_diagnosis.utk_age(Path("utk/photos/26_1_0_20170116.jpg.chip.png")) == 26


def test_one_person_pairs_each_join_the_two_halves(lfw_dir):
    """Every pair of benchmarks/lfw_one_person.tsv names two LFW people, one in each half: the file can only
    take a half-A person out of the pool for being one with a half-B stranger."""
    pairs = openset_scale.one_person()
    assert pairs, "lfw_one_person.tsv lists no pairs"
    for a, b in pairs:
        assert (lfw_dir / "images" / a).is_dir() and (lfw_dir / "images" / b).is_dir(), (a, b)
        in_a = face_sets.lfw_calibration_half(np.array([a, b]))
        assert in_a[0] != in_a[1], f"{a} and {b} are in the same half"
