"""``facenet convert``: a published facenet-pytorch ``.pt`` state dict -> a facenet model file."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert published Inception-ResNet-v1 weights (.pt) to a facenet model file",
        description="Read a facenet-pytorch state dict (e.g. 20180402-114759-vggface2.pt) without "
                    "unpickling code, check it against Inception-ResNet-v1, and write a model file "
                    "(safetensors + metadata, mode 0600).")
    parser.add_argument("src", metavar="SRC.pt", help="published state dict")
    parser.add_argument("dst", metavar="DST", help="model file to write (e.g. vggface2.safetensors)")
    parser.add_argument("--embedding-size", type=int, default=None, metavar="D",
                        help="keep the backbone but start a fresh head of this size (default: the file's)")
    parser.add_argument("--standardisation", default="fixed",
                        help="input standardisation the weights expect: fixed | prewhiten | unit "
                             "(default: fixed, as published)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facenet.models.convert import convert_published_weights

    info = convert_published_weights(args.src, args.dst, args.embedding_size, args.standardisation)
    classes = f", {info.num_classes} classes" if info.num_classes else ""
    print(f"wrote {args.dst}: {info.arch}, {info.embedding_size}-D{classes}, head {info.provenance['head']}, "
          f"id {info.model_id}")
    return 0
