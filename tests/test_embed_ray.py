"""`facenet embed --out DIR/ --ray` (issue 25, item 2): on a real local Ray (``ray.init(num_cpus=2)``, two actors),
the same rows and embeddings as the one-process run, in the same shard directory format; either engine resumes
the other's directory; photos may be fsspec URLs."""

import json
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray cannot be installed here: pip install 'facenet-triplet[ray]'")
pytest.importorskip("ray.data", reason="Ray Data cannot be installed here: pip install 'facenet-triplet[ray]'")
pq = pytest.importorskip("pyarrow.parquet")

from test_embed_shards import _check_exactly_once, _manifest, photos  # noqa: E402, F401 - the same 61 inputs

from facenet.cli import main  # noqa: E402
from facenet.shards import read_shards  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def local_ray():
    """A real Ray on this machine: 2 CPUs, so two one-core actors."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _embed(out, inputs, model, *extra) -> int:
    args = ["embed", *map(str, inputs), "--out", f"{out}/", "--model", str(model), "--backend", "torch"]
    return main([*args, "--shard-size", "16", *extra])


def _same_rows(a, b) -> None:
    assert a.paths == b.paths and a.model == b.model and a.identity == b.identity
    assert [(s.path, s.reason) for s in a.skipped] == [(s.path, s.reason) for s in b.skipped]
    np.testing.assert_array_equal(a.faces, b.faces)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_array_equal(np.isnan(a.scores), np.isnan(b.scores))
    assert a.notes == b.notes
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-5)


@pytest.mark.parametrize("detection", [["--no-detect"], ["--detector", "center"]], ids=["crops", "detector"])
def test_ray_gives_the_one_process_embeddings(tmp_path, model_file, photos, local_ray, detection, capsys):  # noqa: F811
    one, on_ray = tmp_path / "one", tmp_path / "ray"
    assert _embed(one, [photos], model_file, *detection, "--workers", "0") == 0
    assert _embed(on_ray, [photos], model_file, *detection, "--ray", "--ray-actors", "2", "--batch-size", "8") == 0
    assert "wrote 60 embeddings of 128 dims from 60 photo(s) on Ray" in capsys.readouterr().out
    _same_rows(read_shards(on_ray), read_shards(one))
    # the same directory: shards of the same photos, the same manifest, owner-only files
    assert _manifest(on_ray) == _manifest(one)
    assert (on_ray.stat().st_mode & 0o777) == 0o700
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in on_ray.iterdir())
    _check_exactly_once(on_ray, photos)
    # a re-run finds everything done and starts no actor
    assert _embed(on_ray, [photos], model_file, *detection, "--ray") == 0
    assert "61 of the 61 photo(s) were already done; embedded the other 0" in capsys.readouterr().out


def test_either_engine_resumes_the_other(tmp_path, model_file, photos, local_ray, capsys):  # noqa: F811
    out = tmp_path / "shards"
    first = sorted(photos.iterdir())[:20]
    assert _embed(out, first, model_file, "--no-detect", "--workers", "0") == 0  # one process, 20 photos
    capsys.readouterr()
    assert _embed(out, [photos], model_file, "--no-detect", "--ray", "--ray-actors", "2") == 0  # Ray, the rest
    assert "20 of the 61 photo(s) were already done; embedded the other 41 on Ray" in capsys.readouterr().out
    _check_exactly_once(out, photos)
    assert _embed(out, [photos], model_file, "--no-detect", "--workers", "0") == 0  # and one process again
    assert "61 of the 61 photo(s) already done" in capsys.readouterr().out
    assert _embed(out, [photos], model_file, "--ray", "--ray-actors", "2") == 2  # other options: refused
    assert "holds embeddings made with other settings" in capsys.readouterr().err


def test_photos_as_fsspec_urls(tmp_path, model_file, photos, local_ray):  # noqa: F811
    """file:// URLs, read by the actors through fsspec, give the rows of the same photos read as paths."""
    from facenet.ray_embed import embed_on_ray

    few = sorted(photos.glob("p00*.png"))
    urls = [p.resolve().as_uri() for p in few] + [(photos / "missing.png").resolve().as_uri()]
    done = embed_on_ray(urls, tmp_path / "urls", model_file, actors=2, detect=False, backend="torch", progress=False)
    assert (done.run.photos, done.run.embedded_photos, done.already_done) == (11, 10, 0)
    assert done.run.skipped[0].path == urls[-1] and "missing.png" not in done.run.skipped[0].reason
    assert _embed(tmp_path / "paths", few, model_file, "--no-detect", "--workers", "0") == 0
    by_url, by_path = read_shards(tmp_path / "urls"), read_shards(tmp_path / "paths")
    assert by_url.paths == urls[:-1]
    np.testing.assert_allclose(by_url.embeddings, by_path.embeddings, atol=1e-5)
    json.loads((tmp_path / "urls" / "manifest.json").read_text())  # a manifest like any other


def test_ray_needs_a_shard_directory_and_no_workers(tmp_path, model_file, photos, capsys):  # noqa: F811
    assert main(["embed", str(photos), "--out", str(tmp_path / "e.npy"), "--ray", "--no-detect"]) == 2
    assert "--ray writes a directory of shards" in capsys.readouterr().err
    assert _embed(tmp_path / "d", [photos], model_file, "--no-detect", "--ray", "--workers", "2") == 2
    assert "--workers is for a run in one process" in capsys.readouterr().err
    assert _embed(tmp_path / "d2", [photos], model_file, "--no-detect", "--ray-actors", "2") == 2
    assert "--ray-actors is for a run on Ray" in capsys.readouterr().err
    assert not Path(tmp_path / "d2").exists() or not any((tmp_path / "d2").glob("part-*"))
