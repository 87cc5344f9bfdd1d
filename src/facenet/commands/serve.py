"""`facenet serve`: the HTTP API and web page over one model and one gallery."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from facenet.commands.core import add_model_options, embedder_from_args
from facenet.commands.gallery import INDEX_HELP, INDEXES
from facenet.errors import FaceNetError
from facenet.gallery.policy import CHOICES, DEFAULT_POLICY


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from facenet.gallery import Gallery
    from facenet.paths import gallery_location
    from facenet.serve import Limits, create_app
    from facenet.serve.security import load_keys, parse_rate

    if not (
        args.max_upload_mb > 0
        and args.time_budget > 0
        and min(args.max_pixels, args.max_files, args.max_pending, args.workers) >= 1
    ):
        raise FaceNetError(
            "--max-upload-mb, --max-pixels, --max-files, --max-pending, --time-budget and --workers must be positive"
        )
    keys = load_keys(args.api_key_file, args.read_key_file, args.public)
    rate = None if args.rate_limit.strip().lower() == "none" else args.rate_limit
    if rate is not None:
        parse_rate(rate)  # a wrong rate fails here, in one line
    embedder = embedder_from_args(args)
    gallery = gallery_location(args.gallery)
    with Gallery.open(gallery, embedder.name, embedder.embedding_size, policy=args.policy, index=args.index) as g:
        shown, policy = g.location, g.policy  # a wrong gallery fails here, in one line; never a URL's password
    limits = Limits(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_files=args.max_files,
        max_pending=args.max_pending,
        time_budget_s=args.time_budget,
        workers=args.workers,
        rate_limit=rate,
    )
    app = create_app(embedder, gallery, keys=keys, limits=limits, policy=args.policy, index=args.index)
    print(f"facenet serve: {_access_line(keys)}", file=sys.stderr)
    if not _is_loopback(args.host):
        print(
            f"facenet serve: listening on {args.host}, beyond this machine; the traffic is plain HTTP — put "
            "a TLS proxy in front of it",
            file=sys.stderr,
        )
    print(
        f"facenet serve: model {embedder.name}, gallery {shown} (policy {policy}), loading in the background "
        f"(/readyz says when it is ready); page at http://{args.host}:{args.port}/ , API docs at /docs",
        file=sys.stderr,
    )
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, server_header=False, timeout_graceful_shutdown=30
    )
    return 0


def _access_line(keys) -> str:
    """Who may do what, and how to set the keys that are missing (never the keys themselves)."""
    from facenet.serve.security import HOW_TO_SET_KEYS

    readers = (
        "anyone who reaches the port (--public)"
        if keys.public
        else " or ".join(name for name, key in (("the read key", keys.read), ("the admin key", keys.admin)) if key)
        or "nobody (no key set)"
    )
    writers = "the admin key" if keys.admin else "nobody (no admin key set)"
    line = f"listing and searching the gallery: {readers}; enrolling and removing people: {writers}"
    if keys.admin is None or keys.read is None and not keys.public:
        line += f"; {HOW_TO_SET_KEYS}"
    return line


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP API (verify, identify, embed, cluster, gallery) and a web page "
        "(verify, identify, manage the gallery)",
        description="Serve the model and the gallery over HTTP (FastAPI + uvicorn): a web page at / "
        "(verify two photos, identify, manage the gallery), the API under /api (also "
        "embed and cluster; docs at /docs), /healthz and /readyz. The gallery is "
        "biometric data: listing and searching it needs the read key "
        "($FACENET_READ_KEY or --read-key-file) or the admin key ($FACENET_API_KEY or "
        "--api-key-file) in the X-API-Key header, unless started --public; enrolling "
        "and removing people need the admin key. Without a key those requests are "
        "refused with 401.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--gallery",
        help="gallery file, or postgresql://user@host/db to share one gallery between "
        "several replicas (default: $FACENET_GALLERY, else "
        "$XDG_DATA_HOME/facenet/gallery.db); created if absent",
    )
    p.add_argument(
        "--policy",
        metavar="POLICY",
        help=f"how a new gallery scores a person with several photos: {CHOICES} (default: "
        f"{DEFAULT_POLICY}); an existing gallery keeps its own, and asking it for another is an error",
    )
    p.add_argument("--index", choices=INDEXES, default="auto", help=INDEX_HELP)
    p.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="file whose first line is the admin key: enrol, remove, list and search without limits "
        "(default: $FACENET_API_KEY); 16+ characters",
    )
    p.add_argument(
        "--read-key-file",
        metavar="FILE",
        help="file whose first line is the read key: list and search the gallery, within the model's "
        "open-set threshold and top 5 (default: $FACENET_READ_KEY); 16+ characters, not the admin key",
    )
    p.add_argument(
        "--public",
        action="store_true",
        help="let clients without a key list and search the gallery (within the read key's limits), "
        "for a local demo (also $FACENET_PUBLIC=1); enrolling and removing still need the admin key",
    )
    p.add_argument(
        "--rate-limit",
        default="120/minute",
        metavar="RATE",
        help="requests under /api/ per client (its key and address), e.g. 120/minute or 10/second; "
        "more are answered 429 + Retry-After; 'none' for no limit (default 120/minute)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=10.0,
        help="largest request body in MiB, all photos together (default 10)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=50_000_000,
        help="largest photo in pixels, checked from the header before decoding "
        "(default 50000000: a 48 MP phone photo passes)",
    )
    p.add_argument("--max-files", type=int, default=20, help="most photos in one request (default 20)")
    p.add_argument(
        "--max-pending",
        type=int,
        default=32,
        help="requests allowed in progress at once (working or waiting); more are answered 503 + "
        "Retry-After (default 32)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest a request may take, waiting included; one past it is answered 503 + Retry-After "
        "and writes nothing (default 10)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="threads decoding, detecting and embedding photos (default: one per CPU core, here "
        f"{os.cpu_count() or 1}); the gallery has one thread of its own",
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level (default info)",
    )
    add_model_options(p)
    p.set_defaults(func=run_serve)
