import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from facenet.align import AlignedFace, Detection, Recipe
from facenet.cli import main
from facenet.commands import cluster as cluster_cmd
from facenet.commands import gallery as gallery_cmd
from facenet.embedder import FoundFaces
from facenet.errors import NoFaceError
from facenet.gallery import Gallery, Record

D = 8
COLOURS = {"red": 0, "green": 1, "blue": 2}


class FakeEmbedder:
    """Stands in for a model: the photo's colour decides the identity; grey photos have no face."""

    name, embedding_size, threshold = "fake-model", D, 0.5
    recipe = Recipe()

    def find_faces(self, path, all_faces=False, source=None):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        if np.ptp(pixels.reshape(-1, 3).mean(0)) < 10:
            raise NoFaceError(f"{path}: no face found")
        face = AlignedFace(pixels, Detection((0, 0, pixels.shape[1], pixels.shape[0]), 0.99, np.zeros(10)))
        return FoundFaces([face], [face.detection])

    def embed_crops(self, crops, batch_size=32):
        out = []
        for crop in crops:
            rgb = np.asarray(crop, np.float32).mean((0, 1))
            v = np.zeros(D, np.float32)
            v[int(rgb.argmax())] = 1.0
            v[3 + int(rgb.argmin())] = 0.1
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


# a FAR table that stops early: past 10 comparisons, a 1e-2 stranger rate needs less than 1e-3 per comparison
SHORT_TABLE = {"1e-02": 0.45, "1e-03": 0.3}
TARS = {"entries": {"1e-02": {"kind": "measured", "tar": 0.95}, "1e-03": {"kind": "measured", "tar": 0.9}}}


class CalibratedEmbedder(FakeEmbedder):
    """The fake model with a FAR calibration (its ``info``, as a real embedder's)."""

    info = SimpleNamespace(id="fake-model", threshold=0.5, far_thresholds=SHORT_TABLE, far_calibration=TARS)


def add_strangers(path, count: int) -> None:
    """``count`` more people of one random face each: a bigger gallery for a stranger to be compared with."""
    rng = np.random.default_rng(count)
    x = rng.standard_normal((count, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Gallery.open(path, "fake-model", D, create=False) as g:
        g.enroll_many([Record(f"stranger {len(g.people())} {i}", x[i : i + 1], ["x"]) for i in range(count)])


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.setattr(gallery_cmd, "embedder_from_args", lambda args: FakeEmbedder())
    monkeypatch.setattr(gallery_cmd, "_model_info", lambda args: SimpleNamespace(id="fake-model", threshold=0.5))
    monkeypatch.setattr(cluster_cmd, "embedder_from_args", lambda args: FakeEmbedder())
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    made = {}
    for name, colour in [
        ("r1", (250, 10, 10)),
        ("r2", (240, 30, 20)),
        ("g1", (10, 250, 10)),
        ("b1", (10, 10, 250)),
        ("grey", (128, 128, 128)),
    ]:
        made[name] = tmp_path / "photos" / f"{name}.png"
        made[name].parent.mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), colour).save(made[name])
    return made


def test_enroll_identify_list_remove_via_cli(photos, tmp_path, capsys):
    default = tmp_path / "xdg" / "facenet" / "gallery.db"
    assert main(["gallery", "enroll", "Red Person", str(photos["r1"]), str(photos["r2"])]) == 0
    assert main(["gallery", "enroll", "green", str(photos["g1"])]) == 0
    assert default.is_file()
    capsys.readouterr()
    assert main(["identify", str(photos["r1"]), str(photos["b1"])]) == 1  # blue is unknown
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{photos['r1']}: Red Person 0.005")  # to the template of r1 and r2 (the default)
    assert out[1] == f"{photos['b1']}: unknown"
    assert main(["gallery", "list"]) == 0
    listing = capsys.readouterr().out
    assert "Red Person\t2" in listing and "green\t1" in listing and "fake-model" in listing
    assert main(["gallery", "remove", "Red Person"]) == 0
    assert main(["identify", str(photos["r1"])]) == 1
    assert capsys.readouterr().out.strip().endswith("unknown")


