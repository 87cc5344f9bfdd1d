"""Batch commands on real collections (issue 12, items 11 and 12): skip and report bad photos, say where
each embedding comes from, stream in bounded memory."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from facenet.cli import main


@pytest.fixture(scope="module")
def collection(tmp_path_factory, lfw_dir):
    """Two real photos, a two-person photo, a text file named .jpg and a blank image (no face)."""
    folder = tmp_path_factory.mktemp("collection")
    a = lfw_dir / "images" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    b = lfw_dir / "images" / "Aaron_Peirsol" / "Aaron_Peirsol_0002.jpg"
    pair = folder / "pair.png"
    Image.fromarray(np.concatenate([np.asarray(Image.open(a)), np.asarray(Image.open(b))], axis=1)).save(pair)
    text = folder / "text.jpg"
    text.write_text("not a photo")
    blank = folder / "blank.png"
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(blank)
    return {"a": a, "b": b, "pair": pair, "text": text, "blank": blank}


def _embed(out, *paths, model, extra=()):
    return main(["embed", *map(str, paths), "--out", str(out), "--model", str(model), "--backend", "torch", *extra])


def test_embed_goes_on_past_bad_photos_and_reports_each_once(tmp_path, model_file, collection, capsys):
    out = tmp_path / "emb.csv"
    c = collection
    assert _embed(out, c["text"], c["a"], c["blank"], c["b"], model=model_file) == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == [str(c["a"]), str(c["b"])]
    report = json.loads((tmp_path / "emb.skipped.json").read_text())
    assert report["photos"] == 4 and report["embedded_photos"] == 2
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {str(c["text"]), str(c["blank"])}
    assert reasons[str(c["text"])].startswith("not a recognised image format")
    assert reasons[str(c["blank"])].startswith("no face found")
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "text.jpg" in x)
    assert line.count("text.jpg") == 1, line
    assert "2 of 4 photo(s) skipped" in err


def test_strict_or_nothing_embedded_exits_2(tmp_path, model_file, collection, capsys):
    c = collection
    assert _embed(tmp_path / "e.npy", c["a"], c["text"], model=model_file, extra=["--strict"]) == 2
    assert np.load(tmp_path / "e.npy").shape == (1, 128)  # the partial output is still written
    capsys.readouterr()
    assert _embed(tmp_path / "f.npy", c["text"], c["blank"], model=model_file) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) <= 3 and "none of the 2 photos could be used" in err[0] and "--skipped-report" in err[-1]
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "f.rows.csv").exists()


def test_nothing_usable_writes_nothing_and_says_why_in_a_line(tmp_path, model_file, capsys):
    """`facenet embed notes.txt --out t.npy` wrote empty files, said "wrote 0 embeddings" and took five lines."""
    notes = tmp_path / "notes.txt"
    notes.write_text("shopping: milk")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    (tmp_path / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    for name in ("notes.txt", "empty.jpg", "cut.jpg", "drawing.svg"):
        capsys.readouterr()
        assert _embed(tmp_path / "t.npy", tmp_path / name, model=model_file) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"facenet embed: error: {tmp_path / name}: "), err
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("t.")) == []
    assert (
        _embed(tmp_path / "t.npy", notes, model=model_file, extra=["--skipped-report", str(tmp_path / "r.json")]) == 2
    )
    assert json.loads((tmp_path / "r.json").read_text())["skipped"][0]["path"] == str(notes)
    assert not (tmp_path / "t.npy").exists()


def test_rows_carry_face_index_box_and_score(tmp_path, model_file, collection, capsys):
    out = tmp_path / "all.json"
    assert _embed(out, collection["pair"], model=model_file, extra=["--all-faces"]) == 0
    items = json.loads(out.read_text())
    assert [i["face"] for i in items] == [0, 1] and {i["faces"] for i in items} == {2}
    left, right = sorted(items, key=lambda i: i["box"][0])
    assert left["box"][2] <= 250 < right["box"][0]  # one face in each half of the 500 px wide photo
    assert all(0.5 < i["score"] <= 1 and len(i["embedding"]) == 128 for i in items)
    assert _embed(tmp_path / "one.npy", collection["pair"], model=model_file) == 0
    err = capsys.readouterr().err
    with open(tmp_path / "one.rows.csv") as fh:
        (row,) = csv.DictReader(fh)
    assert f"2 faces found; using face {row['face']}" in err and row["faces"] == "2"


def test_parquet_output_or_a_clear_message(tmp_path, model_file, collection, capsys):
    out = tmp_path / "e.parquet"
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert _embed(out, collection["a"], model=model_file) == 2
        assert "needs pyarrow" in capsys.readouterr().err
        return
    assert _embed(out, collection["a"], collection["b"], model=model_file) == 0
    table = pq.read_table(out)
    assert table.column_names == ["image", "face", "faces", "x1", "y1", "x2", "y2", "score", "embedding"]
    emb = np.array(table.column("embedding").to_pylist(), np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_worker_processes_give_the_same_rows(tmp_path, model_file, collection):
    c = collection
    paths = [c["a"], c["text"], c["pair"], c["b"]]
    assert _embed(tmp_path / "inline.csv", *paths, model=model_file, extra=["--workers", "0"]) == 0
    assert _embed(tmp_path / "pool.csv", *paths, model=model_file, extra=["--workers", "1", "--batch-size", "2"]) == 0
    inline, pool = ((tmp_path / n).read_text() for n in ("inline.csv", "pool.csv"))
    a, b = (np.array([r[8:] for r in csv.reader(t.splitlines()[1:])], float) for t in (inline, pool))
    assert [r[:3] for r in csv.reader(inline.splitlines())] == [r[:3] for r in csv.reader(pool.splitlines())]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_stream_reads_only_a_batch_ahead():
    """Photos are read while embedding goes on, never all before the first embedding."""
    from facenet.align import AlignedFace, Detection
    from facenet.batch import BatchReport, embed_photos
    from facenet.embedder import FoundFaces

    class Counting:
        recipe = type("R", (), {"which": "largest"})()
        embedding_size = 2
        seen = 0

        def find_faces(self, path, all_faces=False, source=None):
            self.seen += 1
            face = AlignedFace(np.zeros((4, 4, 3), np.uint8), Detection((0, 0, 4, 4), 1.0, np.zeros(10)))
            return FoundFaces([face], [face.detection])

        def embed_crops(self, crops, batch_size=32):
            return np.ones((len(crops), 2), np.float32)

    embedder = Counting()
    stream = embed_photos(
        embedder, [f"p{i}.jpg" for i in range(100)], BatchReport("embed"), batch_size=4, workers=0, progress=False
    )
    rows, emb = next(stream)
    assert len(rows) == 4 and embedder.seen <= 8


def test_the_python_api_decodes_a_batch_at_a_time(model_file, monkeypatch):
    """facenet.embed over many photos never holds them all decoded at once."""
    import facenet.embedder as embedder_module

    opened, embedded = [], []
    real_open = embedder_module.open_photo
    monkeypatch.setattr(embedder_module, "open_photo", lambda src, **kw: opened.append(1) or real_open(src, **kw))
    model = embedder_module.load_embedder(model_file, detect=False, backend="torch")
    real_embed = model.embed_crops
    monkeypatch.setattr(model, "embed_crops", lambda crops, *a: embedded.append(len(opened)) or real_embed(crops, *a))
    photos = [np.full((48, 48, 3), i * 20, np.uint8) for i in range(10)]
    rows = model.embed(photos, batch_size=4)
    # each batch of 4 is embedded before the next one is decoded
    assert embedded == [4, 8, 10]
    assert rows.shape == (10, 128)
    np.testing.assert_allclose(rows, model.embed_crops(photos), atol=1e-5)


def _rows_by(embedder, paths, workers):
    from facenet.batch import BatchReport, collect, embed_photos

    report = BatchReport("embed")
    rows, _ = collect(embed_photos(embedder, paths, report, batch_size=2, workers=workers, progress=False), 128)
    return [(r.path, r.box) for r in rows], [s.path for s in report.skipped]


@pytest.mark.parametrize(
    "detector",
    [
        dict(name="center", fraction=0.9),  # thread-safe: threads share it
        dict(name="mtcnn", backend="torch", factor=0.5),
    ],
)  # processes copy it
def test_workers_find_faces_with_the_callers_detector_options_and_fallback(model_file, collection, detector):
    """Workers used to rebuild the detector by name with its default options and no fallback."""
    from facenet.align import get_detector
    from facenet.embedder import load_embedder

    c = collection
    paths = [c["a"], c["blank"], c["pair"], c["b"]]
    default = load_embedder(model_file, detector=detector["name"], backend="torch")
    embedder = load_embedder(model_file, detector=get_detector(**detector), backend="torch")
    embedder.fallback_detector = get_detector("center")
    inline = _rows_by(embedder, paths, workers=0)
    assert inline == _rows_by(embedder, paths, workers=1)
    assert inline[1] == [] and [p for p, _ in inline[0]].count(str(c["blank"])) == 1  # the fallback was used
    assert inline[0] != _rows_by(default, paths, workers=0)[0]  # the options change the boxes
