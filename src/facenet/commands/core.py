"""`facenet embed` and `facenet verify`: the two everyday jobs on photos."""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
from pathlib import Path

import numpy as np

from facenet.align.finder import MIN_FACE
from facenet.data.images import expand_image_paths
from facenet.errors import FaceNetError
from facenet.shards import SHARD_SIZE

EXIT_DIFFERENT = 1
BATCH = 32


def add_model_options(parser: argparse.ArgumentParser, model_option: bool = True) -> None:
    """Options every command that embeds photos shares (``model_option=False``: the caller adds --model)."""
    if model_option:
        parser.add_argument(
            "--model",
            help="model file, or a shipped model's name: reid (the default), dlib (dlib's network) "
            "(default: $FACENET_MODEL, else the installed default model)",
        )
    parser.add_argument(
        "--detector",
        default=None,
        help="face detector for whole photos: mtcnn (YuNet's proposals, MTCNN's boxes and landmarks), "
        "mtcnn-pnet (the published MTCNN cascade), yunet, dlib, center "
        "(default: the one the model's recipe names, mtcnn for the pretrained model)",
    )
    parser.add_argument(
        "--no-detect",
        action="store_true",
        help="inputs are already face crops: no detection, just resize to the model input",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "onnx"),
        help="inference engine: onnx = ONNX Runtime (exported once, cached in "
        "$XDG_CACHE_HOME/facenet/onnx, i.e. ~/.cache/facenet/onnx), torch = PyTorch, "
        "auto = ONNX Runtime on CPU, else PyTorch (default: auto)",
    )
    parser.add_argument(
        "--min-face",
        type=float,
        default=MIN_FACE,
        metavar="FRACTION",
        help="smallest face to find, as a fraction of a photo's shorter side: big photos are "
        f"detected on a copy reduced to match (default {MIN_FACE}: 60 px in a 12 MP photo); "
        "smaller values find smaller faces and cost more, 0 detects at full resolution",
    )


def add_which_option(parser: argparse.ArgumentParser, default: str | None, every: bool = True) -> None:
    """``--which``: the face of a photo with several that a command uses (``every``: "all" is offered)."""
    choices = ("largest", "central", "all") if every else ("largest", "central")
    shown = default or "the model recipe's, largest for the pretrained model"
    parser.add_argument(
        "--which",
        choices=choices,
        default=default,
        help="face to use in a photo with several: largest (by the part inside the photo), central "
        f"(largest near the middle){', all (every face)' if every else ''} (default: {shown})",
    )


def embedder_from_args(args: argparse.Namespace):
    """The embedder the shared options describe; faces are cut with the model's own recipe."""
    from facenet.embedder import load_embedder

    which = getattr(args, "which", None)
    return load_embedder(
        args.model,
        device=args.device,
        detector=args.detector,
        detect=not args.no_detect,
        backend=args.backend,
        which=None if which == "all" else which,
        min_face=args.min_face or None,
    )


def all_faces(args: argparse.Namespace) -> bool:
    """Does the command use every face of a photo (``--which all``, or embed's ``--all-faces``)?"""
    return getattr(args, "which", None) == "all" or getattr(args, "all_faces", False)


OUTPUT_FORMATS = (".npy", ".csv", ".json", ".parquet")
ROW_FIELDS = ("image", "face", "faces", "x1", "y1", "x2", "y2", "score")


def add_batch_options(parser: argparse.ArgumentParser, report_default: str, strict_also: str = "") -> None:
    """The options of every command that embeds a collection (one policy for photos that fail); ``strict_also``
    says what else ``--strict`` refuses for this command."""
    parser.add_argument(
        "--strict",
        action="store_true",
        help=f"exit 2 if any photo is skipped (unreadable, or no face){strict_also}; by default skipped photos "
        "are reported and the rest is used, and only a run where nothing succeeded fails",
    )
    parser.add_argument(
        "--skipped-report",
        metavar="FILE",
        help=f"JSON list of skipped photos with their reasons (default: {report_default})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=BATCH, metavar="N", help=f"faces embedded per network call (default {BATCH})"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="workers that decode and detect ahead of the network: threads sharing the detector "
        "when it is thread-safe (MTCNN on ONNX Runtime, YuNet), else processes (default: none "
        "for a few photos, else the number of cores minus one, at least one)",
    )


