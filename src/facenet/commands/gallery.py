"""`facenet gallery enroll|list|remove|snapshot|export|import` and `facenet identify`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facenet.commands.core import (
    add_batch_options,
    add_model_options,
    add_which_option,
    all_faces,
    embedder_from_args,
)
from facenet.data.images import expand_image_paths
from facenet.errors import FaceNetError, GalleryError
from facenet.gallery.policy import CHOICES, DEFAULT_POLICY
from facenet.paths import GALLERY_ENV, gallery_location

EXIT_UNIDENTIFIED = 1
INDEXES = ("auto", "exact", "hnsw", "ivf", "pgvector")  # facenet.gallery.gallery.INDEXES, without loading FAISS
INDEX_HELP = (
    "how the gallery is searched: auto (default: exact up to 50,000 faces, HNSW above), exact, hnsw, ivf "
    "(FAISS, every face loaded into this process), or pgvector (PostgreSQL galleries only: HNSW inside the "
    "database with the pgvector extension, nothing loaded here)"
)


GALLERY_HELP = (
    "gallery: a file, or a PostgreSQL URL postgresql://user@host/db shared by several processes "
    f"(default: ${GALLERY_ENV}, else $XDG_DATA_HOME/facenet/gallery.db, i.e. "
    "~/.local/share/facenet/gallery.db)"
)


def _open(args: argparse.Namespace, *model, **options):
    from facenet.gallery import Gallery

    return Gallery.open(gallery_location(args.gallery), *model, **options)


def _open_existing(args: argparse.Namespace):
    return _open(args, create=False)


def _embed_collection(args: argparse.Namespace, embedder, command: str, covered: list | None = None):
    """Rows and embeddings of the photos ``args`` names, with the batch report (same policy as ``embed``);
    ``covered``, where given, gets each row's ``lower_face_covered``, chunk by chunk (no crop is kept)."""
    from facenet.batch import BatchReport, collect, embed_photos

    report = BatchReport(command)
    chunks = embed_photos(
        embedder,
        expand_image_paths(args.photos),
        report,
        all_faces=all_faces(args),
        batch_size=args.batch_size,
        workers=args.workers,
    )
    if covered is not None:
        chunks = _noting_covered(chunks, embedder, covered)
    rows, emb = collect(chunks, embedder.embedding_size, keep_crop=lambda crop: None)
    report_path = Path(args.skipped_report) if args.skipped_report else None
    if report_path:
        report.write(report_path)
    return rows, emb, report, report_path


def _noting_covered(chunks, embedder, covered: list):
    """``chunks`` as they come, each row's ``lower_face_covered`` appended to ``covered`` on the way."""
    from facenet.occluder import lower_face_covered

    for chunk, emb in chunks:
        covered.extend(lower_face_covered(embedder, [r.crop for r in chunk], emb))
        yield chunk, emb


def run_enroll(args: argparse.Namespace) -> int:
    from facenet.gallery import Record

    embedder = embedder_from_args(args)
    rows, emb, report, report_path = _embed_collection(args, embedder, "gallery enroll")
    status = report.finish(args.strict, report_path)
    if status:  # nothing usable, or --strict with photos skipped: enrol nothing
        print(f"facenet gallery enroll: nothing enrolled for {args.name}", file=sys.stderr)
        return status
    name = args.name.strip()
    with _open(args, embedder.name, embedder.embedding_size, storage=args.storage, policy=args.policy) as g:
        try:
            g.enroll_many([Record(args.name, emb, [Path(r.path).name for r in rows])], merge=args.add)
        except GalleryError:
            if args.add or not g.store.people(name):
                raise
            raise GalleryError(
                f"{name!r} is already enrolled in {g.location}; pass --add to add these photos to them"
            ) from None
        person = g.person(name)
    print(
        f"enrolled {len(rows)} photo(s) of {person.name} ({person.faces} in total) in {g.location} "
        f"(people scored by policy {g.policy})"
    )
    return 0


