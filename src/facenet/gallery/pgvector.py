"""``index="pgvector"``: nearest-face search inside PostgreSQL (pgvector's HNSW), so a replica holds no copy.

For PostgreSQL galleries larger than a replica's memory. Every other index kind loads every face into each
process (``facenet.gallery.index``); with pgvector a replica keeps nothing per face: its memory does not grow
with the gallery and it is ready as soon as it has connected (no load, no index build).

* **Schema.** A side table ``face_vectors (face_id, person_id, embedding vector(d))`` beside the store's
  tables, with an HNSW index (``vector_l2_ops``, m 16, ef_construction 64: pgvector's defaults). The first
  process that opens a gallery with ``index="pgvector"`` creates the extension (``CREATE EXTENSION vector``:
  pgvector must be installed on the server, and the role must be allowed to create it, or an administrator
  creates it first), the table, copies the faces already enrolled into it, and builds the index, all in one
  transaction that holds the change feed's row lock, as every writer takes it first: no enrolment can slip
  between the copy and the index (writes wait meanwhile: on a big gallery, enable it when writes can wait).
* **Kept in step by the store.** Once the table exists, every enrolment writes its faces' vectors into it in
  the same transaction as the faces (``PostgresStore._insert_faces``), whichever process enrols and whatever
  index kind that process uses; removal deletes them through the foreign key (``ON DELETE CASCADE``), in the
  removal's transaction. A query sees exactly the committed gallery, with nothing to catch up.
* **Identify** runs in one read-only snapshot: pgvector proposes the faces nearest each query (``ORDER BY
  embedding <-> q LIMIT n``, ``hnsw.ef_search``, iterative scans so LIMIT may exceed it), their owners are
  the candidate people, and each candidate is scored exactly from ALL their faces read from the store, by the
  gallery's policy, with the same stopping rule as the in-process search (``facenet.gallery.gallery``).
  Distances are squared L2, the project's unit (pgvector's ``<->`` is L2: squared here).
* The ``template`` policy (the default) searches one template per person (the L2-normalised mean of their
  faces) instead: a second side table ``person_templates`` with its own HNSW index, whose rows the writers
  recompute, in SQL (pgvector's ``avg`` and ``l2_normalize``), for the people an enrolment touches, in its
  transaction; a removed person's template goes with them (foreign key). Scores are then computed here from
  the faces, as for the in-process index (templates in float64, like ``facenet.gallery.policy.templates``).
"""

from __future__ import annotations

import numpy as np

from facenet.errors import GalleryError
from facenet.gallery.store import Match, copy_row

TABLE = "face_vectors"
INDEX = "face_vectors_hnsw"
TEMPLATES = "person_templates"
TEMPLATE_INDEX = "person_templates_hnsw"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
EF_SEARCH = 400  # bench_gallery_pgvector.py, 1M faces: recall@1 0.916 at p50 45 ms (200: 0.744, 27 ms; 1000: 0.988)
BUILD_MEMORY = "2GB"  # maintenance_work_mem while the index is built: a 1M-face graph fits in memory
BACKFILL_CHUNK = 100_000  # faces copied into the side table per round trip when pgvector is enabled
_ROUNDING = 1e-5  # pgvector (float4 arithmetic) and NumPy may round the same distance differently
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"


