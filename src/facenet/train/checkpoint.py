"""Atomic training checkpoints: a run killed at any moment resumes exactly where it left off.

A checkpoint holds everything the next step depends on (weights, optimiser and
schedule state, loss-head state, the step counter and the torch RNG state);
batches and augmentations are pure functions of (seed, step), so nothing else
is needed for a resumed run to end bit-for-bit where an uninterrupted one ends.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from facenet.errors import TrainingError
from facenet.fileio import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(run_dir: str | Path, state: dict) -> Path:
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(run_dir: str | Path) -> dict | None:
    """The last checkpoint of a run, or None when it has none yet; never unpickles arbitrary objects."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise TrainingError(
            f"{path} is unreadable ({str(exc).splitlines()[0]}); remove it to restart the run from scratch"
        ) from None
