"""Training from several sources, unlabelled photos and a teacher (knowledge distillation)."""

from __future__ import annotations

import itertools
import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import tiny_config

from facenet.data.synthetic import SyntheticFaces
from facenet.errors import DataError, TrainingError


def _people(root, names, seed, per_person=4, size=64):
    faces = SyntheticFaces(len(names), seed=seed, size=size)
    for person, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for i in range(per_person):
            Image.fromarray(faces.render(person, i)).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    return (
        _people(base / "alpha", ["ann", "bob", "cid", "dan"], seed=1),
        _people(base / "beta", ["bob", "eve", "fay", "gus", "hal", "ivy"], seed=2, per_person=3),
    )


def test_sources_keep_their_people_apart_unless_merged(two_sources):
    from facenet.data.folder import FolderDataset

    apart = FolderDataset(two_sources)
    assert apart.classes[:5] == ["alpha/ann", "alpha/bob", "alpha/cid", "alpha/dan", "beta/bob"]
    assert len(apart.classes) == 10 and len(apart) == 4 * 4 + 6 * 3
    merged = FolderDataset(two_sources, merge_names=True)
    assert len(merged.classes) == 9 and merged.images_per_class[merged.classes.index("bob")] == 4 + 3
    assert merged.class_sources[merged.classes.index("bob")] == [0, 1]
    summary = merged.summary()
    assert summary["people"] == 9 and summary["images"] == 34
    assert [(s["people"], s["images"]) for s in summary["sources"]] == [(4, 16), (6, 18)]
    with pytest.raises(DataError, match="share the name"):
        FolderDataset([two_sources[0], two_sources[0]])


def test_merged_names_treat_underscores_as_spaces(tmp_path):
    """LFW's George_W_Bush and PubFig83's George W Bush are one person once merged, and one exclusion
    line in either spelling keeps both out."""
    from facenet.data.folder import FolderDataset
    from facenet.train.data import build_sources

    lfw = _people(tmp_path / "lfw", ["George_W_Bush", "Ann_Lee"], seed=3, per_person=2)
    pubfig = _people(tmp_path / "pubfig", ["George W Bush", "Cid Moe"], seed=4, per_person=3)
    merged = FolderDataset([lfw, pubfig], merge_names=True)
    assert merged.classes == ["Ann Lee", "Cid Moe", "George W Bush"]
    assert merged.images_per_class.tolist() == [2, 3, 2 + 3]
    assert len(FolderDataset([lfw, pubfig]).classes) == 4  # apart unless merged
    names = tmp_path / "exclude.txt"
    names.write_text("George_W_Bush\n")
    config = tiny_config(
        tmp_path / "run",
        data=[str(lfw), str(pubfig)],
        holdout_identities=0.0,
        exclude_identities=str(names),
        identities_per_batch=2,
        faces_per_identity=2,
    )
    source, _ = build_sources(config)
    kept = {source.dataset.classes[i] for i in np.unique(source.dataset.labels[source.indices])}
    assert kept == {"lfw/Ann_Lee", "pubfig/Cid Moe"}


def test_source_weights_set_the_share_of_each_source_in_the_batches(two_sources):
    """Over many batches, the fraction of identities drawn from each source follows --source-weights."""
    from facenet.data.folder import FolderDataset
    from facenet.data.sampler import PKSampler

    data = FolderDataset(two_sources)
    weights = data.class_weights([3.0, 1.0])
    sampler = PKSampler(data.labels, 2, 2, seed=0, weights=weights)
    picks = np.concatenate(
        [np.asarray(sampler.batch(epoch, i)).reshape(2, 2)[:, 0] for epoch in range(800) for i in range(len(sampler))]
    )
    from_alpha = np.mean(data.sample_sources[picks] == 0)
    # brute force: the chance that a weighted draw of 2 distinct identities contains each identity
    p = weights / weights.sum()
    inclusion = np.zeros(len(p))
    for a, b in itertools.permutations(range(len(p)), 2):
        inclusion[[a, b]] += p[a] * p[b] / (1 - p[a])
    expected = inclusion[[i for i, s in enumerate(data.class_sources) if s == [0]]].sum() / 2
    assert abs(from_alpha - expected) < 0.02 and expected > 0.6  # 3:1 weights -> well over half from alpha
    with pytest.raises(DataError, match="--source-weights needs 2"):
        data.class_weights([1.0])


def test_excluded_names_match_across_sources(two_sources, tmp_path):
    from facenet.train.data import build_sources

    names = tmp_path / "exclude.txt"
    names.write_text("bob\n")
    config = tiny_config(
        tmp_path / "run", data=[str(p) for p in two_sources], holdout_identities=0.0, exclude_identities=str(names)
    )
    source, _ = build_sources(config)
    from facenet.train.data import data_summary

    summary = data_summary(config, source)
    assert summary["excluded"]["people"] == 2 and summary["excluded"]["images"] == 4 + 3
    classes = source.dataset.classes
    kept = {classes[i] for i in np.unique(source.dataset.labels[source.indices])}
    assert "alpha/bob" not in kept and "beta/bob" not in kept and len(kept) == 8