def vector_copy(ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> bytes:
    """(face id, person id, float32 vector) rows as a binary COPY stream for ``face_vectors``.

    pgvector's binary form is int16 dimensions, int16 unused, then big-endian float4 components."""
    n, d = vectors.shape
    row = copy_row([("dim", ">i2"), ("unused", ">i2"), ("vector", ">f4", (d,))])
    rows = np.zeros(n, row)
    rows["fields"], rows["id_len"], rows["person_len"], rows["vector_len"], rows["dim"] = 3, 8, 8, 4 + 4 * d, d
    rows["id"], rows["person"], rows["vector"] = ids, persons, vectors
    return _COPY_HEADER + rows.tobytes() + b"\xff\xff"


def write_vectors(raw_cursor, ids: np.ndarray, persons: np.ndarray, vectors: np.ndarray) -> None:
    """Insert faces' vectors into ``face_vectors`` (a psycopg cursor, inside the caller's transaction)."""
    if not len(ids):
        return
    with raw_cursor.copy(f"COPY {TABLE} (face_id, person_id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
        copy.write(vector_copy(ids, persons, vectors))


def refresh_templates(raw_cursor, people: list[int]) -> None:
    """Recompute the templates of ``people`` from their faces in ``face_vectors`` (inside the caller's transaction)."""
    raw_cursor.execute(f"DELETE FROM {TEMPLATES} WHERE person_id = ANY(%s)", (people,))
    raw_cursor.execute(
        f"INSERT INTO {TEMPLATES} (person_id, embedding) SELECT person_id, l2_normalize(avg(embedding)) "
        f"FROM {TABLE} WHERE person_id = ANY(%s) GROUP BY person_id",
        (people,),
    )


def _literal(query: np.ndarray) -> str:
    """A query as pgvector's text form; 9 significant digits give back the same float32."""
    return "[" + ",".join(f"{x:.9g}" for x in query.tolist()) + "]"


def enable(store) -> None:
    """Create the extension, the side table (filled with the faces already there) and its HNSW index, once."""
    import psycopg

    with store._write() as cur:
        raw = cur.raw
        template = store.policy == "template"
        if _ready(raw, template):
            return
        raw.execute("SELECT pg_advisory_xact_lock(%s)", (store.schema_lock,))  # one process enables it
        raw.execute("SELECT head FROM feed WHERE id = 1 FOR UPDATE")  # every writer waits until we commit
        try:
            with raw.connection.transaction():  # a savepoint: the error alone is reported, not an aborted transaction
                raw.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as exc:
            raise GalleryError(
                f"gallery {store.location}: the pgvector extension is missing or may not be created by this role "
                f"({str(exc).strip().splitlines()[0]}); install pgvector on the server and run "
                "`CREATE EXTENSION vector` as an administrator, or use another --index"
            ) from None
        raw.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (face_id BIGINT PRIMARY KEY REFERENCES faces(id) ON DELETE CASCADE, "
            f"person_id BIGINT NOT NULL, embedding vector({int(store.embedding_size)}) NOT NULL)"
        )
        low, high = raw.execute("SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM faces").fetchone()
        for start in range(low - 1, high, BACKFILL_CHUNK):
            ids, persons, vectors = store._fetch_faces(
                cur,
                f"f.id > ? AND f.id <= ? AND NOT EXISTS (SELECT 1 FROM {TABLE} v WHERE v.face_id = f.id)",
                (start, start + BACKFILL_CHUNK),
            )
            write_vectors(raw, ids, persons, vectors)
        if template:
            raw.execute(
                f"CREATE TABLE IF NOT EXISTS {TEMPLATES} (person_id BIGINT PRIMARY KEY REFERENCES people(id) "
                f"ON DELETE CASCADE, embedding vector({int(store.embedding_size)}) NOT NULL)"
            )
            raw.execute(
                f"INSERT INTO {TEMPLATES} (person_id, embedding) SELECT person_id, l2_normalize(avg(embedding)) "
                f"FROM {TABLE} v WHERE NOT EXISTS (SELECT 1 FROM {TEMPLATES} t WHERE t.person_id = v.person_id) "
                "GROUP BY person_id"
            )
        raw.execute(f"SET LOCAL maintenance_work_mem = '{BUILD_MEMORY}'")
        for table, index in ((TABLE, INDEX), (TEMPLATES, TEMPLATE_INDEX))[: 1 + template]:
            raw.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {table} USING hnsw (embedding vector_l2_ops) "
                f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
            )


def _ready(raw, template: bool) -> bool:
    """The side tables and their indexes exist (then nothing needs the locks)."""
    names = (TABLE, INDEX, TEMPLATES, TEMPLATE_INDEX)[: 4 if template else 2]
    found = raw.execute("SELECT " + ", ".join(f"to_regclass('{n}')" for n in names)).fetchone()
    return all(f is not None for f in found)


class PgvectorSearch:
    """What a ``Gallery`` opened with ``index="pgvector"`` uses instead of its in-process index: nothing per face."""

    def __init__(self, store, scorer, ef_search: int = EF_SEARCH):
        self.store, self.scorer, self.ef_search = store, scorer, ef_search
        self._counted: tuple[int, int] | None = None  # (feed head, comparisons) of the last count
        enable(store)

    def sync(self) -> int:
        """Nothing to load or catch up (the database searches what is committed): the feed's head."""
        return self.store.head()

    def comparisons(self) -> int:
        """Counted in the database (a scan: once per change of the feed, not per request)."""
        with self.store._read() as cur:
            head = cur.raw.execute("SELECT head FROM feed WHERE id = 1").fetchone()[0]
            if self._counted is None or self._counted[0] != head:
                people, faces = cur.raw.execute(
                    "SELECT (SELECT count(*) FROM people p WHERE EXISTS (SELECT 1 FROM faces f WHERE f.person_id = "
                    "p.id)), (SELECT count(*) FROM faces)"
                ).fetchone()
                self._counted = (head, self.scorer.comparisons(people, faces))
        return self._counted[1]

    def identify(self, queries: np.ndarray, k: int) -> list[list[Match]]:
        """See the module docstring; ``queries`` are already checked (n, d) float32 rows."""
        with self.store._read() as cur:
            raw = cur.raw
            if k < 1:
                return [[] for _ in queries]
            raw.execute("SET LOCAL hnsw.iterative_scan = strict_order")  # LIMIT beyond ef_search, still in order
            raw.execute(f"SET LOCAL hnsw.ef_search = {int(self.ef_search)}")
            faces: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # person -> (face ids, vectors), read once
            names: dict[int, str] = {}
            results = []
            table = TEMPLATES if self.scorer.uses_template else TABLE
            for query in queries:
                fetch = 4 * k
                literal = _literal(query)
                while True:
                    rows = raw.execute(
                        f"SELECT person_id, embedding <-> %s::vector AS d FROM {table} ORDER BY d LIMIT %s",
                        (literal, fetch),
                    ).fetchall()
                    candidates = list(dict.fromkeys(r[0] for r in rows))
                    self._read_people(raw, [p for p in candidates if p not in faces], faces, names)
                    result = self._score(query, candidates, faces, names)[:k]
                    farthest = float(rows[-1][1]) ** 2 if rows else np.inf
                    # fewer rows than asked: every face (or template) was seen, or pgvector's iterative scan reached
                    # hnsw.max_scan_tuples (20,000 by default): nothing more to fetch either way
                    if len(rows) < fetch or (len(result) == k and result[-1].distance <= farthest + _ROUNDING):
                        break
                    fetch *= 4
                results.append(result)
            return results

    def _read_people(self, raw, people: list[int], faces: dict, names: dict) -> None:
        """All faces (ids and float32 vectors, as the store decodes them) and the names of ``people``."""
        if not people:
            return
        names.update(raw.execute("SELECT id, name FROM people WHERE id = ANY(%s)", (people,)).fetchall())
        rows = raw.execute(
            "SELECT f.person_id, f.id, e.vector FROM faces f JOIN embeddings e ON e.face_id = f.id "
            "WHERE f.person_id = ANY(%s) ORDER BY f.person_id, f.id",
            (people,),
        ).fetchall()
        vectors = self.store.decode(b"".join(r[2] for r in rows), len(rows))
        owners = np.array([r[0] for r in rows], np.int64)
        ids = np.array([r[1] for r in rows], np.int64)
        for person in people:
            mine = owners == person
            faces[person] = (ids[mine], vectors[mine])

    def _score(self, query: np.ndarray, people: list[int], faces: dict, names: dict) -> list[Match]:
        from facenet.distances import squared_l2
        from facenet.gallery.policy import templates

        matches = []
        for person in people:
            ids, vectors = faces[person]
            if not len(ids):  # removed between the search and the read: cannot happen in one snapshot
                continue
            distances = squared_l2(query, vectors)
            template = (
                float(squared_l2(query, templates(vectors, np.zeros(len(ids), np.int64))[1])[0])
                if self.scorer.uses_template
                else None
            )
            matches.append(Match(names[person], self.scorer.score(distances, template), int(ids[np.argmin(distances)])))
        return sorted(matches, key=lambda m: m.distance)