def _model_info(args: argparse.Namespace):
    """The ``ModelInfo`` of ``--model`` (default: $FACENET_MODEL, else the installed default), read without
    building the network."""
    from facenet.embedder import model_file
    from facenet.models.modelfile import read_model_info

    path = model_file(args.model)
    if path.suffix.lower() == ".onnx":
        from facenet.export import load_onnx

        return load_onnx(path)[1]
    return read_model_info(path)


def _open_set_lines(args: argparse.Namespace, g) -> list[str]:
    """What the gallery's size gets at ``--far`` with the gallery's model: the promise's summary, and its note
    when the asked rate cannot be kept; a line saying why not when the model cannot be read or is another."""
    from facenet.evaluate.calibrate import DEFAULT_OPENSET_FAR, identification_promise
    from facenet.occluder import masked_entry

    try:
        info = _model_info(args)
    except FaceNetError as exc:
        return [f"open set: unknown, the model cannot be read ({exc})"]
    if info.id != g.model_id:
        return [
            f"open set: unknown, the gallery holds embeddings of model {g.model_id}, not {info.id}; "
            "pass its --model to see the stranger rate"
        ]
    lines = []
    for masked in (False, True) if masked_entry(info) else (False,):  # masked faces: their own (issue 24)
        promise = identification_promise(info, g.comparisons(), args.far or DEFAULT_OPENSET_FAR, masked=masked)
        lines += [promise.summary] if promise.calibrated else []
        lines += [f"warning: {promise.note}"] if promise.note else []
    return lines