def test_distillation_loss_matches_a_brute_force_reference():
    from facenet.losses.distill import distillation_loss

    rng = np.random.default_rng(0)
    s = rng.normal(size=(7, 5))
    t = rng.normal(size=(7, 5))
    s, t = s / np.linalg.norm(s, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
    gaps = [(np.sum((s[i] - s[j]) ** 2) - np.sum((t[i] - t[j]) ** 2)) ** 2 for i in range(7) for j in range(i + 1, 7)]
    want = np.mean(gaps) + np.mean(np.sum((s - t) ** 2, axis=1))
    got, stats = distillation_loss(torch.tensor(s), torch.tensor(t))
    assert got.item() == pytest.approx(want, rel=1e-9)
    # sizes differ: the relations alone
    t3 = t[:, :3] / np.linalg.norm(t[:, :3], axis=1, keepdims=True)
    rel = np.mean(
        [(np.sum((s[i] - s[j]) ** 2) - np.sum((t3[i] - t3[j]) ** 2)) ** 2 for i in range(7) for j in range(i + 1, 7)]
    )
    got3, stats3 = distillation_loss(torch.tensor(s), torch.tensor(t3))
    assert got3.item() == pytest.approx(rel, rel=1e-9) and "distill_agreement" not in stats3
    assert distillation_loss(torch.tensor(s), torch.tensor(s))[0].item() == pytest.approx(0, abs=1e-9)


def test_occluded_and_clean_views_differ_only_where_the_occluder_is():
    """The teacher's view is the student's view without the occluder: same jitter, flip and colour."""
    from facenet.align.crop import template_points
    from facenet.train.augment import Augmentation

    face = SyntheticFaces(1, seed=0, size=96).render(0, 0)
    points = tuple(map(tuple, template_points(96, 0.0, "dlib").tolist()))
    augment = Augmentation(96, crop=True, flip=True, colour=0.0, occlusion=1.0, landmarks=points)
    for seed in range(6):
        student, teacher = augment.views(face, np.random.default_rng(seed))
        changed = np.abs(student.astype(int) - teacher).sum(2) > 0
        # an occluder was drawn, over part of the face only: had the two views been jittered differently,
        # nearly every pixel would differ
        assert 0.03 < changed.mean() < 0.6  # (where each occluder lands: tests/test_occlusion.py)
    # colour jitter scales about the image's mean, which the occluder moves: elsewhere by a few levels only
    coloured = Augmentation(96, crop=True, flip=True, colour=0.2, occlusion=1.0, landmarks=points)
    student, teacher = coloured.views(face, np.random.default_rng(1))
    assert np.median(np.abs(student.astype(int) - teacher)) <= 6
    # and the same draw twice gives the same pixels (resume-exact)
    a = augment.views(face, np.random.default_rng(3))
    b = augment.views(face, np.random.default_rng(3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_unlabelled_photos_join_each_batch_with_label_minus_one(two_sources, tmp_path):
    from facenet.data.sampler import PKSampler
    from facenet.train.data import StepBatches, TeacherFeed, UnlabelledSource, build_sources, face_augmentation

    flat = tmp_path / "loose" / "deeper"
    flat.mkdir(parents=True)
    for i, image in enumerate(SyntheticFaces(3, seed=9, size=48).render(p, 0) for p in range(3)):
        Image.fromarray(image).save(flat / f"{i}.jpg")
    config = tiny_config(
        tmp_path / "run",
        data=[str(two_sources[0])],
        holdout_identities=0.0,
        unlabelled=[str(tmp_path / "loose")],
        unlabelled_per_batch=5,
        teacher="x.safetensors",
    )
    source, _ = build_sources(config)
    unlabelled = UnlabelledSource(config.unlabelled)
    targets = np.arange(len(source), dtype=np.float32)[:, None] * [1, 0]
    extra = 100 + np.arange(len(unlabelled), dtype=np.float32)[:, None] * [1, 0]
    batches = StepBatches(
        source,
        PKSampler(source.labels, 4, 3, seed=0),
        face_augmentation(config),
        0,
        unlabelled=unlabelled,
        unlabelled_count=5,
        teacher=TeacherFeed(targets=targets, unlabelled_targets=extra),
    )
    images, labels, teacher = batches[2]
    assert images.shape[0] == 12 + 5 and (labels[:12] >= 0).all() and (labels[12:] == -1).all()
    assert teacher[:12, 0].tolist() == batches.indices(2)  # each row is its photo's cached embedding
    assert teacher[12:, 0].tolist() == (100 + batches.unlabelled_indices(2)).tolist()


def _teacher_file(tmp_path):
    from facenet.models import create_model
    from facenet.models.modelfile import save_model

    torch.manual_seed(5)
    path = tmp_path / "teacher.safetensors"
    save_model(create_model("nns", input_size=32).eval(), path)
    return path


@pytest.mark.parametrize("mode", ["online", "cached"])
def test_a_teacher_only_run_pulls_the_student_towards_the_teacher(two_sources, tmp_path, mode):
    """--loss none: the distillation term alone; the agreement with the teacher improves."""
    from facenet.train.loop import train

    teacher = _teacher_file(tmp_path)
    config = tiny_config(
        tmp_path / mode,
        data=[str(p) for p in two_sources],
        loss="none",
        teacher=str(teacher),
        teacher_mode=mode,
        steps=30,
        lr=3e-3,
        holdout_identities=0.0,
        eval_every=30,
        checkpoint_every=30,
        log_every=1,
        unlabelled=[str(two_sources[1])],
        unlabelled_per_batch=4,
    )
    result = train(config, progress=False)
    rows = list(__import__("csv").DictReader(open(result.run_dir / "metrics.csv")))
    agreement = [float(r["distill_agreement"]) for r in rows if r["distill_agreement"]]
    assert np.mean(agreement[-5:]) < 0.75 * np.mean(agreement[:5])
    summary = json.loads((result.run_dir / "data.json").read_text())
    assert summary["people"] == 10 and summary["unlabelled"][0]["images"] == 18
    from facenet.models.modelfile import read_model_info

    provenance = read_model_info(result.model_path).provenance
    assert provenance["teacher"] == str(teacher) and provenance["data_summary"]["images"] == 34


def test_the_teacher_cache_is_owner_only_and_reused(two_sources, tmp_path, monkeypatch):
    import facenet.train.teacher as teachers

    teacher = _teacher_file(tmp_path)
    paths = sorted(two_sources[0].rglob("*.png"))
    first = teachers.cached_targets(str(teacher), paths, progress=False)
    assert first.shape == (len(paths), 128) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    cache = next((teachers.cache_home() / "teachers").glob("*.sqlite"))
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o600
    monkeypatch.setattr(teachers, "_embedder", lambda spec: pytest.fail("the cache should answer"))
    assert np.array_equal(teachers.cached_targets(str(teacher), paths, progress=False), first)


def test_teacher_settings_that_cannot_work_are_refused(tmp_path):
    with pytest.raises(TrainingError, match="--teacher"):
        tiny_config(tmp_path, loss="none").validate()
    with pytest.raises(TrainingError, match="offline mining"):
        tiny_config(tmp_path, teacher="dlib", offline_every=5).validate()
    from facenet.train.teacher import resolve_mode

    onnx = tmp_path / "t.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(TrainingError, match="cached"):
        resolve_mode(str(onnx), "online", torch.device("cpu"))
    assert resolve_mode(str(onnx), "auto", torch.device("cuda")) == "cached"


def test_a_distilled_student_is_closer_to_its_teacher_on_photos_it_never_saw(tmp_path):
    """A few hundred photos of distillation bring the student's embeddings towards the teacher's on other
    people's photos, far closer than an untrained student's."""
    from facenet.embedder import load_embedder
    from facenet.models import create_model
    from facenet.models.modelfile import read_model_info, save_model
    from facenet.train.loop import train

    seen = _people(tmp_path / "seen", [f"p{i}" for i in range(40)], seed=11, per_person=6, size=32)
    unseen = SyntheticFaces(12, seed=12, size=32)
    photos = [unseen.render(person, i) for person in range(12) for i in range(4)]
    teacher = _teacher_file(tmp_path)
    result = train(
        tiny_config(
            tmp_path / "run",
            data=[str(seen)],
            loss="none",
            teacher=str(teacher),
            teacher_mode="cached",
            steps=80,
            lr=3e-3,
            identities_per_batch=8,
            holdout_identities=0.0,
            eval_every=80,
            checkpoint_every=80,
        ),
        progress=False,
    )
    info = read_model_info(result.model_path)
    torch.manual_seed(1)
    untrained = save_model(create_model("nns", input_size=32).eval(), tmp_path / "untrained.safetensors", info)
    assert untrained.standardisation == info.standardisation

    def gap(model_path):  # mean squared distance between the student's and the teacher's unit embeddings
        student = load_embedder(model_path, detect=False).embed_crops(photos)
        return ((student - load_embedder(teacher, detect=False).embed_crops(photos)) ** 2).sum(1).mean()

    trained, untrained = gap(result.model_path), gap(tmp_path / "untrained.safetensors")
    assert trained < 0.5 * untrained, (trained, untrained)
