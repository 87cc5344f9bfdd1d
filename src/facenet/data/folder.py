"""Folder-per-identity datasets (``root/<identity>/<image>``), the layout of LFW, VGGFace2 and CASIA.

Several roots make one dataset (``facenet train A B C``): each root's identities are namespaced by the
root's folder name (``A/Jane_Doe``), so two people who share a folder name in two sources stay two
people, unless ``merge_names`` joins them on purpose (the same celebrity in two photo collections).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch.utils.data

from facenet.data.images import IMAGE_SUFFIXES, load_image
from facenet.errors import DataError


class FolderDataset(torch.utils.data.Dataset):
    """Images grouped by identity folder; ``dataset[i]`` is ``(H,W,3 uint8 image, label)``.

    Identities are the sorted sub-folder names (labels 0..C-1 in that order); images inside
    each are sorted too, so the sample order is reproducible. Hidden files and files with
    other extensions are ignored; identities with fewer than ``min_images`` images are dropped.
    ``class_sources[c]`` lists the roots (indices into ``roots``) identity ``c`` came from.
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        extensions: Sequence[str] = tuple(sorted(IMAGE_SUFFIXES)),
        min_images: int = 1,
        merge_names: bool = False,
    ):
        roots = [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]
        if not roots:
            raise DataError("no dataset folder given")
        names = [r.resolve().name for r in roots]
        if len(roots) > 1 and not merge_names and len(set(names)) < len(names):
            raise DataError(
                f"two dataset folders share the name {sorted(n for n in names if names.count(n) > 1)[0]!r}, "
                "which namespaces their identities; give each source folder its own name"
            )
        exts = _suffixes(extensions)
        found: dict[str, list[tuple[Path, int]]] = {}  # identity -> (image, index of its root)
        for index, (folder_root, name) in enumerate(zip(roots, names)):
            for identity, paths in _identity_folders(folder_root, exts).items():
                key = identity if len(roots) == 1 else person_name(identity) if merge_names else f"{name}/{identity}"
                found.setdefault(key, []).extend((path, index) for path in paths)
        kept = sorted(key for key, images in found.items() if len(images) >= min_images)
        if not kept:
            raise DataError(
                f"{', '.join(map(str, roots))}: no identity has at least {min_images} images; lower min_images"
            )
        self.root, self.roots = roots[0], roots
        self.class_sources = [sorted({s for _, s in found[key]}) for key in kept]
        self.sample_sources = np.array([s for key in kept for _, s in found[key]], dtype=np.int64)
        self._set(kept, [[path for path, _ in found[key]] for key in kept])

    def _set(self, classes: list[str], paths_per_class: list[list[Path]]) -> None:
        self.classes = classes
        self.samples = [(path, label) for label, paths in enumerate(paths_per_class) for path in paths]
        self.labels = np.array([label for _, label in self.samples], dtype=np.int64)
        self.images_per_class = np.bincount(self.labels, minlength=len(classes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        return load_image(path), label

    def path(self, index: int) -> Path:
        return self.samples[index][0]

    def class_weights(self, source_weights: Sequence[float] | None) -> np.ndarray | None:
        """Sampling weight of each identity such that the identities of root ``s`` together weigh
        ``source_weights[s]`` (an identity merged from several roots takes the mean of its shares)."""
        if source_weights is None:
            return None
        if len(source_weights) != len(self.roots) or min(source_weights) < 0 or not sum(source_weights) > 0:
            raise DataError(
                f"--source-weights needs {len(self.roots)} non-negative numbers (one per dataset "
                f"folder, not all zero); got {list(source_weights)}"
            )
        people = np.bincount([s for sources in self.class_sources for s in sources], minlength=len(self.roots))
        share = np.asarray(source_weights, np.float64) / np.maximum(people, 1)
        return np.array([share[sources].mean() for sources in self.class_sources])

    def summary(self) -> dict:
        """People and images per root and in all (recorded in a run and its model file)."""
        people = np.bincount([s for sources in self.class_sources for s in sources], minlength=len(self.roots))
        images = np.bincount(self.sample_sources, minlength=len(self.roots))
        return {
            "people": len(self.classes),
            "images": len(self.samples),
            "sources": [
                {"folder": str(r), "people": int(p), "images": int(i)} for r, p, i in zip(self.roots, people, images)
            ],
        }


def person_name(folder_name: str) -> str:
    """A person's name as sources agree on it: LFW writes "George_W_Bush" where PubFig83 writes "George W
    Bush", so underscores count as spaces (and runs of them as one)."""
    return " ".join(folder_name.replace("_", " ").split())


def _suffixes(extensions: Sequence[str]) -> set[str]:
    """File suffixes to read, lower case with their dot (``jpg`` and ``.JPG`` both give ``.jpg``)."""
    return {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}


def _identity_folders(root: Path, exts: set[str]) -> dict[str, list[Path]]:
    """{identity folder name: sorted image paths} of one dataset root."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}; expected one sub-folder of images per identity")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"{root}: no identity sub-folders; put each person's images in their own folder (root/<name>/<image>)"
        )
    found = {
        f.name: sorted(
            p for p in f.iterdir() if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()
        )
        for f in folders
    }
    if not any(found.values()):
        raise DataError(f"{root}: no images with extensions {', '.join(sorted(exts))} in its identity folders")
    return found


class ImageFiles(torch.utils.data.Dataset):
    """Every image under a folder (any depth), without identities: photos that only a teacher labels."""

    def __init__(self, roots: Sequence[str | Path], extensions: Sequence[str] = tuple(sorted(IMAGE_SUFFIXES))):
        exts = _suffixes(extensions)
        self.roots = [Path(r) for r in roots]
        self.paths: list[Path] = []
        self.per_root: list[int] = []
        for root in self.roots:
            if not root.is_dir():
                raise DataError(f"folder of unlabelled photos not found: {root}")
            found = sorted(
                p
                for p in root.rglob("*")
                if p.suffix.lower() in exts
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
            )
            if not found:
                raise DataError(f"{root}: no images with extensions {', '.join(sorted(exts))}")
            self.paths += found
            self.per_root.append(len(found))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return load_image(self.paths[index])

    def path(self, index: int) -> Path:
        return self.paths[index]

    def summary(self) -> list[dict]:
        """Photos per folder (recorded in a run and its model file)."""
        return [{"folder": str(r), "images": n} for r, n in zip(self.roots, self.per_root)]