def run_embed(args: argparse.Namespace) -> int:
    from facenet.batch import BatchReport, embed_photos
    from facenet.fileio import atomic_write

    out = Path(args.out)
    if is_shard_dir(args.out):
        return run_embed_shards(args, out)
    if args.ray is not None:
        raise FaceNetError("--ray writes a directory of shards: --out DIR/ (with the trailing slash)")
    if args.shard_size is not None:
        raise FaceNetError("--shard-size is for a shard directory: --out DIR/ (with the trailing slash)")
    if out.suffix not in OUTPUT_FORMATS:
        raise FaceNetError(f"--out must end in {', '.join(OUTPUT_FORMATS)}, or be a directory (DIR/), not {out.name!r}")
    if out.suffix == ".parquet":
        _require_pyarrow()
    paths = expand_image_paths(args.paths)
    embedder = embedder_from_args(args)
    report = BatchReport("embed")
    report_path = Path(args.skipped_report) if args.skipped_report else out.with_suffix(".skipped.json")
    chunks = embed_photos(
        embedder, paths, report, all_faces=all_faces(args), batch_size=args.batch_size, workers=args.workers
    )
    first = next(chunks, None)
    if first is None:  # nothing usable: no empty output files; the reasons are printed
        if args.skipped_report:
            report.write(report_path)
        return report.finish(args.strict, report_path if args.skipped_report else None)
    writer = {".npy": _write_npy, ".csv": _write_csv, ".json": _write_json, ".parquet": _write_parquet}[out.suffix]
    written = {}
    atomic_write(
        out, lambda tmp: written.update(n=writer(tmp, out, itertools.chain([first], chunks), embedder.embedding_size))
    )
    report.write(report_path)
    described = f" (rows described in {out.with_suffix('.rows.csv')})" if out.suffix == ".npy" else ""
    print(
        f"wrote {written['n']} embeddings of {embedder.embedding_size} dims from {report.embedded_photos} "
        f"photo(s) to {out}{described}"
    )
    return report.finish(args.strict, report_path)


