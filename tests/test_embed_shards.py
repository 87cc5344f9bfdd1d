"""`facenet embed --out DIR/` (issue 25, item 1): Parquet shards and a manifest; a re-run goes on where a run
stopped, a SIGKILLed run loses at most the shard in progress, every photo ends up in exactly one shard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facenet.cli import main
from facenet.data.synthetic import SyntheticFaces

pq = pytest.importorskip("pyarrow.parquet")

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """60 small synthetic faces (inputs for --no-detect) and a file that is not a photo."""
    folder = tmp_path_factory.mktemp("photos")
    faces = SyntheticFaces(6, seed=3, size=64)
    for i in range(60):
        Image.fromarray(faces.render(i % 6, i)).save(folder / f"p{i:03d}.png")
    (folder / "broken.png").write_text("not a photo")
    return folder


def _embed(out, photos, model, *extra):
    args = ["embed", str(photos), "--out", f"{out}/", "--model", str(model), "--no-detect", "--backend", "torch"]
    return main([*args, "--workers", "0", *extra])


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _check_exactly_once(out: Path, photos: Path) -> None:
    """Every photo in exactly one listed shard; its rows there; shards on disk = shards listed."""
    from facenet.shards import read_shards

    manifest = _manifest(out)
    listed = [p for e in manifest["shards"] for p in e["photos"]]
    expected = sorted(str(p.resolve()) for p in photos.iterdir())
    assert sorted(listed) == expected  # each photo once
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(e["file"] for e in manifest["shards"])
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    rows = read_shards(out)
    skipped = {s.path for s in rows.skipped}
    assert skipped == {str((photos / "broken.png").resolve())}
    assert sorted(rows.paths) == sorted(set(expected) - skipped)  # one face per photo, each once
    for entry in manifest["shards"]:
        assert pq.ParquetFile(out / entry["file"]).metadata.num_rows == entry["rows"]
    np.testing.assert_allclose(np.linalg.norm(rows.embeddings, axis=1), 1, atol=1e-5)


def test_a_rerun_does_no_work_and_gives_the_same_rows(tmp_path, model_file, photos, capsys):
    from facenet.shards import read_shards

    out = tmp_path / "shards"
    assert _embed(out, photos, model_file, "--shard-size", "16") == 0
    manifest = _manifest(out)
    assert [e["file"] for e in manifest["shards"]] == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [len(e["photos"]) for e in manifest["shards"]] == [16, 16, 16, 13]
    assert manifest["identity"]["model"].startswith("nns-128d-") and manifest["identity"]["detector"] is None
    first = read_shards(out)
    table = pq.read_table(out / "part-00000.parquet")
    assert table.column_names == ["image", "face", "faces", "x1", "y1", "x2", "y2", "score", "notes", "embedding"]
    kind = table.schema.field("embedding").type
    assert kind.list_size == 128 and str(kind.value_type) == "float"
    assert (out.stat().st_mode & 0o777) == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in out.iterdir())
    _check_exactly_once(out, photos)
    capsys.readouterr()

    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert _embed(out, photos, model_file, "--shard-size", "16") == 0
    said = capsys.readouterr().out
    assert "61 of the 61 photo(s) already done" in said and "wrote 0 embeddings" in said
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == before
    again = read_shards(out)
    assert again.paths == first.paths
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    # the same rows as a single-file run of the same photos
    assert main(["embed", str(photos), "--out", str(tmp_path / "one.npy"), "--model", str(model_file), "--no-detect",
                 "--backend", "torch", "--workers", "0"]) == 0  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), first.embeddings, atol=1e-6)
    assert json.loads((out / "skipped.json").read_text())["photos"] == 61


def _kill_after_new_shards(cmd, out: Path, env, more: int) -> int:
    """Start ``cmd``, SIGKILL it once ``more`` shards beyond those listed now exist; its exit status."""
    listed = len(_manifest(out)["shards"]) if (out / "manifest.json").exists() else 0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("part-*.parquet"))) >= listed + more:
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigkill_then_rerun_embeds_every_photo_exactly_once(tmp_path, model_file, photos):
    out = tmp_path / "shards"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from facenet.cli import main; sys.exit(main(sys.argv[1:]))",
        "embed",
        str(photos),
        "--out",
        f"{out}/",
        "--model",
        str(model_file),
        "--no-detect",
        "--backend",
        "torch",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--shard-size",
        "3",
    ]
    for more in (1, 2):  # killed twice, each time once new shards exist (at whatever step it is in)
        assert _kill_after_new_shards(cmd, out, env, more) == -signal.SIGKILL
    done = sum(len(e["photos"]) for e in _manifest(out)["shards"]) if (out / "manifest.json").exists() else 0
    assert done < 61, "the run finished before it was killed: nothing was tested"
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    _check_exactly_once(out, photos)


def test_other_model_or_options_are_refused(tmp_path, model_file, photos, capsys):
    from facenet.models import create_model
    from facenet.models.modelfile import save_model

    out = tmp_path / "shards"
    few = tmp_path / "few"
    few.mkdir()
    for name in ("p000.png", "p001.png"):
        (few / name).write_bytes((photos / name).read_bytes())
    assert _embed(out, few, model_file) == 0
    capsys.readouterr()
    assert _embed(out, few, model_file, "--all-faces") == 2
    err = capsys.readouterr().err
    assert "holds embeddings made with other settings (all_faces: False there, True now)" in err
    assert "same --model and options, or write into another directory" in err
    other = tmp_path / "other.safetensors"
    save_model(create_model("nns", input_size=48), other)
    assert _embed(out, few, other) == 2
    assert "model: 'nns-128d-" in capsys.readouterr().err
    assert len(_manifest(out)["shards"]) == 1  # nothing was written
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    assert _embed(tmp_path / "notes", few, model_file) == 2
    assert "not empty and holds no manifest.json" in capsys.readouterr().err
    assert main(["embed", str(few), "--out", str(tmp_path / "e.npy"), "--shard-size", "2", "--no-detect"]) == 2
    assert "--shard-size is for a shard directory" in capsys.readouterr().err


def test_damaged_and_unlisted_shards_are_reconciled(tmp_path, model_file, photos, capsys):
    """Documented policy: a listed shard that does not read back is deleted and its photos redone; a shard
    the manifest missed is adopted when whole and of the same run, else deleted; temporary files go."""
    out = tmp_path / "shards"
    assert _embed(out, photos, model_file, "--shard-size", "10") == 0
    manifest = _manifest(out)
    assert len(manifest["shards"]) == 7
    # the run died between a shard's rename and the manifest's: the last shard is not listed
    manifest["shards"] = manifest["shards"][:-1]
    (out / "manifest.json").write_text(json.dumps(manifest))
    # a half-written listed shard, a foreign file named like a shard, a temporary file left by a killed write
    damaged = out / "part-00002.parquet"
    damaged.write_bytes(damaged.read_bytes()[:200])
    (out / "part-00042.parquet").write_bytes(b"PAR1 not really")
    (out / ".part-00007.parquet.abc.tmp").write_bytes(b"half")
    capsys.readouterr()
    assert _embed(out, photos, model_file, "--shard-size", "10") == 0
    said, err = capsys.readouterr()
    assert "part-00002.parquet: unreadable" in err and "its 10 photo(s) are embedded again" in err
    assert "part-00042.parquet: not in manifest.json and unreadable" in err
    assert "51 of the 61 photo(s) already done" in said  # the unlisted whole shard was adopted, not redone
    assert "wrote 10 embeddings" in said
    files = [e["file"] for e in _manifest(out)["shards"]]
    assert files == [f"part-{i:05d}.parquet" for i in (0, 1, 3, 4, 5, 6, 7)]
    _check_exactly_once(out, photos)


def test_cluster_reads_a_shard_directory(tmp_path, model_file, photos):
    """`facenet cluster --embeddings DIR/` reads what `facenet embed --out DIR/` wrote: the same rows, each embedded
    photo once."""
    from facenet.commands.cluster import read_shards as read_for_cluster
    from facenet.shards import read_shards

    out = tmp_path / "shards"
    assert _embed(out, photos, model_file, "--shard-size", "25") == 0
    paths, emb = read_for_cluster([str(out)])
    table = read_shards(out)
    assert paths == [str(p) for p in table.paths] and np.array_equal(emb, table.embeddings) and len(set(paths)) == 60
