"""LFW-style pairs files: ``name i j`` (same person) and ``name1 i name2 j`` (different people).

A file may start with a header ``F N`` (F folds, each N matched then N mismatched pairs:
LFW View 2's ``10 300``) or ``N`` (one fold, View 1's ``1100``); without a header the whole
file is one fold. Images resolve to ``<images>/<name>/<name>_<iiii>.<ext>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facenet.errors import DataError

FORMAT_HINT = "expected 'name i j' (same person) or 'name1 i name2 j' (different people)"


@dataclass(frozen=True)
class Pair:
    path1: Path
    path2: Path
    same: bool
    fold: int


@dataclass
class PairSet:
    """The usable pairs, plus those naming images that do not exist (reported, not fatal)."""

    pairs: list[Pair]
    missing: list[Pair]
    n_folds: int

    @property
    def same(self) -> np.ndarray:
        return np.array([p.same for p in self.pairs], dtype=bool)

    @property
    def folds(self) -> np.ndarray:
        return np.array([p.fold for p in self.pairs], dtype=np.int64)


def image_path(images_dir: str | os.PathLike, name: str, index: int, ext: str = "jpg") -> Path:
    return Path(images_dir) / name / f"{name}_{index:04d}.{ext.lstrip('.')}"


def read_pairs(
    pairs_file: str | os.PathLike, images_dir: str | os.PathLike, ext: str = "jpg", folds: int | None = None
) -> PairSet:
    """Parse ``pairs_file``; ``folds`` re-splits the pairs into that many folds (e.g. for header-less files)."""
    try:
        lines = Path(pairs_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read pairs file {pairs_file}: {exc}") from exc
    numbered = [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise DataError(f"{pairs_file}: no pairs found; {FORMAT_HINT}")
    header = _header(pairs_file, *numbered[0])
    if header:
        numbered = numbered[1:]
    n_folds, per_class = header or (1, None)

    where = str(pairs_file)
    parsed = [_parse_line(where, n, fields) for n, fields in numbered]
    if header:
        _check_layout(where, parsed, n_folds, per_class, numbered)
        fold_of = [i // (2 * per_class) for i in range(len(parsed))]
    else:
        fold_of = [0] * len(parsed)

    all_pairs = [
        Pair(image_path(images_dir, n1, i1, ext), image_path(images_dir, n2, i2, ext), matched, f)
        for (n1, i1, n2, i2, matched), f in zip(parsed, fold_of)
    ]
    if folds is not None:
        all_pairs, n_folds = resplit(all_pairs, folds), folds
    present = {path for path in {q for p in all_pairs for q in (p.path1, p.path2)} if path.is_file()}
    usable = [p for p in all_pairs if p.path1 in present and p.path2 in present]
    missing = [p for p in all_pairs if not (p.path1 in present and p.path2 in present)]
    return PairSet(usable, missing, n_folds)


def resplit(pairs: list[Pair], n_folds: int) -> list[Pair]:
    """Assign folds so each holds an equal share of the matched and of the mismatched pairs, in file order."""
    if n_folds < 1:
        raise DataError(f"the number of folds must be at least 1, got {n_folds}")
    out = []
    counts = {True: sum(p.same for p in pairs), False: sum(not p.same for p in pairs)}
    seen = {True: 0, False: 0}
    for p in pairs:
        out.append(Pair(p.path1, p.path2, p.same, seen[p.same] * n_folds // counts[p.same]))
        seen[p.same] += 1
    return out


def _header(pairs_file, line_no: int, fields: list[str]) -> tuple[int, int] | None:
    if not all(f.isdigit() for f in fields):
        return None
    if len(fields) == 1:
        n_folds, per_class = 1, int(fields[0])
    elif len(fields) == 2:
        n_folds, per_class = int(fields[0]), int(fields[1])
    else:
        raise DataError(
            f"{pairs_file}:{line_no}: a header is 'folds pairs_per_class' (e.g. '10 300'), got {len(fields)} numbers"
        )
    if n_folds < 1 or per_class < 1:
        raise DataError(f"{pairs_file}:{line_no}: header numbers must be positive, got {' '.join(fields)}")
    return n_folds, per_class


def _parse_line(where: str, line_no: int, fields: list[str]):
    """-> (name1, i1, name2, i2, is_matched_line)."""
    if len(fields) == 3:
        name1, a, b = fields
        name2 = name1
    elif len(fields) == 4:
        name1, a, name2, b = fields
    else:
        raise DataError(f"{where}:{line_no}: {FORMAT_HINT}, got {len(fields)} fields")
    for value in (a, b):
        if not value.isdigit() or int(value) < 1:
            raise DataError(f"{where}:{line_no}: image number {value!r} is not a positive integer; {FORMAT_HINT}")
    return name1, int(a), name2, int(b), len(fields) == 3


def _check_layout(where, parsed, n_folds, per_class, numbered) -> None:
    """A View 2 header promises folds of ``per_class`` matched then ``per_class`` mismatched lines."""
    expected = 2 * n_folds * per_class
    if len(parsed) != expected:
        raise DataError(
            f"{where}: the header promises {n_folds} folds x {2 * per_class} pairs = {expected} "
            f"lines, found {len(parsed)}"
        )
    for i, (_, _, _, _, matched) in enumerate(parsed):
        should_match = (i % (2 * per_class)) < per_class
        if matched != should_match:
            kind = "a matched 'name i j'" if should_match else "a mismatched 'name1 i name2 j'"
            raise DataError(
                f"{where}:{numbered[i][0]}: fold {i // (2 * per_class) + 1} expects {kind} line here "
                f"({per_class} matched then {per_class} mismatched per fold)"
            )