def is_shard_dir(out: str) -> bool:
    """``--out DIR/`` (a trailing slash) or an existing directory: a resumable directory of shards."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def run_embed_shards(args: argparse.Namespace, out: Path) -> int:
    """``--out DIR/``: Parquet shards of ``--shard-size`` photos and a manifest; a re-run goes on where a run
    stopped, each photo done once (``facenet.shards``)."""
    from facenet.batch import BatchReport, embed_photo_groups
    from facenet.shards import ShardDir, run_identity

    _require_pyarrow()
    shard_size = SHARD_SIZE if args.shard_size is None else args.shard_size
    if shard_size < 1:
        raise FaceNetError("--shard-size must be at least 1 photo")
    if args.ray is not None:
        return run_embed_ray(args, out, shard_size)
    if args.ray_actors is not None:
        raise FaceNetError("--ray-actors is for a run on Ray: add --ray [ADDRESS]")
    paths = list(dict.fromkeys(os.path.abspath(p) for p in expand_image_paths(args.paths)))  # each photo once
    embedder = embedder_from_args(args)
    detector = None if args.no_detect else (args.detector or embedder.recipe.detector)
    identity = run_identity(embedder, detector, all_faces(args))
    with ShardDir.open(out, identity) as shards:
        todo = [Path(p) for p in paths if p not in shards.done]
        if len(todo) < len(paths):
            print(
                f"{out}: {len(paths) - len(todo)} of the {len(paths)} photo(s) already done "
                f"({len(shards.shards)} shard(s)); embedding the other {len(todo)}"
            )
        run = BatchReport("embed")
        groups = embed_photo_groups(
            embedder, todo, run, shard_size, all_faces=all_faces(args), batch_size=args.batch_size, workers=args.workers
        )
        for group in groups:
            shards.write(group)
        report = shards.report()
    report_path = Path(args.skipped_report) if args.skipped_report else out / "skipped.json"
    report.write(report_path)
    print(
        f"wrote {run.faces} embeddings of {embedder.embedding_size} dims from {run.embedded_photos} photo(s) "
        f"to {out}; it holds {report.faces} from {report.embedded_photos} photo(s) in {len(shards.shards)} shard(s)"
    )
    return report.finish(args.strict, report_path)


def run_embed_ray(args: argparse.Namespace, out: Path, shard_size: int) -> int:
    """``--out DIR/ --ray [ADDRESS]``: the same directory, the photos embedded by a pool of Ray actors
    (``facenet.ray_embed``)."""
    from facenet.ray_embed import embed_on_ray

    if args.workers is not None:
        raise FaceNetError("--workers is for a run in one process; on Ray, --ray-actors sets how many embed at once")
    if args.ray_actors is not None and args.ray_actors < 1:
        raise FaceNetError("--ray-actors must be at least 1")
    done = embed_on_ray(
        args.paths,
        out,
        args.model,
        address=args.ray or None,
        actors=args.ray_actors,
        gpus_per_actor=0.0 if args.device == "cpu" else 1.0,
        device=args.device,
        detector=args.detector,
        detect=not args.no_detect,
        backend=args.backend,
        which=None if args.which == "all" else args.which,
        all_faces=all_faces(args),
        min_face=args.min_face or None,
        batch_size=args.batch_size,
        shard_size=shard_size,
    )
    if done.already_done:
        print(
            f"{out}: {done.already_done} of the {done.already_done + done.run.photos} photo(s) were already done; "
            f"embedded the other {done.run.photos} on Ray"
        )
    report, run = done.total, done.run
    report_path = Path(args.skipped_report) if args.skipped_report else out / "skipped.json"
    report.write(report_path)
    print(
        f"wrote {run.faces} embeddings of {done.embedding_size} dims from {run.embedded_photos} photo(s) on Ray "
        f"to {out}; it holds "
        f"{report.faces} from {report.embedded_photos} photo(s) in {done.shards} shard(s)"
    )
    return report.finish(args.strict, report_path)


def _row_values(row) -> list:
    """Where an embedding comes from: photo, face index, faces found, box, score (None without a detector)."""
    score = None if row.score != row.score else round(row.score, 5)
    return [row.path, row.face, row.faces_found, *(round(v, 1) for v in row.box), score]


def _csv_values(row) -> list:
    return ["" if v is None else v for v in _row_values(row)]


def _write_npy(tmp: Path, out: Path, chunks, dims: int) -> int:
    """The (N, d) matrix, plus OUT.rows.csv saying where each row comes from (same order)."""
    from facenet.fileio import atomic_write

    rows, blocks = [], []
    for chunk, emb in chunks:  # only embeddings are kept: photos and crops are released chunk by chunk
        rows.extend(_csv_values(r) for r in chunk)
        blocks.append(emb)
    matrix = np.concatenate(blocks) if blocks else np.empty((0, dims), np.float32)
    with tmp.open("wb") as fh:
        np.save(fh, matrix.astype(np.float32))

    def write_rows(rows_tmp: Path) -> None:
        with rows_tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(ROW_FIELDS)
            writer.writerows(rows)

    atomic_write(out.with_suffix(".rows.csv"), write_rows)
    return len(rows)


def _write_csv(tmp: Path, out: Path, chunks, dims: int) -> int:
    n = 0
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*ROW_FIELDS, *(f"e{i}" for i in range(dims))])
        for chunk, emb in chunks:
            for row, vector in zip(chunk, emb):
                writer.writerow([*_csv_values(row), *(f"{v:.7g}" for v in vector)])
                n += 1
    return n


def _write_json(tmp: Path, out: Path, chunks, dims: int) -> int:
    """One JSON array of objects, written as the rows come (never the whole list in memory)."""
    import json

    n = 0
    with tmp.open("w") as fh:
        fh.write("[")
        for chunk, emb in chunks:
            for row, vector in zip(chunk, emb):
                image, face, faces, x1, y1, x2, y2, score = _row_values(row)
                item = {
                    "image": image,
                    "face": face,
                    "faces": faces,
                    "box": [x1, y1, x2, y2],
                    "score": score,
                    "embedding": [float(f"{v:.7g}") for v in vector],
                }
                fh.write(("," if n else "") + "\n" + json.dumps(item))
                n += 1
        fh.write("\n]\n")
    return n


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise FaceNetError(
            "Parquet output needs pyarrow, which is not installed: "
            "pip install 'facenet-triplet[parquet]' (or pyarrow itself), or write .npy, .csv or .json"
        ) from None


def _write_parquet(tmp: Path, out: Path, chunks, dims: int) -> int:
    """One row group per chunk; the embedding is a fixed-size list of float32."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facenet.shards import shard_schema

    schema = shard_schema(dims, notes=False)
    n = 0
    with pq.ParquetWriter(str(tmp), schema) as writer:
        for chunk, emb in chunks:
            columns = list(zip(*(_row_values(r) for r in chunk)))
            arrays = [pa.array(col, type=schema.field(i).type) for i, col in enumerate(columns)]
            flat = pa.array(np.ascontiguousarray(emb, np.float32).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, dims))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            n += len(chunk)
    return n


def photo_faces(embedder, path, all_faces: bool = False) -> list:
    """The face rows of one photo (a failing photo raises); notes on stderr which face of several was used."""
    from facenet.batch import face_rows, several_faces_note

    rows = face_rows(embedder.find_faces(path, all_faces=all_faces, source=str(path)), path)
    if not all_faces and (note := several_faces_note(rows[0], embedder.recipe.which)):
        print(note, file=sys.stderr)
    return rows


