"""Thresholds at fixed false-accept rates, and the open-set threshold they give for a gallery.

Verification's threshold maximises accuracy on balanced pairs; it is the wrong one for open-set
identification, where a stranger is compared with every enrolled face and is falsely accepted if
*any* of them is close enough: with N comparisons the false-accept rate grows about N-fold. So a
model file also stores thresholds at fixed per-comparison false-accept rates (FAR) from 1e-2 down
to 1e-8, what a gallery of 10^6 faces needs for a 1% stranger rate (``openset_threshold`` divides
the wanted rate among the comparisons, a union bound, and interpolates the table in log FAR).

- **Measured** entries are order statistics of every different-identity pair among the calibration
  faces, streamed in blocks (memory grows with the faces and the ~1% smallest distances, never with
  the pairs), where at least ``MIN_MEASURED`` pairs lie below them (or fewer, but at least one, where
  the data are too few for a tail model).
- **Extrapolated** entries come from a generalised Pareto model of the impostor tail (extreme value
  theory: the smallest distances below a low threshold follow it whatever the bulk looks like), fitted
  to the smallest ``TAIL_SHARE`` of the pairs, with a bootstrap interval, and never further than
  ``EXTRAPOLATION`` times below the smallest measured rate.
- Faces filed under the wrong name are left out (``probably_mislabelled``): in public collections a
  few are, and each adds "impostor" pairs as close as the same photo, which would decide the rarest
  rates (measured: with 0.6% of the faces flagged, the fitted tail of the default's calibration goes
  from heavy to light and its 1e-6 threshold from 0.735 to 0.957; RESULTS.md).
- Faces of sources whose people may overlap (two public collections can hold the same celebrity) are
  only paired within their own source (``groups``): a same-person pair counted as an impostor would
  decide the rarest rates.

Each entry records its kind, how many impostor pairs it rests on, and the share of same-identity pairs
that pass it per person (TAR, each person counted once), which is what a gallery of that size can
promise to enrolled people.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from facenet.distances import squared_l2
from facenet.errors import DataError

CALIBRATED_FARS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
DEFAULT_OPENSET_FAR = 1e-2  # chance that a stranger is taken for someone enrolled (LFW: RESULTS.md)
MIN_MEASURED = 100  # impostor pairs below a threshold for its rate to count as measured
TAIL_SHARE = 1e-4  # the tail model is fitted to this share of the smallest impostor distances...
MIN_TAIL = 500  # ...and to at least this many of them
EXTRAPOLATION = 100.0  # the tail model answers down to the smallest measured rate / this
MAX_MISLABELLED = 0.02  # more faces than this share flagged as mislabelled: none is dropped (a weak model)
BOOTSTRAP = 200  # refits of the tail model for its interval
BLOCK = 2048  # rows and columns of distances computed at once (16 MB of float32)
log = logging.getLogger(__name__)


def far_key(far: float) -> str:
    return f"{far:.0e}"


@dataclass(frozen=True)
class TailModel:
    """Generalised Pareto model of the impostor distances below ``u``: a share ``far_u`` of all pairs
    lies below ``u``, and u - d for those pairs follows GPD(``xi``, ``sigma``); ``fits`` are bootstrap
    refits (xi, sigma) for the interval."""

    u: float
    far_u: float
    xi: float
    sigma: float
    count: int
    fits: tuple = ()

    def threshold(self, far: float, xi: float | None = None, sigma: float | None = None) -> float:
        """The distance below which a share ``far`` (< ``far_u``) of the impostor pairs falls."""
        from scipy.stats import genpareto

        xi, sigma = (self.xi, self.sigma) if xi is None else (xi, sigma)
        return max(0.0, self.u - float(genpareto.isf(far / self.far_u, xi, scale=sigma)))

    def interval(self, far: float, level: float = 0.9) -> tuple[float, float]:
        """A bootstrap interval (``level``) of ``threshold(far)``."""
        values = [self.threshold(far, xi, sigma) for xi, sigma in self.fits]
        lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) if values else (math.nan, math.nan)
        return float(lo), float(hi)

    def far(self, threshold: float) -> float:
        """The model's share of impostor pairs below ``threshold`` (<= ``u``)."""
        from scipy.stats import genpareto

        return float(self.far_u * genpareto.sf(self.u - threshold, self.xi, scale=self.sigma))


