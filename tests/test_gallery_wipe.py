"""SQLite removal beside a reader that holds an old snapshot: the removal does not wait for the reader, and
the person's bytes leave the database file and its write-ahead log once the read ends (issue 26, item 3)."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from facenet.gallery import Gallery

D = 128
NAME = "Zebediah Secretname"

# A reader in another process: one read transaction (one snapshot) held for HOLD seconds, then ended; its
# connection stays open until the test closes its stdin, so no "last connection closes" checkpoint helps.
READER = textwrap.dedent("""
    import sqlite3, sys, time
    path, hold, name = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    seen = conn.execute("SELECT count(*) FROM people WHERE name = ?", (name,)).fetchone()[0]
    print("reading", seen, flush=True)
    time.sleep(hold)
    still = conn.execute("SELECT count(*) FROM people WHERE name = ?", (name,)).fetchone()[0]
    conn.execute("COMMIT")
    print("ended", still, flush=True)
    sys.stdin.read()
""")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def unit(rng, n):
    x = rng.standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def enrolled_gallery(path, rng):
    """A gallery of many people with the secret one in the middle; returns it and the secret's stored bytes."""
    g = Gallery.open(path, "m1", D)
    for i in range(60):
        g.enroll(f"person {i}", unit(rng, 3), [f"p{i}_{j}.jpg" for j in range(3)])
        if i == 30:
            g.enroll(NAME, unit(rng, 4), [f"{NAME}/{j}.jpg" for j in range(4)])
    blobs = [
        bytes(r)
        for (r,) in g.store._conn.execute(
            "SELECT e.vector FROM embeddings e JOIN faces f ON f.id = e.face_id JOIN people p ON p.id = f.person_id "
            "WHERE p.name = ?",
            (NAME,),
        )
    ]
    assert len(blobs) == 4
    return g, blobs


def start_reader(path, hold):
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), str(hold), NAME],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout.readline().split() == ["reading", "1"]
    return reader


def traces(directory, blobs):
    """What of the person is left in the database file, its log and its shared-memory index, by a byte scan:
    the name, or any 32 consecutive bytes of one of their embeddings."""
    found = []
    for f in sorted(directory.glob("g.db*")):
        raw = f.read_bytes()
        if NAME.encode() in raw or b"Zebediah" in raw:
            found.append(f"{f.name}: the name")
        if any(blob[i : i + 32] in raw for blob in blobs for i in range(0, len(blob), 32)):
            found.append(f"{f.name}: embedding bytes")
    return found


@pytest.mark.slow
def test_removal_beside_a_35s_snapshot_returns_at_once_and_the_next_command_wipes(tmp_path, rng):
    # the real 35 s of the issue: longer than the 30 s a writer waits for a lock, which the removal once spent
    path = tmp_path / "g.db"
    g, blobs = enrolled_gallery(path, rng)
    with g:
        reader = start_reader(path, hold=35)
        try:
            started = time.monotonic()
            assert g.remove(NAME) == 4
            took = time.monotonic() - started
            print(f"removal beside a 35 s snapshot: {took:.3f} s")  # RESULTS.md quotes it (pytest -s)
            assert took < 10
            assert reader.stdout.readline().split() == ["ended", "1"]  # its snapshot still held the person
            assert [p.name for p in g.people()][:2] == ["person 0", "person 1"]  # one more gallery command
            assert traces(tmp_path, blobs) == []
            assert NAME not in {p.name for p in g.people()} and len(g) == 180
        finally:
            reader.communicate("")


def test_the_store_finishes_the_wipe_by_itself_once_the_read_ends(tmp_path, rng):
    path = tmp_path / "g.db"
    g, blobs = enrolled_gallery(path, rng)
    with g:
        reader = start_reader(path, hold=6)
        try:
            started = time.monotonic()
            g.remove(NAME)
            assert time.monotonic() - started < 3  # not the 6 s the reader holds its snapshot
            assert traces(tmp_path, blobs)  # the reader's snapshot still needs the old pages
            assert reader.stdout.readline().split() == ["ended", "1"]
            deadline = time.monotonic() + 10  # no gallery call from here on: the store's own retries wipe
            while traces(tmp_path, blobs) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert traces(tmp_path, blobs) == []
        finally:
            reader.communicate("")


def test_another_process_finishes_a_wipe_left_pending(tmp_path, rng):
    """The removing process closes while the reader still reads; the next one to open the gallery wipes."""
    path = tmp_path / "g.db"
    g, blobs = enrolled_gallery(path, rng)
    reader = start_reader(path, hold=4)
    try:
        with g:
            g.remove(NAME)
        assert reader.stdout.readline().split() == ["ended", "1"]
        assert traces(tmp_path, blobs)  # nobody has wiped since the read ended
        with Gallery.open(path, "m1", D) as again:
            assert len(again.people()) == 60
        assert traces(tmp_path, blobs) == []
    finally:
        reader.communicate("")
