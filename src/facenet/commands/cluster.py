"""`facenet cluster PHOTO_DIR --out DIR`: group photos by person."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from facenet.commands.core import (
    add_batch_options,
    add_model_options,
    add_which_option,
    all_faces,
    embedder_from_args,
    expand_image_paths,
)

THUMB = 96  # contact-sheet tile side in pixels


def run_cluster(args: argparse.Namespace) -> int:
    from PIL import Image

    from facenet.batch import BatchReport, collect, embed_photos
    from facenet.cluster import cluster_embeddings, write_clusters

    paths = expand_image_paths(args.photos)
    embedder = embedder_from_args(args)
    report = BatchReport("cluster")
    report_path = Path(args.skipped_report) if args.skipped_report else Path(args.out) / "skipped.json"
    thumb = lambda crop: np.asarray(Image.fromarray(crop).resize((THUMB, THUMB), Image.BILINEAR))  # noqa: E731
    rows, emb = collect(
        embed_photos(
            embedder, paths, report, all_faces=all_faces(args), batch_size=args.batch_size, workers=args.workers
        ),
        embedder.embedding_size,
        keep_crop=thumb,
    )
    report.write(report_path)
    if rows:
        threshold = embedder.threshold if args.threshold is None else args.threshold
        labels = cluster_embeddings(
            emb, method=args.method, threshold=threshold, linkage=args.linkage, min_size=args.min_size, seed=args.seed
        )
        manifest = write_clusters(args.out, [r.path for r in rows], labels, thumb=THUMB, crops=[r.crop for r in rows])
        print(
            f"{len(manifest['clusters'])} cluster(s), {len(manifest['unclustered'])} unclustered photo(s), "
            f"{len(report.skipped)} skipped; manifest and contact sheets (the faces used) in {args.out}"
        )
    return report.finish(args.strict, report_path)


def register(sub) -> None:
    p = sub.add_parser(
        "cluster",
        help="group photos by person (manifest + contact sheets)",
        description="Embed every photo and group them by identity. Writes DIR/manifest.json "
        "(cluster -> files, plus 'unclustered') and a contact sheet PNG per group showing the face "
        "crops used, captioned with their file names. Photos without a usable face are "
        "skipped and listed in DIR/skipped.json. Exit 0, or 2 when no photo could be "
        "used (or, with --strict, when any was skipped).",
    )
    p.add_argument("photos", nargs="+", metavar="PHOTO_DIR", help="folder(s) or files of photos")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--method",
        choices=("agglomerative", "dbscan", "chinese_whispers"),
        default="agglomerative",
        help="clustering method (default: agglomerative, as in the paper)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="squared-L2 distance below which faces go together (default: the model's threshold)",
    )
    p.add_argument(
        "--linkage",
        choices=("average", "complete", "single"),
        default="average",
        help="agglomerative linkage (default: average)",
    )
    p.add_argument("--min-size", type=int, default=2, help="smaller groups go to 'unclustered' (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for chinese_whispers (default 0)")
    add_batch_options(p, "DIR/skipped.json")
    add_which_option(p, None)
    add_model_options(p)
    p.set_defaults(func=run_cluster)