def test_enroll_skips_a_faceless_photo_unless_strict(photos, tmp_path, capsys):
    g = tmp_path / "g.db"
    args = ["gallery", "enroll", "x", str(photos["r1"]), str(photos["grey"]), "--gallery", str(g)]
    assert main([*args, "--strict"]) == 2
    err = capsys.readouterr().err
    assert f"skipped {photos['grey']}: no face found" in err and "nothing enrolled" in err
    assert not g.exists()
    assert main(args) == 0
    assert "1 of 2 photo(s) skipped" in capsys.readouterr().err
    with Gallery.open(g, create=False) as gallery:
        assert [(p.name, p.faces) for p in gallery.people()] == [("x", 1)]
    assert main(["gallery", "enroll", "y", str(photos["grey"]), "--gallery", str(g)]) == 2


def test_enroll_refuses_an_enrolled_name_unless_add(photos, tmp_path, capsys):
    """As the API answers 409 unless merge=true: enrolling a name twice is a mistake until asked for."""
    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", "x", str(photos["r1"]), "--gallery", str(g)]) == 0
    assert main(["gallery", "enroll", "x", str(photos["r2"]), "--gallery", str(g)]) == 2
    err = capsys.readouterr().err
    assert "'x' is already enrolled" in err and "pass --add" in err and "--merge" not in err  # enroll has no --merge
    assert main(["gallery", "enroll", "x", str(photos["r2"]), "--gallery", str(g), "--add"]) == 0
    with Gallery.open(g, create=False) as gallery:
        assert [(p.name, p.faces) for p in gallery.people()] == [("x", 2)]


def test_enroll_several_photos_under_a_policy(photos, tmp_path, capsys):
    g = tmp_path / "g.db"
    assert (
        main(
            [
                "gallery",
                "enroll",
                "Red",
                str(photos["r1"]),
                str(photos["r2"]),
                "--policy",
                "mean-of-2",
                "--gallery",
                str(g),
            ]
        )
        == 0
    )
    assert "enrolled 2 photo(s) of Red (2 in total)" in capsys.readouterr().out
    assert main(["gallery", "list", "--gallery", str(g)]) == 0
    assert "policy mean-of-2" in capsys.readouterr().out
    assert main(["identify", str(photos["r1"]), "--gallery", str(g)]) == 0
    # r1 itself is at 0 and r2 at 0.0198: the mean of the two, where nearest would say 0.000
    assert capsys.readouterr().out.strip() == f"{photos['r1']}: Red 0.010"
    more = ["gallery", "enroll", "Red", str(photos["r2"]), "--add", "--gallery", str(g)]
    assert main([*more, "--policy", "template"]) == 2
    assert "scores people by policy 'mean-of-2'" in capsys.readouterr().err
    new = tmp_path / "n.db"
    assert main(["gallery", "enroll", "x", str(photos["r1"]), "--policy", "closest", "--gallery", str(new)]) == 2
    assert "choose one of: nearest, mean-of-K" in capsys.readouterr().err and not new.exists()


def test_identify_says_when_the_gallery_is_too_large_for_the_asked_rate(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gallery_cmd, "embedder_from_args", lambda args: CalibratedEmbedder())
    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", "red", str(photos["r1"]), "--gallery", str(g), "--policy", "nearest"]) == 0
    add_strangers(g, 1)  # 2 comparisons: 5e-3 per comparison, within the table
    capsys.readouterr()
    identify = ["identify", str(photos["r1"]), "--gallery", str(g)]
    assert main([*identify, "--strict"]) == 0
    err = capsys.readouterr().err
    assert "open set at 2 comparison(s) per query: strangers taken for someone enrolled: 0.01 (as asked)" in err
    assert "warning" not in err
    add_strangers(g, 30)  # 32 comparisons: 3.1e-4 per comparison, below the table's smallest entry
    assert main(identify) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{photos['r1']}: red 0.000")
    note = (
        "a stranger false-accept rate of 0.01 is beyond this model's calibration at 32 comparisons: expect about 0.032"
    )
    assert f"facenet identify: warning: {note}" in captured.err
    assert "(asked 0.01: beyond the model's calibration)" in captured.err
    assert main([*identify, "--strict"]) == 2  # refused before any photo is read
    captured = capsys.readouterr()
    assert captured.out == "" and f"facenet identify: error: --strict: {note}; ask a larger --far" in captured.err
    assert main([*identify, "--strict", "--far", "0.5"]) == 0  # 1.6e-2 per comparison: kept
    assert main([*identify, "--strict", "--threshold", "0.3"]) == 0  # by hand: nothing is promised
    assert "(by hand: no stranger rate)" in capsys.readouterr().err