def fit_tail(smallest: np.ndarray, pairs: int, seed: int = 0, bootstrap: int = BOOTSTRAP) -> TailModel:
    """The tail model from the sorted smallest impostor distances of ``pairs`` pairs in all; it is fitted to
    the smallest ``max(MIN_TAIL, TAIL_SHARE * pairs)`` of them (maximum likelihood, location fixed at u)."""
    from scipy.stats import genpareto

    count = min(len(smallest) - 1, max(MIN_TAIL, int(TAIL_SHARE * pairs)))
    if count < MIN_TAIL:
        raise DataError(
            f"the impostor tail needs at least {MIN_TAIL + 1} different-identity pairs, got {len(smallest)}"
        )
    u = float(smallest[count])
    excess = u - np.asarray(smallest[:count], np.float64)

    def fit(sample: np.ndarray) -> tuple[float, float]:
        xi, _, sigma = genpareto.fit(sample, floc=0.0)
        return float(xi), float(sigma)

    xi, sigma = fit(excess)
    rng = np.random.default_rng(seed)
    fits = tuple(fit(rng.choice(excess, len(excess))) for _ in range(bootstrap))
    return TailModel(u, count / pairs, xi, sigma, count, fits)


@dataclass(frozen=True)
class Calibration:
    """What ``calibrate`` measured: ``thresholds`` ("1e-03" -> squared L2; ``ModelInfo.far_thresholds``) and
    ``details`` (``ModelInfo.far_calibration``): pairs and faces used, the tail model, and per entry its
    kind ("measured" or "extrapolated"), the impostor pairs below it and the TAR it gives."""

    thresholds: dict
    details: dict


def calibrate(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    fars=CALIBRATED_FARS,
    on: str = "",
    seed: int = 0,
    drop_mislabelled: bool = True,
    bootstrap: int = BOOTSTRAP,
    against: np.ndarray | None = None,
) -> Calibration:
    """Thresholds at each rate of ``fars`` over every different-identity pair of ``embeddings`` (pairs only
    within the same ``groups`` value when given), measured where the data holds ``MIN_MEASURED`` pairs below
    them and extrapolated by the tail model below that; ``on`` says what the faces are, for the record.
    ``drop_mislabelled``: faces ``probably_mislabelled`` are left out (how many is recorded), unless more than
    ``MAX_MISLABELLED`` of them are: then it is the model that cannot tell the people apart yet (an early
    training check), not the labels, and every face stays; ``bootstrap``:
    refits of the tail model for the intervals. ``against``: the same faces made differently (row i the same
    photo, e.g. with a mask drawn on it): then every pair has one face from each set (``pair_distances``), and
    ``against`` decides which faces are mislabelled."""
    labels = np.asarray(labels)
    embeddings, against = _as_pairs(embeddings, against)
    judged = embeddings if against is None else against
    dropped = probably_mislabelled(judged, labels, groups) if drop_mislabelled else np.zeros(len(labels), bool)
    flagged = int(dropped.sum())
    if flagged > MAX_MISLABELLED * len(labels):  # that many: the model cannot tell these people apart yet
        dropped[:] = False
    if dropped.any():
        embeddings, labels = embeddings[~dropped], labels[~dropped]
        groups = None if groups is None else np.asarray(groups)[~dropped]
        against = None if against is None else against[~dropped]
    scanned = pair_distances(embeddings, labels, groups, keep_share=max(fars), against=against)
    pairs, smallest = scanned.impostor_count, scanned.smallest
    tail = fit_tail(smallest, pairs, seed, bootstrap) if len(smallest) > MIN_TAIL else None
    smallest_measured = MIN_MEASURED / pairs
    thresholds, entries = {}, {}
    for far in sorted(fars, reverse=True):
        rank = int(math.floor(far * pairs))
        extrapolate = tail is not None and smallest_measured / EXTRAPOLATION <= far < tail.far_u
        if rank >= MIN_MEASURED or (rank >= 1 and not extrapolate):  # few pairs are still data: pairs_below says
            threshold = float((smallest[rank - 1] + smallest[rank]) / 2)  # the midpoint of two order statistics
            entry = {"kind": "measured", "pairs_below": rank}
        elif extrapolate:
            threshold = tail.threshold(far)
            entry = {"kind": "extrapolated", "pairs_below": int(np.searchsorted(smallest, threshold))}
            if tail.fits:
                entry["interval"] = [round(v, 4) for v in tail.interval(far)]
        else:
            continue
        thresholds[far_key(far)] = round(threshold, 4)
        tar = scanned.tar(threshold)
        entry["tar"] = None if tar is None else round(tar, 4)
        entries[far_key(far)] = entry
    details = {
        "on": on,
        "faces": int(len(labels)),
        "people": scanned.people,
        "dropped_as_mislabelled": int(dropped.sum()),
        "flagged_as_mislabelled": flagged,
        "impostor_pairs": int(pairs),
        "genuine_pairs": int(len(scanned.genuine)),
        "entries": entries,
    }
    if tail is not None:
        details["tail"] = {"model": "genpareto", "u": tail.u, "far_u": tail.far_u, "xi": tail.xi, "sigma": tail.sigma}
        details["tail"]["fitted_pairs"] = tail.count
    return Calibration(thresholds, details)


