"""The installed default model on real photos: LFW pairs it has to get right, through the CLI and the API."""

import facenet
from facenet.cli import main
from facenet.models.pretrained import DEFAULT


def _first_pairs(lfw_dir, count):
    """The first ``count`` matched and mismatched pairs of LFW View 2's first fold."""
    lines = (lfw_dir / "pairs.txt").read_text().splitlines()[1:601]
    path = lambda name, i: lfw_dir / "images" / name / f"{name}_{int(i):04d}.jpg"  # noqa: E731
    same = [(path(n, i), path(n, j)) for n, i, j in (line.split() for line in lines[:count])]
    different = [(path(a, i), path(b, j)) for a, i, b, j in (line.split() for line in lines[300 : 300 + count])]
    return same, different


def test_default_model_verifies_real_photos(lfw_dir):
    same, different = _first_pairs(lfw_dir, 10)
    model = facenet.load_model()  # the installed pretrained default, MTCNN + its recipe
    assert model.info.arch == DEFAULT.arch and model.detector.name == "mtcnn"
    right = sum(facenet.verify(a, b, model=model).same for a, b in same)
    right += sum(not facenet.verify(a, b, model=model).same for a, b in different)
    assert right >= 19  # the default scores 99.5% on LFW; 20 easy-to-average pairs allow one miss


def test_verify_command_answers_with_exit_codes(lfw_dir, capsys):
    same, different = _first_pairs(lfw_dir, 1)
    assert main(["verify", *map(str, same[0])]) == 0
    assert "SAME" in capsys.readouterr().out
    assert main(["verify", *map(str, different[0])]) == 1
    assert "DIFFERENT" in capsys.readouterr().out


def test_open_set_identification_rejects_strangers(lfw_dir, tmp_path):
    """One photo enrolled for each of 20 people; their second photos are found, 20 strangers are not."""
    from facenet.evaluate.calibrate import identification_threshold
    from facenet.gallery import Gallery

    counts = dict(line.split("\t") for line in (lfw_dir / "lfw-names.txt").read_text().splitlines() if "\t" in line)
    names = sorted(counts)
    known = [n for n in names if int(counts[n]) >= 2][::40][:20]
    strangers = [n for n in names if int(counts[n]) == 1][::100][:20]
    photo = lambda name, i: lfw_dir / "images" / name / f"{name}_{i:04d}.jpg"  # noqa: E731
    model = facenet.load_model(which="central")
    enrolled = model.embed([photo(n, 1) for n in known])
    queries = model.embed([photo(n, 2) for n in known] + [photo(n, 1) for n in strangers])
    with Gallery.open(tmp_path / "g.db", model.name, model.embedding_size) as gallery:
        for name, row in zip(known, enrolled):
            gallery.enroll(name, row[None], [name])
        threshold = identification_threshold(model, len(known))
        assert threshold < model.threshold  # stricter than pair verification
        found = gallery.identify(queries, k=1, threshold=threshold)
    identified = sum(bool(m) and m[0].name == n for m, n in zip(found[:20], known))
    rejected = sum(not m for m in found[20:])
    assert identified >= 15 and rejected >= 19, (identified, rejected)
