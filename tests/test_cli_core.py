"""`facenet embed` / `facenet verify` and the public API, end to end on generated images."""

import csv

import numpy as np
import pytest
from PIL import Image

import facenet
from facenet.cli import main
from facenet.data.synthetic import SyntheticFaces
from facenet.models import create_model
from facenet.models.modelfile import model_info_for, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "nns.safetensors"
    model = create_model("nns", input_size=48).eval()
    save_model(model, path, model_info_for(model, input_size=48, threshold=0.8))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    faces = SyntheticFaces(3, seed=1, size=96)
    paths = []
    for identity in range(3):
        path = folder / f"person{identity}.png"
        Image.fromarray(faces.render(identity, 0)).save(path)
        paths.append(path)
    return paths


def test_embed_npy_rows_are_unit_and_match_the_api(tmp_path, model_file, photos, capsys):
    out = tmp_path / "emb.npy"
    code = main(["embed", *map(str, photos), "--out", str(out), "--model", str(model_file), "--no-detect"])
    assert code == 0
    rows = np.load(out)
    assert rows.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    api_rows = facenet.embed(photos, model=facenet.load_model(model_file, detect=False))
    np.testing.assert_allclose(rows, api_rows, atol=1e-6)
    with open(tmp_path / "emb.rows.csv") as fh:
        described = list(csv.DictReader(fh))
    assert [r["image"] for r in described] == [str(p) for p in photos]
    assert out.stat().st_mode & 0o777 == 0o600


def test_embed_csv_and_folder_expansion(tmp_path, model_file, photos):
    out = tmp_path / "emb.csv"
    assert main(["embed", str(photos[0].parent), "--out", str(out), "--model", str(model_file), "--no-detect"]) == 0
    with open(out) as fh:
        rows = list(csv.reader(fh))
    assert rows[0][:9] == ["image", "face", "faces", "x1", "y1", "x2", "y2", "score", "e0"]
    assert len(rows) == 4 and len(rows[1]) == 8 + 128
    assert np.isclose(np.linalg.norm(np.array(rows[1][8:], float)), 1, atol=1e-5)


def test_verify_exit_codes_follow_the_decision(model_file, photos, capsys):
    same = main(["verify", str(photos[0]), str(photos[0]), "--model", str(model_file), "--no-detect"])
    assert same == 0
    assert "SAME" in capsys.readouterr().out
    different = main(
        ["verify", str(photos[0]), str(photos[1]), "--model", str(model_file), "--no-detect", "--threshold", "0"]
    )
    assert different == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and "threshold 0.0000" in out


def test_verify_uses_the_models_calibrated_threshold(model_file, photos):
    result = facenet.verify(photos[0], photos[1], model=facenet.load_model(model_file))
    assert result.threshold == pytest.approx(0.8)
    assert result.same == (result.distance < 0.8)
    e = facenet.embed([photos[0], photos[1]], model=facenet.load_model(model_file))
    assert result.distance == pytest.approx(float(np.sum((e[0] - e[1]) ** 2)), abs=1e-6)


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_bad_input_is_one_line_and_exit_2(tmp_path, model_file, photos, content, capsys):
    bad = tmp_path / "bad.jpg"
    if content is None:  # a truncated real image
        data = photos[0].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(content)
    code = main(["verify", str(bad), str(photos[0]), "--model", str(model_file), "--no-detect"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err and "bad.jpg" in err


def test_missing_paths_and_models_are_clear_errors(tmp_path, model_file, photos, capsys):
    assert (
        main(
            [
                "embed",
                str(tmp_path / "nope.jpg"),
                "--out",
                str(tmp_path / "x.npy"),
                "--model",
                str(model_file),
                "--no-detect",
            ]
        )
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    assert (
        main(
            ["verify", str(photos[0]), str(photos[1]), "--model", str(tmp_path / "missing.safetensors"), "--no-detect"]
        )
        == 2
    )
    assert "model file not found" in capsys.readouterr().err
    assert (
        main(["embed", str(photos[0]), "--out", str(tmp_path / "x.txt"), "--model", str(model_file), "--no-detect"])
        == 2
    )
    assert ".npy, .csv, .json, .parquet" in capsys.readouterr().err


def test_a_missing_model_named_by_the_environment_is_an_error(tmp_path, monkeypatch, photos, capsys):
    monkeypatch.setenv("FACENET_MODEL", str(tmp_path / "gone.safetensors"))
    assert main(["verify", str(photos[0]), str(photos[1]), "--no-detect"]) == 2
    err = capsys.readouterr().err
    assert "gone.safetensors" in err and "unset it" in err and not (tmp_path / "gone.safetensors").exists()


def test_api_and_cli_share_their_defaults(model_file):
    """Same model, same detector, same recipe: facenet.load_model() behaves as the commands do."""
    import argparse

    from facenet.commands.core import add_model_options, embedder_from_args

    parser = argparse.ArgumentParser()
    add_model_options(parser)
    cli = embedder_from_args(parser.parse_args(["--model", str(model_file)]))
    api = facenet.load_model(model_file)
    assert api.detector is not None and api.detector.name == cli.detector.name == "mtcnn"
    assert api.recipe == cli.recipe and api.backend.name == cli.backend.name


def test_every_subcommand_has_help(capsys):
    from facenet.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"embed", "verify", "models", "train", "demo"} <= set(commands)
    for name, sub in commands.items():
        assert sub.format_help().strip(), name


def test_whole_photos_go_through_the_detector(tmp_path, model_file, lfw_dir, capsys):
    """Real LFW photos: the default detector finds the face; two faces side by side are reported."""
    a = lfw_dir / "images" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg"
    b = lfw_dir / "images" / "Aaron_Peirsol" / "Aaron_Peirsol_0002.jpg"
    assert main(["verify", str(a), str(b), "--model", str(model_file), "--backend", "torch"]) in (0, 1)
    assert "distance" in capsys.readouterr().out
    pair = tmp_path / "two.png"
    Image.fromarray(np.concatenate([np.asarray(Image.open(a)), np.asarray(Image.open(b))], axis=1)).save(pair)
    out = tmp_path / "faces.npy"
    assert main(["embed", str(pair), "--out", str(out), "--model", str(model_file), "--backend", "torch"]) == 0
    assert "2 faces found" in capsys.readouterr().err
    assert np.load(out).shape == (1, 128)
    assert (
        main(["embed", str(pair), "--out", str(out), "--model", str(model_file), "--backend", "torch", "--all-faces"])
        == 0
    )
    assert np.load(out).shape == (2, 128)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((120, 120, 3), 128, np.uint8)).save(blank)
    assert main(["verify", str(blank), str(a), "--model", str(model_file), "--backend", "torch"]) == 2
    assert "blank.png: no face found" in capsys.readouterr().err
