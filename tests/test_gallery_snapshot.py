"""Index snapshots (facenet.gallery.snapshot) and index builds off the request path (facenet.gallery.index)."""

import logging
import os
import shutil
import stat
import time

import numpy as np
import pytest

from facenet.gallery import Gallery, Record, snapshot
from facenet.gallery import index as index_mod
from facenet.gallery.index import FaceIndex
from facenet.gallery.snapshot import snapshot_path

D = 32


def unit(rng, n, d=D):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noisy(rng, v, scale=0.05):
    x = v + scale * rng.standard_normal(v.shape).astype(np.float32) / np.sqrt(v.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def small_snapshots(monkeypatch):
    monkeypatch.setattr(snapshot, "MIN_FACES", 0)  # automatic snapshots at any size


def fill(path, rng, people=60, faces=5, index="auto", policy="nearest"):
    vectors = unit(rng, people * faces)
    with Gallery.open(path, "m", D, index=index, policy=policy) as g:
        g.enroll_many([Record(f"p{i}", vectors[i * faces : (i + 1) * faces], [""] * faces) for i in range(people)])
    return vectors


def opened(path, index="auto"):
    return Gallery.open(path, "m", D, create=False, index=index)


def names(results):
    return [[(m.name, round(m.distance, 5)) for m in r] for r in results]


def snapshot_written(path, index="auto"):
    """Open, load every face (rebuild), and let the background writer finish."""
    with opened(path, index) as g:
        g.sync()
        g._writer.wait()
    assert snapshot_path(path).exists()


class NoRebuild:
    """Fails a test when the gallery rebuilds its index from every face."""

    def __init__(self, monkeypatch):
        self.calls = 0
        rebuild = FaceIndex.rebuild

        def counted(index, ids, vectors):
            self.calls += 1
            return rebuild(index, ids, vectors)

        monkeypatch.setattr(FaceIndex, "rebuild", counted)


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf"])
@pytest.mark.parametrize("policy", ["nearest", "template"])
def test_snapshot_round_trip_gives_identical_answers(tmp_path, monkeypatch, caplog, kind, policy):
    monkeypatch.setattr(index_mod, "IVF_MIN_TRAIN", 100)
    rng = np.random.default_rng(0)
    path = tmp_path / "g.db"
    vectors = fill(path, rng, people=80, index=kind, policy=policy)
    queries = np.concatenate([noisy(rng, vectors[::7]), unit(rng, 10)])
    with opened(path, kind) as g:
        before = g.identify(queries, k=3)
        g._writer.wait()
    snap = snapshot_path(path)
    assert snap.exists() and stat.S_IMODE(snap.stat().st_mode) == 0o600
    rebuilds = NoRebuild(monkeypatch)
    with caplog.at_level(logging.INFO, logger="facenet.gallery.snapshot"), opened(path, kind) as g:
        after = g.identify(queries, k=3)
        assert g._index.kind == kind
    assert rebuilds.calls == 0 and "loaded from snapshot" in caplog.text
    assert names(after) == names(before)


def test_catch_up_applies_enrolments_and_removals_made_after_the_snapshot(tmp_path, monkeypatch, caplog):
    rng = np.random.default_rng(1)
    path = tmp_path / "g.db"
    vectors = fill(path, rng)
    snapshot_written(path)
    seq = snapshot.read_header(snapshot_path(path))["seq"]
    newcomer = unit(rng, 3)
    with opened(path) as g:  # another process, no index of its own
        g.enroll("newcomer", newcomer)
        g.store.remove("p3")  # as a process that died before deleting the snapshot would leave it
    assert snapshot_path(path).exists()
    rebuilds = NoRebuild(monkeypatch)
    with caplog.at_level(logging.INFO, logger="facenet.gallery.snapshot"), opened(path) as g:
        (found,), (gone,) = g.identify(newcomer[:1], k=1), g.identify(vectors[15:16], k=1)
        assert f"loaded from snapshot {snapshot_path(path)} (feed position {seq})" in caplog.text
        assert g._seq == seq + 2
        assert found[0].name == "newcomer" and found[0].distance < 1e-5
        assert gone[0].name != "p3"
        assert all(p != "p3" for p in g._names.values() if p in {m.name for m in gone})
        assert len(g._face_person) == 60 * 5 - 5 + 3
    assert rebuilds.calls == 0


def damage(path, how):
    snap = snapshot_path(path)
    data = bytearray(snap.read_bytes())
    if how == "truncated":
        snap.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flipped":
        data[len(data) // 2] ^= 0xFF
        snap.write_bytes(bytes(data))
    elif how == "garbage":
        snap.write_bytes(b"not a snapshot at all")


@pytest.mark.parametrize("how", ["truncated", "flipped", "garbage"])
def test_damaged_snapshot_is_rebuilt_with_a_log_line(tmp_path, caplog, how):
    rng = np.random.default_rng(2)
    path = tmp_path / "g.db"
    vectors = fill(path, rng)
    snapshot_written(path)
    damage(path, how)
    with caplog.at_level(logging.WARNING, logger="facenet.gallery.snapshot"), opened(path) as g:
        (m,) = g.identify(vectors[42:43], k=1)
        g._writer.wait()
    assert "not used" in caplog.text and "rebuilding the index from the store" in caplog.text
    assert m[0].name == "p8" and m[0].distance < 1e-5
    snapshot.read(snapshot_path(path))  # written again, whole


def test_snapshot_of_another_gallery_is_rejected(tmp_path, caplog):
    rng = np.random.default_rng(3)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    fill(a, rng)
    vectors_b = fill(b, rng)  # same shape, same ids, other faces
    snapshot_written(a)
    shutil.copy(snapshot_path(a), snapshot_path(b))
    with caplog.at_level(logging.WARNING, logger="facenet.gallery.snapshot"), opened(b) as g:
        (m,) = g.identify(vectors_b[:1], k=1)
    assert "another gallery" in caplog.text
    assert m[0].name == "p0" and m[0].distance < 1e-5


def test_export_gets_a_gallery_id_of_its_own(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "g.db"
    fill(path, rng, people=3)
    with opened(path) as g:
        g.export(tmp_path / "copy.db")
        mine = g.store.gallery_id()
    with opened(tmp_path / "copy.db") as c:
        assert c.store.gallery_id() != mine and len(c) == 15


def test_snapshot_ahead_of_the_store_is_rejected(tmp_path, caplog):
    """A gallery restored from a backup: the snapshot is newer than the store (or, once the store has moved
    on to the same feed position with other faces, disagrees with it): rebuilt, never a wrong answer."""
    rng = np.random.default_rng(5)
    path = tmp_path / "g.db"
    fill(path, rng)
    backup = tmp_path / "backup.db"
    with opened(path) as g:
        g.export(backup)  # a compact copy at feed position 1 ...
    with opened(backup) as g:
        g.store.gallery_id()
    first = unit(rng, 2)
    with opened(path) as g:
        g.enroll("later", first)
    snapshot_written(path)
    # ... restored under the gallery's identity (as a file-level backup would be)
    with opened(path) as g:
        gid = g.store.gallery_id()
    shutil.copy(backup, tmp_path / "restored.db")
    import sqlite3

    conn = sqlite3.connect(tmp_path / "restored.db")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'gallery_id'", (gid,))
    conn.commit()
    conn.close()
    os.replace(tmp_path / "restored.db", path)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"g.db{suffix}").unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING, logger="facenet.gallery.snapshot"), opened(path) as g:
        assert len(g.identify(first[:1], k=1)[0]) == 1
        assert g.identify(first[:1], k=1)[0][0].name != "later"
    assert "ahead of the store" in caplog.text
    # the same position again, reached with other faces: the snapshot (rewritten above, then replaced by an
    # old one) must disagree with the store
    snapshot_written(path)
    with opened(path) as g:
        g.enroll("other", unit(rng, 2))
    caplog.clear()
    old = snapshot.read(snapshot_path(path))
    old.header["seq"] += 1  # claims the new position without the new faces
    snapshot.write(snapshot_path(path), old)
    with caplog.at_level(logging.WARNING, logger="facenet.gallery.snapshot"), opened(path) as g:
        assert g.identify(unit(rng, 1), k=1)
    assert "stale or foreign" in caplog.text


def test_stale_vectors_are_caught_by_the_sample(tmp_path, caplog):
    rng = np.random.default_rng(6)
    path = tmp_path / "g.db"
    vectors = fill(path, rng)
    snapshot_written(path)
    snap = snapshot.read(snapshot_path(path))
    fake = FaceIndex(D, "auto")
    fake.rebuild(snap.ids, unit(rng, len(snap.ids)))  # same ids, other vectors
    kind, data, removed = fake.serialize()
    snap.index, snap.removed = data, removed
    snapshot.write(snapshot_path(path), snap)
    with caplog.at_level(logging.WARNING, logger="facenet.gallery.snapshot"), opened(path) as g:
        (m,) = g.identify(vectors[7:8], k=1)
    assert "vectors differ" in caplog.text and m[0].name == "p1" and m[0].distance < 1e-5


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_removed_person_leaves_the_snapshot_file(tmp_path, kind):
    rng = np.random.default_rng(7)
    path = tmp_path / "g.db"
    vectors = fill(path, rng, index=kind)
    gone = vectors[10:15]
    with opened(path, kind) as g:
        g.sync()
        g._writer.wait()
        assert gone[0].tobytes() in snapshot_path(path).read_bytes()
        g.remove("p2")
        assert not snapshot_path(path).exists()  # deleted before remove returned
        g.sync()  # the removal reaches the index: a new snapshot is written in the background
        g._writer.wait()
        data = snapshot_path(path).read_bytes()
        assert all(v.tobytes() not in data for v in gone)
        assert vectors[20].tobytes() in data
    with opened(path, kind) as other:  # a process without an index deletes it too
        other.sync()
        other._writer.wait()
        assert snapshot_path(path).exists()
    with opened(path, kind) as cli:  # as `facenet gallery remove`: never loads the index
        cli.remove("p5")
        assert not snapshot_path(path).exists()


def test_another_process_removal_deletes_the_snapshot_it_sees(tmp_path):
    rng = np.random.default_rng(8)
    path = tmp_path / "g.db"
    vectors = fill(path, rng)
    with opened(path) as a, opened(path) as b:
        a.sync()
        a._writer.wait()
        b.store.remove("p1")  # a writer that never deletes the snapshot itself
        a.sync()  # a sees it in the feed: deletes, then writes one without p1
        a._writer.wait()
        header = snapshot.read_header(snapshot_path(path))
        assert header["seq"] == a._seq
        assert vectors[5].tobytes() not in snapshot_path(path).read_bytes()


def test_postgres_snapshots_live_in_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    p = snapshot_path("postgresql://me@db.example/faces")
    assert p.parent == tmp_path / "facenet" / "gallery-index" and p.suffix == ".index" and "faces" not in p.name
    assert snapshot_path(tmp_path / "g.db") == tmp_path / "g.db.index"


def test_enrolment_crossing_the_hnsw_switch_does_not_wait_for_the_build(tmp_path, monkeypatch, held_hnsw_build):
    """The enrolment (and the searches after it) that takes the gallery past AUTO_THRESHOLD returns while
    the HNSW index is still being built; answers stay right meanwhile and after the swap."""
    monkeypatch.setattr(index_mod, "AUTO_THRESHOLD", 200)
    started, release = held_hnsw_build
    rng = np.random.default_rng(9)
    path = tmp_path / "g.db"
    vectors = fill(path, rng, people=39)  # 195 faces: exact
    with opened(path) as g:
        g.sync()
        assert g._index.kind == "exact"
        times = []
        for i in range(3):
            t = time.perf_counter()
            g.enroll(f"new{i}", unit(rng, 5))
            g.sync()  # the sync that takes the index past the threshold is the second one
            times.append(time.perf_counter() - t)
        assert started.wait(10) and g._index.building and g._index.kind == "exact"
        assert max(times) < 5  # the build is held: returning at all proves nobody waited for it
        (m,) = g.identify(vectors[100:101], k=1)
        assert m[0].name == "p20" and m[0].distance < 1e-5
        g.remove("p21")
        g.enroll("late", vectors[105:110] * 1.0)  # same faces as p21 had, under another name
        (m,) = g.identify(vectors[105:106], k=1)
        assert m[0].name == "late"
        release.set()
        assert g._index.wait_for_build(30) and g._index.kind == "hnsw"
        (m,) = g.identify(vectors[105:106], k=1)
        assert m[0].name == "late" and len(g._index) == 195 + 15 - 5 + 5
        g._writer.wait()
    assert snapshot.read_header(snapshot_path(path))["kind"] == "hnsw"  # written after the swap


def _enrol(g, rng, name):
    t = time.perf_counter()
    g.enroll(name, unit(rng, 2))
    g.sync()
    return time.perf_counter() - t


def test_enrolment_costs_the_same_at_100_and_20000_people(tmp_path):
    """Interleaved, so that both sizes see the same load; after a warm-up (the bulk load's log is
    checkpointed by the first enrolments)."""
    rng = np.random.default_rng(10)
    small, large = tmp_path / "small.db", tmp_path / "large.db"
    fill(small, rng, people=100, faces=1)
    fill(large, rng, people=20_000, faces=1)
    with opened(small) as a, opened(large) as b:
        a.sync(), b.sync()
        a._writer.wait(), b._writer.wait()
        times = {"small": [], "large": []}
        for i in range(60):
            for key, g in (("small", a), ("large", b)):
                took = _enrol(g, rng, f"new{i}")
                if i >= 30:
                    times[key].append(took)
    t_small, t_large = (float(np.median(times[k])) for k in ("small", "large"))
    assert t_large < 2 * t_small + 0.005, (t_small, t_large)


def test_snapshot_command_writes_one_whatever_the_size(tmp_path, monkeypatch, capsys):
    from facenet.cli import main

    monkeypatch.setattr(snapshot, "MIN_FACES", 10_000)
    rng = np.random.default_rng(11)
    path = tmp_path / "g.db"
    fill(path, rng, people=4)
    with opened(path) as g:
        g.sync()
        g._writer.wait()
    assert not snapshot_path(path).exists()  # too small for an automatic one
    assert main(["gallery", "snapshot", "--gallery", str(path)]) == 0
    out = capsys.readouterr().out
    assert "wrote index snapshot" in out and "20 faces" in out
    assert snapshot.read_header(snapshot_path(path))["faces"] == 20


def test_a_process_without_automatic_snapshots_writes_a_usable_one(tmp_path, monkeypatch):
    rng = np.random.default_rng(12)
    path = tmp_path / "g.db"
    vectors = fill(path, rng)
    with opened(path) as g:
        g.snapshots = False  # e.g. a benchmark's rebuild: the id of the gallery was never read
        g.sync()
        g.write_snapshot()
    rebuilds = NoRebuild(monkeypatch)
    with opened(path) as g:
        (m,) = g.identify(vectors[:1], k=1)
    assert rebuilds.calls == 0 and m[0].name == "p0"


def test_person_is_looked_up_by_name(tmp_path):
    from facenet.errors import GalleryError

    rng = np.random.default_rng(13)
    path = tmp_path / "g.db"
    fill(path, rng, people=3)
    with opened(path) as g:
        assert g.person(" p1 ").faces == 5
        with pytest.raises(GalleryError, match="no person named 'nobody'"):
            g.person("nobody")


def test_snapshots_on_both_stores(gallery_location, tmp_path, monkeypatch, caplog):
    """PostgreSQL too: the snapshot lives in the cache folder; catch-up and removal as for a file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    rng = np.random.default_rng(14)
    vectors = fill(gallery_location, rng)
    snapshot_written(gallery_location)
    with opened(gallery_location) as g:
        g.enroll("late", unit(rng, 2))
    rebuilds = NoRebuild(monkeypatch)
    with caplog.at_level(logging.INFO, logger="facenet.gallery.snapshot"), opened(gallery_location) as g:
        (m,) = g.identify(vectors[12:13], k=1)
        assert m[0].name == "p2" and len(g._face_person) == 302
        g.remove("p2")
        assert not snapshot_path(gallery_location).exists()
    assert rebuilds.calls == 0 and "loaded from snapshot" in caplog.text


def test_a_gallery_older_than_gallery_ids_gets_one(tmp_path):
    import sqlite3

    rng = np.random.default_rng(15)
    path = tmp_path / "g.db"
    fill(path, rng, people=2)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM meta WHERE key = 'gallery_id'")
    conn.commit()
    conn.close()
    with opened(path) as g:
        first = g.store.gallery_id()
        assert first and g.store.gallery_id() == first
