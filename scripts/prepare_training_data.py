"""Build the real-face training folders from the public sources named in docs/TRAINING_DATA.md.

Re-runnable and resumable: photos already aligned are skipped. Given the same checkouts (owner/name @
commit, see the docs), it makes the same training set:

    OUT/aligned/pubfig83/<Name>/*.png     PubFig83, 83 people
    OUT/aligned/glint/<Name>/*.png        Glint360k sample, 24 people (17 also in PubFig83: train with
                                          --merge-names to make them one person each)
    OUT/aligned/celeba/celeba_<id>/*.png  CelebA sample, 200 people less the 6 held-out identities
    OUT/aligned/yale/<yaleBnn>/*.png      Extended Yale B (cropped), 38 people, lighting only
    OUT/aligned/utk/*.png                 UTKFace subset, no identities (for --unlabelled)
    OUT/lfw_overlap.txt                   PubFig83 / Glint people who are in LFW (--exclude-identities
                                          for an LFW-free model)
    OUT/summary.json                      people and photos per source, faces not found, what was left out

Every face is cut with the recipe of --model (default: the installed default model), at its input size,
so a model fine-tuned or distilled on these folders keeps that recipe.

    .venv/bin/python scripts/prepare_training_data.py --sources ~/faces-src --out ~/faces --lfw ../shared/data/lfw
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from facenet.align.crop import Recipe
from facenet.align.dataset import AlignSettings, align_dataset
from facenet.data.folder import person_name
from facenet.data.images import IMAGE_SUFFIXES
from facenet.errors import FaceNetError
from facenet.fileio import atomic_write_bytes

# CelebA identities kept for an independent evaluation: never trained on (issue 17).
HELD_OUT_CELEBA = (7206, 7209, 7237, 7271, 7395, 7429)

# Where each source lies under --sources: the repository's name, then the path inside it.
SOURCES = {
    "pubfig83": "Face-Recognition/train",
    "glint": "Face-Applications/datasets/celebrity_images",
    "celeba": "CelebA_Dataset/Datasets",
    "yale": "recognition/CroppedYale",
    "utk": "facial_recognition_bias/data",
}
CELEBA_IDENTITIES = "CelebA_Dataset/identity_CelebA.txt"


def stage_celeba(root: Path, identities_file: Path, staged: Path) -> dict:
    """Link CelebA's celeb_K folders (train and test parts) as celeba_<CelebA identity>/, held-out ones left out."""
    if not identities_file.is_file():
        raise FaceNetError(
            f"{identities_file} not found: take identity_CelebA.txt from the newest commit of "
            "Nikhil4902/CelebA_Dataset (see docs/TRAINING_DATA.md)"
        )
    identity = dict(line.split() for line in identities_file.read_text().splitlines() if line.strip())
    left_out, linked = set(), 0
    for photo in sorted(root.glob("*/celeb_*/*")):
        if photo.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if photo.name not in identity:
            raise FaceNetError(f"{photo.name} is not in {identities_file}; is it the file of the same dataset?")
        person = int(identity[photo.name])
        if person in HELD_OUT_CELEBA:
            left_out.add(person)
            continue
        linked += _link(photo, staged / f"celeba_{person}" / photo.name)
    return {"held_out_identities_present": sorted(left_out), "photos_linked": linked}


def stage_yale(root: Path, staged: Path) -> dict:
    """Link the face images of each yaleBnn folder (the .bad files and notes stay behind)."""
    linked = sum(_link(p, staged / p.parent.name / p.name) for p in sorted(root.glob("yaleB*/*.pgm")))
    return {"photos_linked": linked}


def stage_utk(root: Path, staged: Path) -> dict:
    """Link every UTKFace photo once, as one folder. UTKFace names each photo by age, gender, race and
    time, and data/random_200 holds 2,000 of data/images again (re-encoded: other bytes, same name), so a
    name seen before, or bytes seen before, is the same photo."""
    names, digests, linked = set(), set(), 0
    for photo in sorted(root.rglob("*")):
        if photo.suffix.lower() not in IMAGE_SUFFIXES or not photo.is_file():
            continue
        digest = hashlib.sha256(photo.read_bytes()).hexdigest()
        if photo.name not in names and digest not in digests:
            linked += _link(photo, staged / "photos" / photo.name)
        names.add(photo.name)
        digests.add(digest)
    return {"photos_linked": linked}


