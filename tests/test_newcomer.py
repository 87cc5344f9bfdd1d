"""What a new user tripped over (issue 26, item 8): hints that name real options, validation before the
long part of a run, one model id, quiet terminals."""

import struct
import subprocess
import sys
import zlib


def _png_header(width: int, height: int) -> bytes:
    """A PNG that is only its header: Pillow reads the size without decoding a pixel."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_pillows_decompression_bomb_warning_never_reaches_the_terminal(tmp_path):
    """A 90 MP photo made Pillow print a raw DecompressionBombWarning; the project's own limit speaks instead."""
    big = tmp_path / "big.png"
    big.write_bytes(_png_header(10_000, 9_000))
    code = (
        "from facenet.data.images import load_image\n"
        "from facenet.errors import BadImageError\n"
        f"try:\n    load_image({str(big)!r}, max_pixels=50_000_000)\n"
        "except BadImageError as exc:\n    print(exc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "DecompressionBomb" not in run.stderr + run.stdout
    assert run.stdout.strip() == f"{big}: 10000x9000 image exceeds the 50000000-pixel limit; shrink it"


def _help(*command: str) -> str:
    import contextlib
    import io

    import pytest

    from facenet.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(out.getvalue().split())


def test_backend_help_names_where_the_onnx_export_is_cached(tmp_path, monkeypatch):
    from facenet.export import onnx_cache_path
    from facenet.models import create_model
    from facenet.models.modelfile import save_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    info = save_model(create_model("nns", input_size=48), tmp_path / "m.safetensors")
    assert onnx_cache_path(info).is_relative_to(tmp_path / "cache" / "facenet" / "onnx")
    text = _help("verify")
    assert (
        "cached in $XDG_CACHE_HOME/facenet/onnx, i.e. ~/.cache/facenet/onnx" in text and "beside the model" not in text
    )


def test_verify_takes_which_as_readme_says(lfw_dir, model_file):
    """README lists which= among facenet.verify's per-call options: the largest or the central face is compared."""
    import numpy as np
    from PIL import Image

    import facenet

    big = Image.open(lfw_dir / "images/Aaron_Eckhart/Aaron_Eckhart_0001.jpg").resize((400, 400))
    small = np.asarray(Image.open(lfw_dir / "images/Abba_Eban/Abba_Eban_0001.jpg"))
    canvas = np.full((500, 900, 3), 128, np.uint8)
    canvas[50:450, 0:400] = np.asarray(big)  # larger, at the left edge
    canvas[125:375, 325:575] = small  # smaller, in the middle
    model = facenet.load_model(model_file, backend="torch")
    centre_x = {
        which: sum(facenet.verify(canvas, small, model=model, which=which).boxes[0][::2]) / 2
        for which in ("largest", "central")
    }
    assert centre_x["largest"] < 400 and 325 < centre_x["central"] < 575


def test_one_model_id_everywhere(model_file, tmp_path, monkeypatch, capsys):
    """`facenet models` printed a hash of weights and thresholds while verify, identify and galleries named
    the model arch-size-weights: now one id (ModelInfo.id) everywhere."""
    import shutil

    from facenet.cli import main
    from facenet.embedder import load_embedder
    from facenet.models.modelfile import read_model_info
    from facenet.paths import models_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    models_dir().mkdir(parents=True)
    shutil.copy(model_file, models_dir() / "mine.safetensors")
    info = read_model_info(model_file)
    assert load_embedder(model_file, detect=False, backend="torch").name == info.id
    assert main(["models"]) == 0
    assert f", id {info.id};" in capsys.readouterr().out


def test_the_several_faces_hint_names_an_option_of_every_command_that_prints_it():
    """verify, identify, enrol and cluster once said `--all-faces`, which only embed has."""
    import re

    from facenet.batch import FaceRow, several_faces_note
    from facenet.cli import build_parser

    note = several_faces_note(FaceRow("group.jpg", 0, 3, (0, 0, 10, 10), 0.9, None), "largest")
    options = re.findall(r"--[a-z-]+", note)
    assert options
    parser = build_parser()
    for command in (
        ["embed", "a.jpg", "--out", "e.npy"],
        ["verify", "a.jpg", "b.jpg"],
        ["identify", "a.jpg"],
        ["gallery", "enroll", "Ann", "a.jpg"],
        ["cluster", "a.jpg", "--out", "groups"],
    ):
        for option in options:
            parser.parse_args([*command, option, "central"])  # an unknown option exits 2


def test_the_distribution_name_is_ours_and_every_install_hint_names_it():
    """`facenet` on PyPI is another project (1.0.5): `pip install 'facenet[parquet]'` installed someone else's code."""
    import re
    import tomllib
    from pathlib import Path

    from facenet.cli import DISTRIBUTION

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] != "facenet" and DISTRIBUTION == project["name"]  # --version reads this one's metadata
    texts = [root / "README.md", *(root / "docs").glob("*.md"), *(root / "src").rglob("*.py")]
    hints = [
        hint for path in texts for hint in re.findall(r"pip install '(facenet[\w.-]*)\[([\w,]+)\]'", path.read_text())
    ]
    assert hints
    for name, extras in hints:
        assert name == project["name"] and set(extras.split(",")) <= set(project["optional-dependencies"])
