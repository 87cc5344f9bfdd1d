"""How a person enrolled with several faces is scored against a query face: the aggregation policy.

A gallery records its policy when it is created (``Gallery.open(..., policy=...)``, ``facenet gallery
enroll --policy``, ``facenet serve --policy``); a gallery written before policies existed reads as
``nearest``, which is what it always did. Scores are squared L2, smaller is closer, and the open-set
threshold applies to them as to a single distance.

* ``nearest``: the smallest distance over the person's faces; one photo decides. More photos can only
  bring a person closer, to the right queries and to strangers alike.
* ``mean-of-K`` (K >= 2, e.g. ``mean-of-3``): the mean of the distances to the person's K nearest faces
  (all of them when they have fewer); one lucky or unlucky photo counts less.
* ``template``: the distance to the person's template, the L2-normalised mean of their faces; one
  comparison per person, however many photos.

The default is ``template``, measured on LFW (``benchmarks/lfw_enrolment.py``; RESULTS.md, "Few
photos per person"): with 3 or 5 photos per person it identifies the most people at a 1% stranger
false-accept rate, for our network and dlib's, with clean and with masked probes; closed-set rank-1
hardly depends on the policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from facenet.errors import GalleryError

DEFAULT_POLICY = "template"
LEGACY_POLICY = "nearest"  # galleries that predate policies scored people this way
CHOICES = "nearest, mean-of-K (K >= 2, e.g. mean-of-3), template"
_MEAN_OF = re.compile(r"mean-of-(\d+)")


@dataclass(frozen=True)
class Policy:
    """A parsed policy: ``name`` as recorded in the gallery, ``k`` faces averaged (1 for nearest)."""

    name: str
    k: int = 1

    @property
    def uses_template(self) -> bool:
        return self.name == "template"

    def comparisons(self, people: int, faces: int) -> int:
        """How many single-photo comparisons a stranger's best score counts as, for the open-set threshold
        (``facenet.evaluate.calibrate.identification_threshold`` divides the wanted FAR by it).

        ``nearest`` compares the stranger with every face. A ``template`` (the normalised mean of n photos)
        lies nearer to strangers than one photo does: measured on LFW, counting every face keeps its
        false-accept rate near the one asked for, counting people lets it grow with n. ``mean-of-K``
        averages away the lucky face: one comparison per person (RESULTS.md, "Few photos per person").
        """
        return people if self.k > 1 else faces

    def score(self, face_distances: np.ndarray, template_distance: float | None = None) -> float:
        """The person's score from the distances to ALL their faces (and to their template)."""
        if self.uses_template:
            assert template_distance is not None, "a template policy scores by the template's distance"
            return float(template_distance)
        if self.k == 1:
            return float(face_distances.min())
        nearest = np.partition(face_distances, min(self.k, len(face_distances)) - 1)[: self.k]
        return float(nearest.mean())


def parse_policy(name: str | None) -> Policy:
    """The policy called ``name`` (``None``: the default), or a GalleryError listing the choices."""
    name = DEFAULT_POLICY if name is None else str(name).strip()
    if name in ("nearest", "template"):
        return Policy(name)
    match = _MEAN_OF.fullmatch(name)
    if match and int(match.group(1)) >= 2:
        return Policy(f"mean-of-{int(match.group(1))}", int(match.group(1)))
    raise GalleryError(f"unknown gallery policy {name!r}; choose one of: {CHOICES}")


def templates(vectors: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owners, one template per owner): the L2-normalised mean of each owner's unit rows."""
    people, row_owner = np.unique(owners, return_inverse=True)
    sums = np.zeros((len(people), vectors.shape[1]), np.float64)
    np.add.at(sums, row_owner, vectors)
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return people, sums.astype(np.float32)
