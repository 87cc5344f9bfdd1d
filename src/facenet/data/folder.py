"""Folder-per-identity datasets (``root/<identity>/<image>``), the layout of LFW, VGGFace2 and CASIA."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch.utils.data

from facenet.data.images import IMAGE_SUFFIXES, load_image
from facenet.errors import DataError



class FolderDataset(torch.utils.data.Dataset):
    """Images grouped by identity folder; ``dataset[i]`` is ``(H,W,3 uint8 image, label)``.

    Identities are the sorted sub-folder names (labels 0..C-1 in that order); images inside
    each are sorted too, so the sample order is reproducible. Hidden files and files with
    other extensions are ignored; identities with fewer than ``min_images`` images are dropped.
    """

    def __init__(self, root: str | Path, extensions: Sequence[str] = tuple(sorted(IMAGE_SUFFIXES)), min_images: int = 1):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"dataset folder not found: {self.root}; "
                            "expected one sub-folder of images per identity")
        exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"{self.root}: no identity sub-folders; "
                            "put each person's images in their own folder (root/<name>/<image>)")
        found = {f.name: sorted(p for p in f.iterdir()
                                if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file())
                 for f in folders}
        if not any(found.values()):
            raise DataError(f"{self.root}: no images with extensions {', '.join(sorted(exts))} "
                            "in its identity folders")
        kept = {name: paths for name, paths in found.items() if len(paths) >= min_images}
        if not kept:
            raise DataError(f"{self.root}: no identity has at least {min_images} images; lower min_images")
        self._set(list(kept), [paths for paths in kept.values()])

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