def _link(target: Path, link: Path) -> int:
    """Link ``link`` to ``target`` (kept if already there); a name another photo holds gets the photo's
    content hash added, so no photo is dropped for its name."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and link.resolve() != target.resolve():
        digest = hashlib.sha256(target.read_bytes()).hexdigest()[:12]
        link = link.with_name(f"{link.stem}-{digest}{link.suffix}")
    if not link.is_symlink():
        link.symlink_to(target.resolve())
    return 1


def lfw_overlap(folders: list[Path], lfw_names: set[str]) -> list[str]:
    """Identity folders named like an LFW person (LFW writes spaces as underscores)."""
    names = {d.name for folder in folders for d in folder.iterdir() if d.is_dir()}
    lfw = {person_name(n) for n in lfw_names}
    return sorted(n for n in names if person_name(n) in lfw)


def count(folder: Path) -> dict:
    people = [d for d in folder.iterdir() if d.is_dir()]
    return {"people": len(people), "images": sum(1 for d in people for p in d.iterdir() if p.suffix == ".png")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sources",
        required=True,
        type=Path,
        help="folder holding the checked-out repositories (see docs/TRAINING_DATA.md)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (links, aligned crops, lists)")
    parser.add_argument(
        "--lfw",
        type=Path,
        default=Path("../shared/data/lfw"),
        help="LFW folder with images/<Name>/ (for the overlap list)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model file whose recipe and input size cut the faces (default: the installed default model)",
    )
    parser.add_argument("--workers", type=int, default=2, help="alignment processes")
    parser.add_argument("--only", nargs="*", choices=list(SOURCES), default=list(SOURCES), help="sources to build")
    args = parser.parse_args(argv)

    from facenet.embedder import ensure_default_model
    from facenet.models.modelfile import read_model_info

    info = read_model_info(args.model or ensure_default_model())
    settings = AlignSettings(recipe=Recipe.from_dict(info.recipe), size=info.input_size)
    missing = [s for s in args.only if not (args.sources / SOURCES[s]).is_dir()]
    if missing:
        print(
            f"not found under {args.sources}: {', '.join(SOURCES[s] for s in missing)}; check out the repositories "
            "listed in docs/TRAINING_DATA.md there",
            file=sys.stderr,
        )
        return 2
    summary: dict = {"recipe": info.recipe, "size": info.input_size, "sources": {}}
    for name in args.only:
        root, staged = args.sources / SOURCES[name], args.out / "staged" / name
        notes = {}
        if name == "celeba":
            notes = stage_celeba(root, args.sources / CELEBA_IDENTITIES, staged)
        elif name == "yale":
            notes = stage_yale(root, staged)
        elif name == "utk":
            notes = stage_utk(root, staged)
        else:
            staged = root  # already one folder per person
        print(f"{name}: aligning {staged}", file=sys.stderr)
        report = align_dataset(staged, args.out / "aligned" / name, settings, workers=args.workers)
        summary["sources"][name] = {
            **notes,
            "no_face": len(report.no_face),
            "unreadable": len(report.bad_image),
            **(
                count(args.out / "aligned" / name)
                if name != "utk"
                else {"images": sum(1 for _ in (args.out / "aligned" / name).rglob("*.png"))}
            ),
        }
    celebrities = [args.out / "aligned" / n for n in ("pubfig83", "glint") if (args.out / "aligned" / n).is_dir()]
    if (args.lfw / "images").is_dir() and celebrities:
        overlap = lfw_overlap(celebrities, {d.name for d in (args.lfw / "images").iterdir()})
        atomic_write_bytes(args.out / "lfw_overlap.txt", "".join(f"{n}\n" for n in overlap).encode())
        summary["lfw_overlap"] = len(overlap)
    summary["held_out_celeba"] = list(HELD_OUT_CELEBA)
    atomic_write_bytes(args.out / "summary.json", json.dumps(summary, indent=2).encode())
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
