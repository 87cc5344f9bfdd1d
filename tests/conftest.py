import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("FACENET_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


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