def test_identify_strict_refuses_a_model_without_calibration(photos, tmp_path, capsys):
    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", "red", str(photos["r1"]), "--gallery", str(g)]) == 0
    capsys.readouterr()
    assert main(["identify", str(photos["r1"]), "--gallery", str(g)]) == 0
    assert "facenet identify: warning: this model has no FAR calibration" in capsys.readouterr().err
    assert main(["identify", str(photos["r1"]), "--gallery", str(g), "--strict"]) == 2
    assert "--strict: this model has no FAR calibration" in capsys.readouterr().err


def test_gallery_list_states_the_stranger_rate(photos, tmp_path, capsys, monkeypatch, model_file):
    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", "red", str(photos["r1"]), "--gallery", str(g), "--policy", "nearest"]) == 0
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", str(g)]) == 0  # the fixture's model: no calibration
    assert "# warning: this model has no FAR calibration" in capsys.readouterr().out
    monkeypatch.setattr(gallery_cmd, "_model_info", lambda args: CalibratedEmbedder.info)
    assert main(["gallery", "list", "--gallery", str(g)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        "# open set at 1 comparison(s) per query: strangers taken for someone enrolled: 0.01 (as asked); "
        "enrolled people's photos identified: about 95.0%"
    )
    assert out[2:] == ["red\t1"]
    add_strangers(g, 30)
    assert main(["gallery", "list", "--gallery", str(g)]) == 0
    out = capsys.readouterr().out
    assert "strangers taken for someone enrolled: 0.031 (asked 0.01: beyond the model's calibration)" in out
    assert "# warning: a stranger false-accept rate of 0.01 is beyond this model's calibration at 31 comp" in out
    assert main(["gallery", "list", "--gallery", str(g), "--far", "0.5"]) == 0
    assert "0.5 (as asked)" in capsys.readouterr().out
    # the real reader: a model file that is not the gallery's says so, and the list still comes
    monkeypatch.undo()
    assert main(["gallery", "list", "--gallery", str(g), "--model", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "# open set: unknown, the gallery holds embeddings of model fake-model, not " in out and "red\t1" in out


def test_identify_skips_and_reports(photos, tmp_path, capsys):
    g = tmp_path / "g.db"
    assert main(["gallery", "enroll", "red", str(photos["r1"]), "--gallery", str(g)]) == 0
    capsys.readouterr()
    report = tmp_path / "skipped.json"
    assert (
        main(["identify", str(photos["r2"]), str(photos["grey"]), "--gallery", str(g), "--skipped-report", str(report)])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"{photos['r2']}: red")
    assert json.loads(report.read_text())["skipped"] == [{"path": str(photos["grey"]), "reason": "no face found"}]
    assert main(["identify", str(photos["r2"]), str(photos["grey"]), "--gallery", str(g), "--strict"]) == 2


def test_export_import_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    src, dst, exported = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "export.db"
    with Gallery.open(src, "m", D, policy="nearest") as g:
        g.enroll("a", x[:2], ["1", "2"])
        g.enroll("b", x[2:], ["3"])
    assert main(["gallery", "export", str(exported), "--gallery", str(src)]) == 0
    assert main(["gallery", "import", str(exported), "--gallery", str(dst)]) == 0
    assert main(["gallery", "import", str(exported), "--gallery", str(dst)]) == 2
    assert "--merge" in capsys.readouterr().err
    assert main(["gallery", "import", str(exported), "--gallery", str(dst), "--merge"]) == 0
    with Gallery.open(dst, "m", D) as g:
        assert {p.name: p.faces for p in g.people()} == {"a": 4, "b": 2}
        assert g.policy == "nearest"  # the new gallery scores people as the exported one did
    capsys.readouterr()
    assert main(["gallery", "list", "--gallery", str(tmp_path / "missing.db")]) == 2
    assert main(["gallery", "remove", "nobody", "--gallery", str(src)]) == 2
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a gallery at all" * 20)
    assert main(["gallery", "list", "--gallery", str(junk)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("facenet gallery: error:") for line in err)
    assert junk.read_bytes() == b"not a gallery at all" * 20


def test_cluster_command_writes_manifest(photos, tmp_path, capsys):
    out = tmp_path / "clusters"
    assert main(["cluster", str(photos["r1"].parent), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["clusters"] == {"0": [str(photos["r1"]), str(photos["r2"])]}
    assert sorted(manifest["unclustered"]) == sorted([str(photos["b1"]), str(photos["g1"])])
    assert "grey.png" in capsys.readouterr().err  # skipped, reported
    assert json.loads((out / "skipped.json").read_text())["skipped"][0]["path"] == str(photos["grey"])
    assert (out / "cluster_0.png").is_file() and (out / "unclustered.png").is_file()


def test_cluster_sheets_show_the_face_crops_used(photos, tmp_path, monkeypatch, capsys):
    """A two-person photo: the sheet shows the face that was clustered, not the whole photo."""

    class LeftHalf(FakeEmbedder):
        def find_faces(self, path, all_faces=False, source=None):
            pixels = np.asarray(Image.open(path).convert("RGB"))
            w = pixels.shape[1]
            left = Detection((0, 0, w // 2, pixels.shape[0]), 0.9, np.zeros(10))
            right = Detection((w // 2, 0, w, pixels.shape[0]), 0.8, np.zeros(10))
            return FoundFaces([AlignedFace(np.ascontiguousarray(pixels[:, : w // 2]), left)], [left, right])

    monkeypatch.setattr(cluster_cmd, "embedder_from_args", lambda args: LeftHalf())
    half = np.zeros((32, 64, 3), np.uint8)
    half[:, :32] = (250, 10, 10)
    half[:, 32:] = (10, 10, 250)
    for name in ("two_a.png", "two_b.png"):
        Image.fromarray(half).save(tmp_path / name)
    out = tmp_path / "clusters"
    assert main(["cluster", str(tmp_path / "two_a.png"), str(tmp_path / "two_b.png"), "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out / "cluster_0.png").convert("RGB"))
    tile = sheet[:96, :96]
    assert tile[..., 0].mean() > 200 and tile[..., 2].mean() < 50  # the red (left) face fills the tile
    caption = sheet[96:, :96]
    assert (caption < 100).any()  # the file name is written under it
    assert "two_a.png: 2 faces found; using face 0" in capsys.readouterr().err


def test_cli_on_a_postgresql_gallery_from_the_environment(photos, tmp_path, capsys, monkeypatch, pg_url):
    url = pg_url.replace("postgres@", "postgres:not-a-real-pw@")  # trust auth ignores it; it must never be printed
    monkeypatch.setenv("FACENET_GALLERY", url)
    assert main(["gallery", "enroll", "Red Person", str(photos["r1"]), str(photos["r2"])]) == 0
    assert main(["gallery", "enroll", "green", str(photos["g1"])]) == 0
    assert not (tmp_path / "xdg").exists()  # nothing went to the default file
    assert main(["identify", str(photos["r2"]), str(photos["b1"])]) == 1
    out = capsys.readouterr().out
    assert f"{photos['r2']}: Red Person 0.005" in out and f"{photos['b1']}: unknown" in out
    assert main(["gallery", "remove", "green"]) == 0
    assert main(["gallery", "list"]) == 0
    assert main(["gallery", "export", str(tmp_path / "copy.db")]) == 0
    out = capsys.readouterr().out
    assert "Red Person\t2" in out and "green" not in out.split("# gallery")[-1].split("\n", 1)[1]
    assert "not-a-real-pw" not in out and "***" in out
    with Gallery.open(tmp_path / "copy.db", create=False) as copy:
        assert {p.name: p.faces for p in copy.people()} == {"Red Person": 2}
