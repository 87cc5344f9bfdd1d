"""Why strangers are taken for UTKFace faces at scale (issue 23): the figures behind RESULTS.md's "Why".

``openset_scale.py`` finds that at an asked 0.1% almost every stranger it accepts in large galleries matches
a UTKFace face. Three checks, on its caches (LFW half B, the default model, dlib as the judge on dlib's own
pipeline), counts and LFW names only (no photo is shown or saved):

* **infants**: the (half-B stranger photo, UTKFace face) pairs nearer than the default's 1e-6-per-pair
  threshold, per stranger person, with the ages UTKFace's file names give the faces they match;
* **the strangers themselves**: each stranger photo whose nearest UTKFace face lies within the
  ``--gallery``-distractor, one-photo gallery's 0.1% threshold, and whether dlib puts that pair within its
  own 1e-4 threshold (80% of same-person pairs) — i.e. probably the same person;
* **whether a two-network cleaning would be fair**: among LFW half A's different-person pairs within the
  default's 1e-5 / 1e-6 / 1e-7 thresholds, the share dlib puts within its 1e-4 / 1e-5 thresholds.

    .venv/bin/python benchmarks/openset_scale.py ...    # first: it fills the caches
    .venv/bin/python benchmarks/openset_diagnosis.py --faces ~/faces/aligned --lfw ../shared/data/lfw/images \\
        --cache /tmp/openset --json /tmp/openset/diagnosis.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import face_sets
import numpy as np
from openset_scale import judge_table

import facenet
from facenet.distances import squared_l2
from facenet.evaluate.calibrate import openset_promise


def utk_age(path: Path) -> int:
    """UTKFace names each photo ``<age>_<gender>_<race>_<date>``."""
    return int(path.name.split("_", 1)[0])


def close_pairs(queries: np.ndarray, refs: np.ndarray, threshold: float) -> np.ndarray:
    """(query, ref) index pairs nearer than ``threshold``, a chunk of queries at a time."""
    found = []
    for start in range(0, len(queries), 512):
        i, j = np.nonzero(squared_l2(queries[start : start + 512], refs, pairwise=True) < threshold)
        found.append(np.stack([i + start, j], axis=1))
    return np.concatenate(found) if found else np.empty((0, 2), np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, required=True, help="the aligned folders of scripts/prepare_training_data.py")
    ap.add_argument("--lfw", type=Path, required=True, help="LFW's images folder")
    ap.add_argument("--cache", type=Path, required=True, help="openset_scale.py's cache")
    ap.add_argument("--gallery", type=int, default=10_000, help="distractors in the gallery whose threshold is used")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    embedder = facenet.load_model(detect=False)
    info = embedder.info
    _, labels, emb = face_sets.lfw_faces(args.lfw, face_sets.lfw_embedder(), args.cache / "lfw-b.reid.npz", half="b")
    names, counts = np.unique(labels, return_counts=True)
    known_people = names[counts >= 6]
    stranger = ~np.isin(labels, known_people)
    utk_paths, _, _ = face_sets.aligned_faces(args.faces, ("utk",))
    utk = face_sets.embed_aligned(embedder, utk_paths, args.cache / "aligned.reid.npz")
    ages = np.array([utk_age(p) for p in utk_paths])
    s_emb, s_labels = emb[stranger].astype(np.float32), labels[stranger]

    pairs = close_pairs(s_emb, utk, info.far_thresholds["1e-06"])
    per_person = Counter(s_labels[pairs[:, 0]].tolist())
    infants = {
        "pairs": len(pairs),
        "utk_faces_aged_5_or_less": int(np.sum(ages <= 5)),
        "utk_faces": len(utk),
        "top_people": [
            {
                "person": person,
                "pairs": n,
                "photos": len(set(pairs[s_labels[pairs[:, 0]] == person, 0].tolist())),
                "utk_faces": len(set(pairs[s_labels[pairs[:, 0]] == person, 1].tolist())),
                "utk_age_10_50_90": np.percentile(
                    ages[pairs[s_labels[pairs[:, 0]] == person, 1]], [10, 50, 90]
                ).tolist(),
            }
            for person, n in per_person.most_common(5)
        ],
    }

    threshold = openset_promise(info, 1e-3, len(known_people) + args.gallery).threshold
    distance, match = face_sets.nearest(s_emb, utk)
    near = np.flatnonzero(distance < threshold)
    table, _ = judge_table(args.lfw, args.cache, (1e-4, 1e-5))
    b_judge, b_missed = face_sets.judge_own_chips(face_sets.lfw_photos(args.lfw, "b"), args.cache / "lfw-b.judge.npz")
    utk_judge, utk_missed = face_sets.judge_own_chips(
        face_sets.source_photos(args.faces, utk_paths), args.cache / "aligned.judge.npz"
    )
    seen = ~b_missed[stranger][near] & ~utk_missed[match[near]]
    judged = np.sum((b_judge[stranger][near] - utk_judge[match[near]]) ** 2, axis=1)
    themselves = {
        "threshold": threshold,
        "stranger_photos_near_a_utk_face": len(near),
        "seen_by_dlib": int(seen.sum()),
        "dlib_within_its_1e-4": int(np.sum(seen & (judged < table.thresholds["1e-04"]))),
        "people": {  # photos near a UTKFace face, and how many different UTKFace faces they are near
            person: [n, len(set(match[near][s_labels[near] == person].tolist()))]
            for person, n in Counter(s_labels[near].tolist()).most_common()
        },
    }

    a_paths = face_sets.lfw_photos(args.lfw, "a")
    _, a_labels, a_emb = face_sets.lfw_faces(
        args.lfw, face_sets.lfw_embedder(), args.cache / "lfw-a.reid.npz", half="a"
    )
    a_judge, a_missed = face_sets.judge_own_chips(a_paths, args.cache / "lfw-a.judge.npz")
    agreement = {}
    for key in ("1e-05", "1e-06", "1e-07"):
        i, j = close_pairs(a_emb.astype(np.float32), a_emb, info.far_thresholds[key]).T
        keep = (i < j) & (a_labels[i] != a_labels[j]) & ~a_missed[i] & ~a_missed[j]
        d = np.sum((a_judge[i[keep]] - a_judge[j[keep]]) ** 2, axis=1)
        agreement[key] = {
            "impostor_pairs": int(keep.sum()),
            **{f"dlib_within_its_{k}": int(np.sum(d < t)) for k, t in table.thresholds.items()},
        }

    report = {"infants": infants, "strangers_themselves": themselves, "lfw_a_agreement": agreement}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