def probably_mislabelled(embeddings: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """A mask of the faces nearer to another person's template than to their own (the mean of their person's
    other faces), within their group. Public face collections hold a few faces filed under the wrong name
    (a photo of Kate Moss under Katherine Heigl, the other person of a two-person photo): each makes dozens
    of "impostor" pairs as close as the same photo, which would decide the rarest rates. People with one
    face are never flagged."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    flagged = np.zeros(len(embeddings), bool)
    for rows in _parts(groups, len(embeddings)):
        x = embeddings[rows]
        _, code, counts = np.unique(np.asarray(labels)[rows], return_inverse=True, return_counts=True)
        sums = np.zeros((len(counts), x.shape[1]), np.float32)
        np.add.at(sums, code, x)
        templates = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        for start in range(0, len(x), BLOCK):
            part, own_code = x[start : start + BLOCK], code[start : start + BLOCK]
            own = sums[own_code] - part  # the person's template without this face
            own /= np.maximum(np.linalg.norm(own, axis=1, keepdims=True), 1e-12)
            to_own = squared_l2(part, own)
            to_others = squared_l2(part, templates, pairwise=True)
            to_others[np.arange(len(part)), own_code] = np.inf
            flagged[rows[start : start + BLOCK]] = (counts[own_code] > 1) & (to_others.min(axis=1) < to_own)
    return flagged


@dataclass(frozen=True)
class Pairs:
    """What ``pair_distances`` streamed: the count of different-identity pairs, the smallest of their distances
    (sorted), every same-identity distance (sorted) with its person (an index per group and label), and how
    many people (labels per group) there are."""

    impostor_count: int
    people: int
    smallest: np.ndarray
    genuine: np.ndarray
    genuine_person: np.ndarray

    def tar(self, threshold: float) -> float | None:
        """The share of a person's same-identity pairs closer than ``threshold``, averaged over people: each
        person counts once, however many photos (pairs grow with their square)."""
        if not len(self.genuine):
            return None
        people = np.bincount(self.genuine_person)
        passed = np.bincount(self.genuine_person, weights=self.genuine < threshold, minlength=len(people))
        return float(np.mean(passed[people > 0] / people[people > 0]))


def pair_distances(
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    keep_share: float = 1e-2,
    against: np.ndarray | None = None,
) -> Pairs:
    """Every pair once, only within the same ``groups`` value when given: the different-identity ones counted
    and the smallest ``keep_share`` of them kept, the same-identity ones all kept. With ``against`` (the same
    faces made another way, row for row), a pair is ``embeddings[i]`` with ``against[j]``, i != j: each
    unordered pair of faces counts twice, once each way round."""
    embeddings, against = _as_pairs(embeddings, against)
    labels = np.asarray(labels)
    parts = _parts(groups, len(labels))
    ways = 1 if against is None else 2
    pairs = ways * sum(_impostor_pairs(labels[rows]) for rows in parts)
    if pairs == 0:
        raise DataError("FAR calibration needs faces of at least two different people")
    keep = min(pairs, max(int(keep_share * pairs) + 2, MIN_TAIL + 1))
    scans = [_scan(embeddings[rows], labels[rows], keep, None if against is None else against[rows]) for rows in parts]
    smallest = np.sort(np.concatenate([s for s, _, _ in scans]))[:keep]
    offsets = np.cumsum([0] + [len(np.unique(labels[rows])) for rows in parts])
    genuine = np.concatenate([g for _, g, _ in scans])
    person = np.concatenate([p + offset for (_, _, p), offset in zip(scans, offsets)])
    order = np.argsort(genuine, kind="stable")
    return Pairs(pairs, int(offsets[-1]), smallest, genuine[order], person[order])


def _as_pairs(embeddings: np.ndarray, against: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The two sets as float32 arrays, ``against`` (if any) the same faces row for row."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if against is None:
        return embeddings, None
    against = np.ascontiguousarray(against, dtype=np.float32)
    if against.shape != embeddings.shape:
        raise DataError(f"against has shape {against.shape}, the embeddings {embeddings.shape}: not the same faces")
    return embeddings, against


def _parts(groups: np.ndarray | None, n: int) -> list[np.ndarray]:
    groups = np.zeros(n, np.int64) if groups is None else np.asarray(groups)
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def _impostor_pairs(labels: np.ndarray) -> int:
    _, counts = np.unique(labels, return_counts=True)
    n = int(counts.sum())
    return (n * n - int(np.sum(counts.astype(np.int64) ** 2))) // 2


def _scan(
    embeddings: np.ndarray, labels: np.ndarray, keep: int, against: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the ``keep`` smallest different-identity distances, every same-identity distance, its person's index
    in ``np.unique(labels)``), each pair once (with ``against``: rows of ``embeddings`` against columns of
    ``against``, every tile), from BLOCK x BLOCK tiles of distances: memory stays near ``keep`` + one tile
    whatever the pairs."""
    _, codes = np.unique(labels, return_inverse=True)
    smallest, genuine, person = np.empty(0, np.float32), [], []
    cut = np.inf  # once ``keep`` are held, larger distances cannot enter
    n = len(embeddings)
    columns = embeddings if against is None else against
    for r in range(0, n, BLOCK):
        for c in range(r if against is None else 0, n, BLOCK):
            d = squared_l2(embeddings[r : r + BLOCK], columns[c : c + BLOCK], pairwise=True)
            same = codes[r : r + BLOCK, None] == codes[None, c : c + BLOCK]
            if r == c:  # a diagonal tile: never a face with itself; each pair once unless ``against``
                kept = np.triu(np.ones(d.shape, bool), k=1) if against is None else ~np.eye(*d.shape, dtype=bool)
                same &= kept
                impostor = d[~same & kept]
            else:
                impostor = d[~same]
            genuine.append(d[same])
            person.append(np.broadcast_to(codes[r : r + BLOCK, None], d.shape)[same])
            smallest = np.concatenate([smallest, impostor[impostor < cut]])
            if len(smallest) > 2 * keep:
                smallest = np.partition(smallest, keep - 1)[:keep]
                cut = smallest.max()
    if len(smallest) > keep:
        smallest = np.partition(smallest, keep - 1)[:keep]
    if not genuine:
        return smallest, np.empty(0, np.float32), np.empty(0, np.int64)
    return smallest, np.concatenate(genuine), np.concatenate(person)


def openset_threshold(table: dict[str, float], far: float, comparisons: int) -> tuple[float, bool]:
    """The threshold for a gallery a stranger is compared ``comparisons`` times with, so the stranger is
    falsely accepted with probability ~``far``.

    Returns (threshold, exact): ``exact`` is False when the per-comparison FAR needed lies below the
    smallest calibrated one, so the strictest stored threshold is used and the real rate is higher.
    """
    if not table:
        raise DataError(
            "this model has no FAR calibration; run `facenet evaluate --write-thresholds` on "
            "labelled faces, or pass a threshold"
        )
    if not 0 < far < 1:
        raise DataError(f"FAR must be between 0 and 1, got {far}")
    logs, values = _log_table(table)
    wanted = math.log10(far / max(comparisons, 1))
    if wanted < logs[0]:
        return float(values[0]), False
    return float(np.interp(wanted, logs, values)), True


def table_far(table: dict[str, float], threshold: float) -> float:
    """The per-pair false-accept rate a FAR table gives ``threshold`` (log FAR interpolated between its
    entries, as ``openset_threshold`` reads it the other way; clipped to the table's range)."""
    logs, values = _log_table(table)
    return float(10 ** np.interp(threshold, values, logs))


def _log_table(table: dict) -> tuple[np.ndarray, np.ndarray]:
    points = sorted((float(k), v) for k, v in table.items())
    return np.log10([f for f, _ in points]), np.array([v for _, v in points], dtype=np.float64)


@dataclass(frozen=True)
class OpenSetPromise:
    """What a gallery of ``comparisons`` (per stranger query) can promise with a model at the asked
    stranger false-accept rate: the ``threshold`` used, the stranger rate it gives (``expected_far``:
    the asked one when ``met``, else the union bound at the strictest calibrated threshold), and the
    share of enrolled people's photos expected to pass it (``expected_tar``; None when the model's
    calibration does not record it). Without a calibration (``calibrated`` False) the rate is unknown:
    ``expected_far`` is NaN (None in ``as_dict``). ``masked``: the promise for a masked face against clean
    enrolments, from the model's masked table (``ModelInfo.masked``)."""

    threshold: float
    asked_far: float
    expected_far: float
    expected_tar: float | None
    comparisons: int
    met: bool
    calibrated: bool = True
    masked: bool = False

    @property
    def note(self) -> str:
        """One sentence for a person when the promise does not hold; empty when it does."""
        if not self.calibrated:
            return (
                "this model has no FAR calibration: the verification threshold is used, and strangers are "
                "accepted far more often than asked"
            )
        if self.met:
            return ""
        return (
            f"a stranger false-accept rate of {self.asked_far:g} is beyond this model's calibration at "
            f"{self.comparisons:,} comparisons: expect about {self.expected_far:.2g}"
        )

    @property
    def summary(self) -> str:
        """One line for a person: the stranger rate this gallery size gets, and the enrolled people's rate."""
        if not self.calibrated:
            return f"open set: {self.note}"
        asked = "as asked" if self.met else f"asked {self.asked_far:g}: beyond the model's calibration"
        tar = (
            "" if self.expected_tar is None else f"; enrolled people's photos identified: about {self.expected_tar:.1%}"
        )
        faces = " for masked faces" if self.masked else ""
        return (
            f"open set at {self.comparisons:,} comparison(s) per query{faces}: strangers taken for someone "
            f"enrolled: {self.expected_far:.2g} ({asked}){tar}"
        )

    def as_dict(self) -> dict:
        out = {
            "threshold": round(self.threshold, 4),
            "asked_far": self.asked_far,
            "expected_far": None if math.isnan(self.expected_far) else float(f"{self.expected_far:.3g}"),
            "expected_tar": self.expected_tar,
            "comparisons": self.comparisons,
            "met": self.met,
            "calibrated": self.calibrated,
            "compared_as": "masked" if self.masked else "plain",
        }
        if self.note:
            out["note"] = self.note
        return out


def openset_promise(info, far: float, comparisons: int, masked: bool = False) -> OpenSetPromise:
    """The open-set promise of a model (its ``ModelInfo``, or None for a model without one) for a gallery
    a stranger is compared ``comparisons`` times with (``Gallery.comparisons``), at stranger rate ``far``;
    ``masked``: for a masked face, from the model's masked table (the plain one where it has none)."""
    from facenet.occluder import masked_entry

    entry = masked_entry(info)
    if masked and entry:
        return _promise(entry["far_thresholds"], entry.get("far_calibration"), far, comparisons, True)
    table = getattr(info, "far_thresholds", None)
    if not table:
        threshold = float(getattr(info, "threshold", 0.0))
        return OpenSetPromise(threshold, far, math.nan, None, comparisons, False, calibrated=False)
    return _promise(table, getattr(info, "far_calibration", None), far, comparisons, False)


def _promise(table: dict, calibration: dict | None, far: float, comparisons: int, masked: bool) -> OpenSetPromise:
    threshold, met = openset_threshold(table, far, comparisons)
    if met:
        expected = far
    else:  # the strictest calibrated rate, compared with every enrolled face
        strictest = min(float(k) for k in table)
        expected = -math.expm1(max(comparisons, 1) * math.log1p(-strictest))
    entries = (calibration or {}).get("entries", {})
    tars = {k: e["tar"] for k, e in entries.items() if e.get("tar") is not None and k in table}
    tar = None
    if tars:
        logs, values = _log_table(tars)
        position = math.log10(max(far / max(comparisons, 1), 10 ** logs[0]))
        tar = round(float(np.interp(position, logs, values)), 4)
    return OpenSetPromise(threshold, far, expected, tar, comparisons, met, masked=masked)


def identification_promise(
    embedder, comparisons: int, far: float = DEFAULT_OPENSET_FAR, masked: bool = False
) -> OpenSetPromise:
    """``openset_promise`` for an embedder (its ``info``; or a ``ModelInfo`` itself), logging what it cannot
    keep; the open-set threshold of every command, the API and the service, which also put the promise (and its
    ``note``) in their answers. With several photos per person, ``comparisons`` is what a stranger is compared
    with under the gallery's policy (``Gallery.comparisons``)."""
    info = getattr(embedder, "info", None)
    promise = openset_promise(info if info is not None else embedder, far, comparisons, masked)
    if not promise.calibrated:
        log.info(
            "model %s has no FAR calibration: identification uses the verification threshold, which "
            "accepts a stranger about as often as the number of people enrolled times its pair FAR; "
            "calibrate with `facenet evaluate --write-thresholds`",
            getattr(embedder, "name", None) or getattr(embedder, "id", "?"),
        )
    elif not promise.met:
        log.info("%s; using the strictest threshold %.4f", promise.note, promise.threshold)
    return promise


def face_promises(embedder, comparisons: int, covered, far: float = DEFAULT_OPENSET_FAR) -> list[OpenSetPromise]:
    """Each face's ``identification_promise``: the masked one where ``covered`` says its lower half is
    (``facenet.occluder.lower_face_covered``; a model without a masked table answers with its plain one), the
    plain one for every other face. Why: a masked face lies farther from everyone, its own enrolment included,
    so the plain threshold rejects far more masked people than it needs to keep the stranger rate (RESULTS.md,
    "Masked probes against clean enrolments")."""
    plain = identification_promise(embedder, comparisons, far)
    if not np.any(covered):
        return [plain] * len(covered)
    masked = identification_promise(embedder, comparisons, far, masked=True)
    return [masked if c else plain for c in covered]


def identification_threshold(embedder, comparisons: int, far: float = DEFAULT_OPENSET_FAR) -> float:
    """The threshold of ``identification_promise``."""
    return identification_promise(embedder, comparisons, far).threshold
