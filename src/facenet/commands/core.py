"""`facenet embed` and `facenet verify`: the two everyday jobs on photos."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from facenet.errors import BadImageError, FaceNetError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".gif"}
EXIT_DIFFERENT = 1
BATCH = 32


def add_model_options(parser: argparse.ArgumentParser, model_option: bool = True) -> None:
    """Options every command that embeds photos shares (``model_option=False``: the caller adds --model)."""
    if model_option:
        parser.add_argument("--model",
                            help="model file (default: $FACENET_MODEL, else the installed pretrained model)")
    parser.add_argument("--detector", default=None,
                        help="face detector for whole photos: mtcnn, yunet, dlib, center "
                             "(default: the one the model's recipe names, mtcnn for the pretrained model)")
    parser.add_argument("--no-detect", action="store_true",
                        help="inputs are already face crops: no detection, just resize to the model input")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "onnx"),
                        help="inference engine: onnx = ONNX Runtime (exported once, cached beside the model), "
                             "torch = PyTorch, auto = ONNX Runtime on CPU, else PyTorch (default: auto)")


def embedder_from_args(args: argparse.Namespace, which: str | None = None):
    """The embedder the shared options describe; faces are cut with the model's own recipe."""
    from facenet.embedder import load_embedder

    return load_embedder(args.model, device=args.device, detector=args.detector, detect=not args.no_detect,
                         backend=args.backend, which=which)


def expand_image_paths(inputs: list[str]) -> list[Path]:
    """Files as given; directories expand to the images below them, sorted."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise BadImageError(f"no images found in folder {path}")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise BadImageError(f"no such file or folder: {path}")
    return paths


def run_embed(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from facenet.fileio import atomic_write

    out = Path(args.out)
    if out.suffix not in (".npy", ".csv"):
        raise FaceNetError(f"--out must end in .npy or .csv, not {out.name!r}")
    paths = expand_image_paths(args.paths)
    embedder = embedder_from_args(args)
    rows, names = [], []
    for start in tqdm(range(0, len(paths), BATCH), desc="embedding", unit="batch", disable=None):
        crops = []
        for path in paths[start:start + BATCH]:
            faces = photo_faces(embedder, path, all_faces=args.all_faces)
            crops.extend(faces)
            names.extend([f"{path}#face{i}" for i in range(len(faces))] if args.all_faces else [str(path)])
        rows.append(embedder.embed_crops(crops, batch_size=BATCH))
    matrix = np.concatenate(rows).astype(np.float32)
    if out.suffix == ".npy":
        atomic_write(out, lambda tmp: np.save(tmp.open("wb"), matrix))
        atomic_write(out.with_suffix(".paths.txt"), lambda tmp: tmp.write_text("\n".join(names) + "\n"))
        print(f"wrote {len(names)} embeddings of {matrix.shape[1]} dims to {out} (row order in "
              f"{out.with_suffix('.paths.txt')})")
    else:
        def write_csv(tmp: Path) -> None:
            with tmp.open("w") as fh:
                fh.write("image," + ",".join(f"e{i}" for i in range(matrix.shape[1])) + "\n")
                for name, row in zip(names, matrix):
                    fh.write(_csv_field(name) + "," + ",".join(f"{v:.7g}" for v in row) + "\n")

        atomic_write(out, write_csv)
        print(f"wrote {len(names)} embeddings of {matrix.shape[1]} dims to {out}")
    return 0


def photo_faces(embedder, path, all_faces: bool = False) -> list[np.ndarray]:
    """Face crops of one photo; says on stderr when several faces were found and which was used."""
    found = embedder.find_faces(path, all_faces=all_faces)
    if len(found.detections) > 1 and not all_faces:
        print(f"{path}: {len(found.detections)} faces found; using the {embedder.recipe.which} one "
              "(embed --all-faces embeds each)", file=sys.stderr)
    return [face.image for face in found.faces]


def run_verify(args: argparse.Namespace) -> int:
    from facenet.api import compare

    embedder = embedder_from_args(args)
    ea, eb = embedder.embed_crops([photo_faces(embedder, args.a)[0], photo_faces(embedder, args.b)[0]])
    result = compare(ea, eb, embedder.threshold if args.threshold is None else args.threshold)
    print(f"distance  {result.distance:.4f}  (squared L2)")
    print(f"threshold {result.threshold:.4f}")
    print("SAME" if result.same else "DIFFERENT")
    return 0 if result.same else EXIT_DIFFERENT


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def register(sub) -> None:
    p = sub.add_parser("embed", help="embed photos into unit vectors (.npy or .csv)",
                       description="Embed each photo (or each image in a folder) into a unit vector.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    p.add_argument("--out", required=True, help="output file: .npy (rows in input order) or .csv")
    p.add_argument("--all-faces", action="store_true", help="embed every face found, not only the largest")
    add_model_options(p)
    p.set_defaults(func=run_embed)

    p = sub.add_parser("verify", help="are two photos the same person? (exit 0 same, 1 different, 2 error)",
                       description="Compare two photos: prints the squared L2 distance, the threshold, and "
                                   "SAME or DIFFERENT. Exit code 0 = same, 1 = different, 2 = error.")
    p.add_argument("a", help="first photo")
    p.add_argument("b", help="second photo")
    p.add_argument("--threshold", type=float, help="squared-L2 threshold (default: the model's calibrated one)")
    add_model_options(p)
    p.set_defaults(func=run_verify)
