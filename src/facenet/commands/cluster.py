"""`facenet cluster PHOTO_DIR --out DIR`: group photos by person."""

from __future__ import annotations

import argparse
import sys

from facenet.commands.core import add_model_options, embedder_from_args, expand_image_paths


def run_cluster(args: argparse.Namespace) -> int:
    from facenet.cluster import cluster_embeddings, write_clusters
    from facenet.commands.gallery import embed_photos

    paths = expand_image_paths(args.photos)
    embedder = embedder_from_args(args)
    emb, done, errors = embed_photos(embedder, paths, skip_errors=True)
    for line in errors:
        print(f"facenet cluster: skipped {line}", file=sys.stderr)
    threshold = embedder.threshold if args.threshold is None else args.threshold
    labels = cluster_embeddings(emb, method=args.method, threshold=threshold, linkage=args.linkage,
                                min_size=args.min_size, seed=args.seed)
    manifest = write_clusters(args.out, done, labels)
    print(f"{len(manifest['clusters'])} cluster(s), {len(manifest['unclustered'])} unclustered photo(s), "
          f"{len(errors)} skipped; manifest and contact sheets in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cluster", help="group photos by person (manifest + contact sheets)",
                       description="Embed every photo and group them by identity. Writes DIR/manifest.json "
                                   "(cluster -> files, plus 'unclustered') and a contact sheet PNG per group.")
    p.add_argument("photos", nargs="+", metavar="PHOTO_DIR", help="folder(s) or files of photos")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--method", choices=("agglomerative", "dbscan", "chinese_whispers"), default="agglomerative",
                   help="clustering method (default: agglomerative, as in the paper)")
    p.add_argument("--threshold", type=float,
                   help="squared-L2 distance below which faces go together (default: the model's threshold)")
    p.add_argument("--linkage", choices=("average", "complete", "single"), default="average",
                   help="agglomerative linkage (default: average)")
    p.add_argument("--min-size", type=int, default=2, help="smaller groups go to 'unclustered' (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for chinese_whispers (default 0)")
    add_model_options(p)
    p.set_defaults(func=run_cluster)
