"""Crash safety and concurrency with real child processes (SIGKILL, WAL readers)."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from facenet.gallery import Gallery

D = 128
FACES = 20

WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from facenet.gallery import Gallery

    path, prefix, people, faces = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = np.random.default_rng(abs(hash(prefix)) % 2**32)
    g = Gallery.open(path, "model-x", 128)
    for i in range(people):
        name = f"{prefix}_{i}"
        emb = rng.standard_normal((faces, 128)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        g.enroll(name, emb, [f"{name}_{j}.jpg" for j in range(faces)])
        print(name, flush=True)
""")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def start_writer(path, prefix, people, faces=FACES):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), prefix, str(people), str(faces)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_sigkill_during_enrolment_loses_no_committed_person(tmp_path):
    path = tmp_path / "g.db"
    rng = np.random.default_rng(0)
    committed: set[str] = set()
    for round_ in range(4):
        child = start_writer(path, f"r{round_}", 10_000)
        for _ in range(int(rng.integers(15, 40))):
            committed.add(child.stdout.readline().strip())
        time.sleep(float(rng.uniform(0, 0.05)))  # land anywhere inside the next transactions
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        committed.update(line for line in out.split())  # printed before the kill, so committed too
        assert child.returncode == -signal.SIGKILL

        with Gallery.open(path, "model-x", D) as g:  # opens after every crash
            people = {p.name: p.faces for p in g.people()}
            assert committed <= set(people)
            assert all(n == FACES for n in people.values())  # no half-written enrolment
        conn = sqlite3.connect(path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert (
            conn.execute(
                "SELECT count(*) FROM faces f LEFT JOIN embeddings e ON e.face_id = f.id "
                "WHERE e.vector IS NULL OR length(e.vector) != ?",
                (4 * D,),
            ).fetchone()[0]
            == 0
        )
        assert (
            conn.execute(
                "SELECT count(*) FROM embeddings e LEFT JOIN faces f ON f.id = e.face_id WHERE f.id IS NULL"
            ).fetchone()[0]
            == 0
        )
        conn.close()
    assert len(committed) * FACES >= 1000


def test_reader_works_while_another_process_enrols(tmp_path):
    path = tmp_path / "g.db"
    with Gallery.open(path, "model-x", D) as reader:
        child = start_writer(path, "w", 30, faces=5)
        seen, counts = set(), []
        query = np.eye(D, dtype=np.float32)[:2]
        while child.poll() is None:
            counts.append(len(reader.people()))
            for res in reader.identify(query, k=3):
                seen.update(m.name for m in res)
        out, err = child.communicate()
        assert child.returncode == 0, err
        assert counts == sorted(counts)  # committed enrolments only ever appear, never vanish
        names = out.split()
        assert len(names) == 30 and {p.name for p in reader.people()} == set(names)
        assert seen <= set(names)
        # the reader's index catches up with the other process's commits on its next query
        assert {m.name for m in reader.identify(query, k=30)[0]} == set(names)
        assert len(reader._index) == 30 * 5 and len(reader) == 150
