"""`facenet serve`: the HTTP API and web page over one model and one gallery."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from facenet.commands.core import add_model_options, embedder_from_args
from facenet.errors import FaceNetError
from facenet.gallery.policy import CHOICES, DEFAULT_POLICY


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from facenet.paths import gallery_location
    from facenet.gallery import Gallery
    from facenet.serve import Limits, create_app
    from facenet.serve.security import API_KEY_ENV, load_api_key

    if not (args.max_upload_mb > 0 and args.time_budget > 0
            and min(args.max_pixels, args.max_files, args.max_pending, args.workers) >= 1):
        raise FaceNetError("--max-upload-mb, --max-pixels, --max-files, --max-pending, --time-budget and --workers "
                           "must be positive")
    api_key = load_api_key(args.api_key_file)
    embedder = embedder_from_args(args)
    gallery = gallery_location(args.gallery)
    with Gallery.open(gallery, embedder.name, embedder.embedding_size, policy=args.policy) as g:
        shown, policy = g.location, g.policy  # a wrong gallery fails here, in one line; never a URL's password
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    max_files=args.max_files, max_pending=args.max_pending, time_budget_s=args.time_budget,
                    workers=args.workers)
    app = create_app(embedder, gallery, api_key=api_key, limits=limits, policy=args.policy)
    if api_key is None:
        print(f"facenet serve: no API key (${API_KEY_ENV} or --api-key-file): enrolling and removing people "
              "is disabled", file=sys.stderr)
    if not _is_loopback(args.host):
        print(f"facenet serve: listening on {args.host}, beyond this machine; the traffic is plain HTTP — put "
              "a TLS proxy in front of it", file=sys.stderr)
    print(f"facenet serve: model {embedder.name}, gallery {shown} (policy {policy}); "
          f"page at http://{args.host}:{args.port}/ , API docs at /docs", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False,
                timeout_graceful_shutdown=30)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API (verify, identify, embed, cluster, gallery) and a web page "
                                "(verify, identify, manage the gallery)",
                       description="Serve the model and the gallery over HTTP (FastAPI + uvicorn): a web page at / "
                                   "(verify two photos, identify, manage the gallery), the API under /api (also "
                                   "embed and cluster; docs at /docs), /healthz and /readyz. Enrolling and "
                                   "removing people need the API key ($FACENET_API_KEY or --api-key-file) in the "
                                   "X-API-Key header; without a key they are refused.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--gallery", help="gallery file, or postgresql://user@host/db to share one gallery between "
                                     "several replicas (default: $FACENET_GALLERY, else "
                                     "$XDG_DATA_HOME/facenet/gallery.db); created if absent")
    p.add_argument("--policy", metavar="POLICY",
                   help=f"how a new gallery scores a person with several photos: {CHOICES} (default: "
                        f"{DEFAULT_POLICY}); an existing gallery keeps its own, and asking it for another is an error")
    p.add_argument("--api-key-file", metavar="FILE",
                   help="file whose first line is the API key (default: $FACENET_API_KEY); 16+ characters")
    p.add_argument("--max-upload-mb", type=float, default=10.0,
                   help="largest request body in MiB, all photos together (default 10)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="largest photo in pixels, checked from the header before decoding (default 50000000: a 48 MP phone photo passes)")
    p.add_argument("--max-files", type=int, default=20, help="most photos in one request (default 20)")
    p.add_argument("--max-pending", type=int, default=32,
                   help="requests allowed in progress at once (working or waiting); more are answered 503 + "
                        "Retry-After (default 32)")
    p.add_argument("--time-budget", type=float, default=10.0, metavar="SECONDS",
                   help="longest a request may take, waiting included; one past it is answered 503 + Retry-After "
                        "and writes nothing (default 10)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="threads decoding, detecting and embedding photos (default: one per CPU core, here "
                        f"{os.cpu_count() or 1}); the gallery has one thread of its own")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default info)")
    add_model_options(p)
    p.set_defaults(func=run_serve)
