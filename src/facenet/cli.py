"""The ``facenet`` command: one entry point, one sub-command module per job.

Each module in ``facenet.commands`` is found automatically and exposes
``register(subparsers)``, adding its sub-command(s) with ``set_defaults(func=...)``. Project errors are printed as
one line with exit code 2; nothing the user did wrong ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from facenet.errors import FaceNetError

EXIT_ERROR = 2
DISTRIBUTION = "facenet-triplet"  # pyproject's name: `facenet` on PyPI is someone else's project


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facenet",
        description="Face recognition with FaceNet embeddings: verify, identify, cluster, train, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"facenet {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import facenet.commands

    for module in pkgutil.iter_modules(facenet.commands.__path__):
        importlib.import_module(f"facenet.commands.{module.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except FaceNetError as exc:
        print(f"facenet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"facenet {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
