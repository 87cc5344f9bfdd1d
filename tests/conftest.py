import os
from pathlib import Path

import pytest

SHARED_DATA = Path(
    os.environ.get("FACENET_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real LFW / ORL / detector weights); tests needing it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real face data not found at {SHARED_DATA} (set FACENET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lfw_dir(shared_data) -> Path:
    path = shared_data / "lfw"
    if not (path / "images").is_dir():
        pytest.skip(f"LFW not found at {path}")
    return path


@pytest.fixture(scope="session")
def model_file(tmp_path_factory) -> Path:
    """An untrained nns model file at 48 px: fast, and enough wherever the weights' quality does not matter."""
    import torch

    from facenet.models import create_model
    from facenet.models.modelfile import save_model

    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    torch.manual_seed(0)  # the same untrained weights in every run: tests that lean on what they see stay put
    save_model(create_model("nns", input_size=48), path)
    return path


@pytest.fixture(scope="session", autouse=True)
def private_data_home(tmp_path_factory):
    """Tests never read or write the user's own default model, gallery and caches (~/.local/share/facenet,
    ~/.cache/facenet)."""
    saved = {k: os.environ.get(k) for k in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "FACENET_MODEL")}
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data_home"))
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache_home"))
    os.environ.pop("FACENET_MODEL", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server on a free loopback port (skips with the reason when none can start)."""
    import pgcluster

    reason = pgcluster.missing_reason()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed: pip install 'psycopg[binary]'")
    with pgcluster.Cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster) -> str:
    """The URL of a new, empty database on the test cluster."""
    return pg_cluster.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def gallery_location(request, tmp_path) -> str:
    """Where a gallery lives, once per store: an SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "gallery.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(autouse=True)
def no_gallery_from_environment(monkeypatch):
    """A developer's $FACENET_GALLERY (perhaps a real PostgreSQL database) is never used by the tests."""
    monkeypatch.delenv("FACENET_GALLERY", raising=False)


@pytest.fixture
def held_hnsw_build(monkeypatch):
    """Holds every HNSW build of ``FaceIndex`` until the test sets ``release``; ``started`` is set when one
    begins. Yields (started, release); released at the end whatever the test did."""
    import threading

    from facenet.gallery.index import FaceIndex

    started, release = threading.Event(), threading.Event()
    make = FaceIndex._make

    def held_make(self, kind, ids, vectors):
        if kind == "hnsw":
            started.set()
            assert release.wait(60)
        return make(self, kind, ids, vectors)

    monkeypatch.setattr(FaceIndex, "_make", held_make)
    yield started, release
    release.set()
