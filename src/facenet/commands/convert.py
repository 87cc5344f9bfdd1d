"""``facenet convert``: published weights -> a facenet model file.

Three sources: the shipped models (``reid`` = Intel's face-reidentification-retail-0095 from the
weights inside the package, or from its OpenVINO IR ``.xml``; ``dlib`` = dlib's face model in the
installed ``face_recognition_models`` wheel, or a ``dlib_face_recognition_resnet_model_v1.dat``)
and facenet-pytorch ``.pt`` state dicts of Inception-ResNet-v1.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert published weights (the shipped reid and dlib models, an OpenVINO IR, a dlib "
        ".dat, a facenet-pytorch .pt) to a model file",
        description="Read published weights without running their code and write a facenet model file "
        "(safetensors + metadata, mode 0600). SRC 'reid' (the default model; or its OpenVINO IR, "
        "face-reidentification-retail-0095.xml with its .bin beside it): Intel's Apache-2.0 "
        "face-reidentification-retail-0095, shipped inside facenet. SRC 'dlib' (or a dlib .dat "
        "file): dlib's CC0 face ResNet, read in pure Python. Both come with their preprocessing "
        "recipe and LFW-measured thresholds. SRC.pt: a facenet-pytorch Inception-ResNet-v1 state "
        "dict (e.g. 20180402-114759-vggface2.pt).",
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        help="'reid', 'dlib', an OpenVINO IR .xml, a dlib .dat model file, or a facenet-pytorch .pt",
    )
    parser.add_argument(
        "dst",
        metavar="DST",
        nargs="?",
        default=None,
        help="model file to write (e.g. dlib.safetensors); omit with --default",
    )
    parser.add_argument(
        "--default",
        action="store_true",
        help="write it as the default model of every command (the model already there is kept: a "
        "shipped one under its own name in the models folder, your own as "
        "default.previous.safetensors)",
    )
    parser.add_argument(
        "--embedding-size",
        type=int,
        default=None,
        metavar="D",
        help=".pt only: keep the backbone but start a fresh head of this size (default: the file's)",
    )
    parser.add_argument(
        "--standardisation",
        default="fixed",
        help=".pt only: input standardisation the weights expect: fixed | prewhiten | unit "
        "(default: fixed, as published)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from facenet.errors import FaceNetError
    from facenet.models.modelfile import read_model_info
    from facenet.models.pretrained import PRETRAINED, convert_pretrained, install_pretrained
    from facenet.paths import default_model_path

    if (args.dst is None) == (not args.default):
        raise FaceNetError("give either DST or --default (not both, not neither)")
    suffix = Path(args.src).suffix.lower()
    shipped = {".dat": "dlib", ".xml": "reid"}.get(suffix, args.src if args.src in PRETRAINED else None)
    if shipped:
        src = None if args.src in PRETRAINED else args.src
        if args.default:
            dst = install_pretrained(shipped, default_model_path(), replace=True, src=src)
            info = read_model_info(dst)
        else:
            dst, info = args.dst, convert_pretrained(shipped, args.dst, src)
        print(
            f"wrote {dst}: {info.arch}, {info.embedding_size}-D, the shipped {shipped!r} model "
            f"({info.provenance['licence']}), id {info.id}"
        )
        return 0
    from facenet.models.convert import convert_published_weights

    dst = args.dst or default_model_path()
    info = convert_published_weights(args.src, dst, args.embedding_size, args.standardisation)
    classes = f", {info.num_classes} classes" if info.num_classes else ""
    print(f"wrote {dst}: {info.arch}, {info.embedding_size}-D{classes}, head {info.provenance['head']}, id {info.id}")
    return 0