def run_list(args: argparse.Namespace) -> int:
    with _open_existing(args) as g:
        people = g.people()
        print(
            f"# gallery {g.location}: model {g.model_id}, {g.embedding_size}-D {g.storage}, policy {g.policy}, "
            f"{len(people)} people, {sum(p.faces for p in people)} faces"
        )
        for line in _open_set_lines(args, g):
            print(f"# {line}")
        for person in people:
            print(f"{person.name}\t{person.faces}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    with _open_existing(args) as g:
        faces = g.remove(args.name)
    print(f"removed {args.name} and {faces} face(s) from {g.location}")
    return 0


def run_snapshot(args: argparse.Namespace) -> int:
    import time

    started = time.perf_counter()
    with _open_existing(args) as g:
        path, snap, size = g.write_snapshot()
    print(
        f"wrote index snapshot {path}: {snap.header['kind']} index of {len(snap.ids)} faces at feed position "
        f"{snap.seq}, {size / 2**20:.1f} MiB, in {time.perf_counter() - started:.1f} s"
    )
    return 0


def run_export(args: argparse.Namespace) -> int:
    with _open_existing(args) as g:
        g.export(args.file)
    print(f"exported gallery {g.location} to {args.file}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from facenet.gallery import Gallery

    with Gallery.open(args.file, create=False) as src:
        model_id, size, storage, policy = src.model_id, src.embedding_size, src.storage, src.policy
    try:
        g = _open(args, model_id, size, create=False)
    except GalleryError:  # none yet: a new one made like the file's (a real error comes back from this open too)
        g = _open(args, model_id, size, storage=storage, policy=policy)
    with g:
        faces = g.import_(args.file, merge=args.merge)
    print(f"imported {faces} face(s) from {args.file} into {g.location}")
    return 0


def run_identify(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise GalleryError("--top-k must be at least 1")
    import numpy as np

    from facenet.evaluate.calibrate import DEFAULT_OPENSET_FAR, identification_promise

    embedder = embedder_from_args(args)
    by_hand = args.threshold is not None
    far = args.far or DEFAULT_OPENSET_FAR
    with _open(args, embedder.name, embedder.embedding_size, create=False, index=args.index) as g:
        if by_hand:
            hand = f"# model {embedder.name}, threshold {args.threshold:.4f} (by hand: no stranger rate)"
            print(hand, file=sys.stderr)
        else:
            plain = identification_promise(embedder, g.comparisons(), far)
            print(f"# model {embedder.name}, threshold {plain.threshold:.4f}", file=sys.stderr)
            _say_the_promise(plain, args.strict)
        covered: list = []
        rows, emb, report, report_path = _embed_collection(args, embedder, "identify", None if by_hand else covered)
        as_masked = np.array(covered, bool) if covered else np.zeros(len(rows), bool)
        limits = args.threshold if by_hand else np.full(len(rows), plain.threshold)
        if as_masked.any():  # a masked face gets the masked table's threshold and promise (issue 24)
            masked = identification_promise(embedder, g.comparisons(), far, masked=True)
            print(f"# masked faces ({int(as_masked.sum())}): threshold {masked.threshold:.4f}", file=sys.stderr)
            _say_the_promise(masked, args.strict)
            limits[as_masked] = masked.threshold
        results = g.identify(emb, k=args.top_k, threshold=limits) if len(emb) else []
    for row, matches, masked_face in zip(rows, results, as_masked):
        shown = ", ".join(f"{m.name} {m.distance:.3f}" for m in matches) or "unknown"
        face = (
            "" if row.faces_found < 2 else " [face {}, box {}]".format(row.face, ",".join(f"{v:.0f}" for v in row.box))
        )
        compared = "  (compared as masked)" if masked_face else ""
        unreliable = "".join(f"  (unreliable: {note})" for note in row.notes)
        print(f"{row.path}{face}: {shown}{compared}{unreliable}")
    status = report.finish(args.strict, report_path)
    if status:
        return status
    return 0 if all(results) else EXIT_UNIDENTIFIED


def _say_the_promise(promise, strict: bool) -> None:
    """The promise on stderr; where it cannot be kept, a warning, or with ``strict`` an error."""
    if promise.calibrated:
        print(f"# {promise.summary}", file=sys.stderr)
    if promise.note and strict:
        raise FaceNetError(f"--strict: {promise.note}; {_keep_the_promise(promise)}")
    if promise.note:
        print(f"facenet identify: warning: {promise.note}", file=sys.stderr)


def _keep_the_promise(promise) -> str:
    """What to do about a stranger rate that cannot be kept."""
    if not promise.calibrated:
        return "calibrate the model with `facenet evaluate --write-thresholds`, or pass --threshold"
    return (
        "ask a larger --far, enrol fewer faces, or calibrate the model to rarer rates "
        "(`facenet evaluate --write-thresholds` on more faces)"
    )


def register(sub) -> None:
    gallery_help = GALLERY_HELP
    p = sub.add_parser(
        "gallery",
        help="enrol, list, remove, export and import known people; snapshot the search index",
        description="The persistent gallery of known people: one SQLite file (owner-only), or a "
        "PostgreSQL database that several processes share (--gallery postgresql://...).",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    v = verbs.add_parser(
        "enroll",
        help="enrol a new person from photos (--add: more photos of an enrolled one)",
        description="Embed the photos and enrol NAME with them in one step. A name already "
        "enrolled is refused unless --add (as the API's merge=true) adds the photos to "
        "that person. Photos that cannot be read or show no face are skipped and "
        "reported; with --strict any skipped photo means nothing is enrolled.",
    )
    v.add_argument("name", metavar="NAME", help="the person's name")
    v.add_argument("photos", nargs="+", metavar="PHOTO", help="photos (or folders) of this person, one face each")
    v.add_argument(
        "--storage",
        choices=("float32", "int8"),
        default="float32",
        help="how a new gallery stores embeddings: float32, or int8 (1 byte per dimension)",
    )
    v.add_argument(
        "--policy",
        metavar="POLICY",
        help=f"how a new gallery scores a person with several photos: {CHOICES} (default: "
        f"{DEFAULT_POLICY}; see the README). Recorded in the gallery: an existing gallery keeps its "
        "own, and asking it for another is an error",
    )
    v.add_argument("--add", action="store_true", help="add the photos to a person already enrolled under NAME")
    v.add_argument("--gallery", help=gallery_help)
    add_batch_options(v, "none; skipped photos are printed")
    add_which_option(v, None, every=False)
    add_model_options(v)
    v.set_defaults(func=run_enroll)

    v = verbs.add_parser(
        "list",
        help="who is enrolled, with their number of faces, and the stranger rate the gallery's size gets",
        description="Everyone enrolled with their number of faces, after a header: the gallery's model, "
        "storage and policy, and what `identify` can promise at this size with the model's FAR "
        "calibration (the chance a stranger is taken for someone enrolled, and the share of enrolled "
        "people's photos identified), with a warning when --far cannot be kept.",
    )
    v.add_argument("--gallery", help=gallery_help)
    v.add_argument(
        "--model",
        help="the gallery's model file, whose calibration gives the stranger rate (default: $FACENET_MODEL, "
        "else the installed default model)",
    )
    v.add_argument("--far", type=float, default=None, help="the stranger rate asked for, as identify's (default 1e-2)")
    v.set_defaults(func=run_list)

    v = verbs.add_parser(
        "remove",
        help="delete a person and all their faces for good",
        description="Delete NAME, their faces and embeddings; in a gallery file the bytes are wiped.",
    )
    v.add_argument("name", metavar="NAME")
    v.add_argument("--gallery", help=gallery_help)
    v.set_defaults(func=run_remove)

    v = verbs.add_parser(
        "snapshot",
        help="save the gallery's search index now, so that processes start from it instead of rebuilding it",
        description="Bring the gallery's FAISS index up to date and save it as a snapshot (beside a gallery "
        "file as FILE.index, owner-only; for PostgreSQL under $XDG_CACHE_HOME/facenet/gallery-index/). A "
        "process opening the gallery loads a valid snapshot and catches up through the change feed instead "
        "of rebuilding the index from every face (minutes for a million); a damaged, stale or foreign "
        "snapshot is ignored and rebuilt. Processes also write snapshots themselves from 10,000 faces; a "
        "removal deletes the snapshot holding that person.",
    )
    v.add_argument("--gallery", help=gallery_help)
    v.set_defaults(func=run_snapshot)

    v = verbs.add_parser("export", help="write a compact copy of the gallery to FILE (a gallery file)")
    v.add_argument("file", metavar="FILE")
    v.add_argument("--gallery", help=gallery_help)
    v.set_defaults(func=run_export)

    v = verbs.add_parser(
        "import",
        help="add everyone from an exported gallery FILE (same model)",
        description="Merge an exported gallery into this one (created like the file's, "
        "storage and policy, if there is none); names already present are an "
        "error unless --merge adds their faces to the existing people.",
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument("--merge", action="store_true", help="add faces to people with the same name")
    v.add_argument("--gallery", help=gallery_help)
    v.set_defaults(func=run_import)

    p = sub.add_parser(
        "identify",
        help="who is in these photos? (top-k people from the gallery, or unknown)",
        description="For each face of each photo (--which: only one), the best-matching enrolled "
        "people within the threshold, with "
        "their squared-L2 scores (by the gallery's policy: see `gallery enroll --policy`), "
        "or 'unknown'. Photos that cannot be read or show no "
        "face are skipped and reported. Before the answers, stderr states what the gallery's size "
        "gets with the model's FAR calibration (the chance a stranger is taken for someone enrolled, "
        "the share of enrolled people's photos identified) and warns when --far cannot be kept. "
        "A masked face is compared with the model's masked FAR table (its own threshold for the "
        "same --far), marked '(compared as masked)'. "
        "Exit 0 all identified, 1 some unknown, 2 error "
        "(no photo usable, or, with --strict, any skipped or a --far the gallery cannot keep).",
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO", help="photos or folders")
    p.add_argument("--top-k", type=int, default=5, help="how many candidate people to show (default 5)")
    p.add_argument(
        "--far",
        type=float,
        default=None,
        help="wanted chance that a stranger is taken for someone enrolled; sets the threshold from the "
        "model's FAR calibration and the gallery's size (people, or faces, as its policy needs) "
        "(default 1e-2)",
    )
    p.add_argument("--threshold", type=float, help="squared-L2 threshold (overrides --far)")
    p.add_argument("--gallery", help=gallery_help)
    p.add_argument("--index", choices=INDEXES, default="auto", help=INDEX_HELP)
    add_batch_options(
        p,
        "none; skipped photos are printed",
        ", or, before any photo is read, if the gallery's size with this model cannot keep --far (beyond the "
        "model's FAR calibration, or none; not with --threshold)",
    )
    add_which_option(p, "all")
    add_model_options(p)
    p.set_defaults(func=run_identify)