def run_verify(args: argparse.Namespace) -> int:
    from facenet.api import compare
    from facenet.occluder import lower_face_covered, pair_threshold

    embedder = embedder_from_args(args)
    a, b = photo_faces(embedder, args.a)[0], photo_faces(embedder, args.b)[0]
    rows = embedder.embed_crops([a.crop, b.crop])
    threshold, masked = args.threshold, False
    if threshold is None:
        threshold, masked = pair_threshold(embedder, lower_face_covered(embedder, [a.crop, b.crop], rows))
    result = compare(rows[0], rows[1], threshold)
    print(f"model     {embedder.name}")
    for label, row in (("face A", a), ("face B", b)):
        print(f"{label:<9} {describe_face(row)}")
    print(f"distance  {result.distance:.4f}  (squared L2)")
    print(f"threshold {result.threshold:.4f}{'  (compared as masked: one face is masked)' if masked else ''}")
    print("SAME" if result.same else "DIFFERENT")
    for note in a.notes + b.notes:
        print(f"warning: {note}", file=sys.stderr)
    if a.notes or b.notes:
        print("UNRELIABLE: see the warnings above")
    return 0 if result.same else EXIT_DIFFERENT


def describe_face(row) -> str:
    """ "photo.jpg face 1 of 3, box 10,20,110,140": which face of which photo a result is about."""
    box = ",".join(f"{v:.0f}" for v in row.box)
    return f"{row.path} face {row.face} of {row.faces_found}, box {box}"


def register(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="embed photos into unit vectors (.npy, .csv, .json or .parquet)",
        description="Embed each photo (or each image in a folder) into a unit vector. Every row "
        "says where it comes from: the photo, the face's index among the faces the "
        "detector found (detector order), how many it found, the face box "
        "(x1, y1, x2, y2 in photo pixels) and the detector's score. Photos that cannot "
        "be read or show no face are skipped and listed, with the reason, in "
        "OUT.skipped.json; the others are written. Exit 0, or 2 when nothing could "
        "be embedded (or, with --strict, when anything was skipped). For a big collection, "
        "--out DIR/ writes a directory of Parquet shards and a manifest instead: a run that is "
        "stopped (even killed) goes on where it stopped when re-run with the same DIR, each "
        "photo embedded once; with --ray a pool of Ray actors embeds the photos into the same kind of DIR.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument(
        "--out",
        required=True,
        help="output file: .npy (matrix; where each row comes from in OUT.rows.csv), .csv, .json "
        "(array of objects) or .parquet (needs pyarrow); or DIR/ (a trailing slash, or an existing "
        "directory): resumable Parquet shards part-00000.parquet, ... and DIR/manifest.json (needs "
        "pyarrow); a re-run with the same DIR skips the photos already done (refused if the model or "
        "options differ); read it with facenet.shards.read_shards(DIR)",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="N",
        help=f"with --out DIR/: photos per shard (all their faces), the most a killed run loses (default {SHARD_SIZE})",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="with --out DIR/: embed on Ray (pip install 'facenet-triplet[ray]'), a pool of actors each holding the "
        "model once, into the same directory of shards; without ADDRESS a local Ray on this machine's cores (or the "
        "cluster $RAY_ADDRESS names), "
        "'auto' the cluster this machine belongs to (ray start), ray://HOST:10001 through Ray Client. PATHs may "
        "also be fsspec URLs (s3://..., gs://..., file://...); photos must be readable by every worker, DIR is "
        "written here. With --device cuda each actor takes a GPU",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        metavar="N",
        help="with --ray: actors embedding at once, one core (or GPU) each (default: as many as the cluster has)",
    )
    p.add_argument("--all-faces", action="store_true", help="embed every face found (the same as --which all)")
    add_which_option(p, None)
    add_batch_options(p, "OUT.skipped.json, DIR/skipped.json")
    add_model_options(p)
    p.set_defaults(func=run_embed)

    p = sub.add_parser(
        "verify",
        help="are two photos the same person? (exit 0 same, 1 different, 2 error)",
        description="Compare two photos: prints the squared L2 distance, the threshold, and "
        "SAME or DIFFERENT. Where one face is masked and the other is not, the model's threshold for "
        "masked pairs is used, and the output says so. Exit code 0 = same, 1 = different, 2 = error.",
    )
    p.add_argument("a", help="first photo")
    p.add_argument("b", help="second photo")
    p.add_argument(
        "--threshold",
        type=float,
        help="squared-L2 threshold (default: the model's calibrated one; for masked pairs, theirs)",
    )
    add_which_option(p, None, every=False)
    add_model_options(p)
    p.set_defaults(func=run_verify)
