"""Open-set identification as galleries grow (issue 23; the MegaFace idea on our data).

Only LFW's half B (``face_sets.lfw_calibration_half``: half A is what the default's FAR table was
calibrated on). Its people with at least 6 photos are enrolled with their first 1 or 5 photos; their other
photos are the known probes; every photo of its people with fewer than 6 photos is a stranger probe.
Beside them, N distractor faces are enrolled, each as a person of its own (as MegaFace does): faces of
the LFW-free sources (``face_sets.py``: UTKFace, Extended Yale B, CelebA, and the PubFig83 / Glint people
who are not in LFW), in a seeded random order, N from 0 up to all of them. UTKFace and CelebA hold
celebrities, some of them LFW people: a stranger matching their photo is no false accept. With ``--clean
judge`` (the default) an independent judge (``face_sets.JUDGE``, not the model under test, looking at
every photo through dlib's own pipeline) removes the distractors it takes for a person of LFW's half B, as
MegaFace's distractors were cleaned of FaceScrub's people: those nearer than its ``--judge-far`` threshold
(calibrated on LFW half A's different-identity pairs) to any half-B photo, and every face of a CelebA
person one of whose faces it removes; ``--clean none`` keeps them, for the raw figures. A
``--cohort`` of the remaining faces is kept out of every gallery for score normalisation.

Per gallery size, policy (``facenet.gallery.policy``) and scoring (raw, or cohort-normalised):

* asked 1e-2 / 1e-3: the threshold the model's FAR table gives for that many comparisons
  (``facenet.evaluate.calibrate.openset_promise``, the product's path), the measured stranger
  false-accept rate there (share of stranger probes whose best person passes it, with the exact 95%
  Poisson interval of its count: at an asked 1e-3, 3,865 strangers expect about 4 events) and the DIR
  there (known probes whose best person is right and passes it), and where the accepted strangers' best
  match lies (an LFW person, or a distractor of which source); raw scores only, since the table is
  calibrated for raw distances;
* DIR at a measured 1% stranger rate (the threshold that accepts 1% of the stranger probes): how well the
  scores rank, whatever the calibration; the two decision rules tried are judged on this: cohort
  normalisation (z-score of the best score among the query's distances to the cohort) and a margin (the
  best score less its lead over the second-best person);
* rank-1 (closed set).

    .venv/bin/python benchmarks/openset_scale.py --faces ~/faces/aligned --lfw ../shared/data/lfw/images \\
        --cache /tmp/openset --json /tmp/openset/scale.json --plot docs/openset_scale.png
    (--clean none: the raw pool; --distractors pubfig83,glint,yale: people named and not in LFW;
     --distractors utk,yale: sources never calibrated on; --distractors lfw-a: LFW's half A, the
     strangers' own population, labelled and disjoint from them)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import face_sets
import numpy as np

import facenet
from facenet.distances import squared_l2
from facenet.evaluate.calibrate import calibrate, far_key, openset_promise, pair_distances, probably_mislabelled
from facenet.gallery.policy import parse_policy, templates

ASKED = (1e-2, 1e-3)
# The judge's rate per pair: over the ~7e7 pairs of UTKFace and half B's 6,835 photos about 70 look-alikes
# are taken for the person (each could be a false accept the cleaning hides), so the counts a rule 10x
# looser or stricter removes are reported beside it (a 10M-pair calibration may not reach 1e-7).
JUDGE_FAR = 1e-6
SIZES = (0, 100, 1_000, 3_000, 10_000, 30_000)
LFW_A = "lfw-a"  # LFW's half A as distractors (--distractors lfw-a,...)
ONE_PERSON = Path(__file__).with_name("lfw_one_person.tsv")


def poisson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval of the rate ``k / n`` of a rare event: what "within 2x" can be read against
    when only a few events are expected."""
    from scipy.stats import chi2

    tail = (1 - level) / 2
    low = chi2.ppf(tail, 2 * k) / 2 if k else 0.0
    return float(low / n), float(chi2.ppf(1 - tail, 2 * k + 2) / 2 / n)


def best_people(queries, people_faces, owners, distractors, policy, cohort=None) -> tuple[np.ndarray, ...]:
    """(best person index, its score, the second-best person's score) per query; enrolled people first (by
    ``owners``), then each distractor face as a person. Scores are squared L2 (or, with a cohort, z-scores of
    it against the query's distances to the cohort)."""
    policy = parse_policy(policy)
    people = int(owners.max()) + 1
    best = np.empty(len(queries), np.int64)
    score = np.empty(len(queries), np.float64)
    second = np.empty(len(queries), np.float64)
    _, template = templates(people_faces, owners) if policy.uses_template else (None, None)
    for start in range(0, len(queries), 512):
        q = queries[start : start + 512].astype(np.float32)
        if policy.uses_template:
            per_person = squared_l2(q, template, pairwise=True)
        else:  # Policy.score for every query and person at once
            d = squared_l2(q, people_faces, pairwise=True)
            per_person = np.full((len(q), people), np.inf)
            for p in range(people):
                cols = d[:, owners == p]
                k = min(policy.k, cols.shape[1])
                per_person[:, p] = np.sort(cols, axis=1)[:, :k].mean(axis=1)
        if len(distractors):
            per_person = np.concatenate([per_person, squared_l2(q, distractors, pairwise=True)], axis=1)
        if cohort is not None:
            c = squared_l2(q, cohort, pairwise=True)
            per_person = (per_person - c.mean(axis=1, keepdims=True)) / c.std(axis=1, keepdims=True)
        best[start : start + len(q)] = per_person.argmin(axis=1)
        two = np.partition(per_person, 1, axis=1)[:, :2]
        score[start : start + len(q)], second[start : start + len(q)] = two[:, 0], two[:, 1]
    return best, score, second


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, required=True, help="the aligned folders of scripts/prepare_training_data.py")
    ap.add_argument("--lfw", type=Path, required=True, help="LFW's images folder")
    ap.add_argument("--cache", type=Path, required=True, help="folder keeping the embeddings")
    ap.add_argument("--policies", default="nearest,mean-of-3,template")
    ap.add_argument(
        "--distractors",
        default=",".join(face_sets.DISTRACTOR_SOURCES + face_sets.CALIBRATION_SOURCES),
        help=f"sources of the distractor pool (default: every aligned source; {LFW_A}: LFW's half A)",
    )
    ap.add_argument(
        "--clean",
        choices=("judge", "none"),
        default="judge",
        help="remove the distractors the independent judge takes for a person of LFW half B (default), or not",
    )
    ap.add_argument("--judge-far", type=float, default=JUDGE_FAR, help="the judge's per-pair rate for 'same person'")
    ap.add_argument("--cohort", type=int, default=1000, help="distractor-pool faces kept out for normalisation")
    ap.add_argument(
        "--table-from", type=Path, help="a model file whose FAR table to use instead of the default's (same network)"
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, help="PNG of DIR and measured stranger rate against gallery size")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    embedder = facenet.load_model(detect=False)
    info = embedder.info
    if args.table_from:  # another table, the same embeddings: e.g. the LFW-only table of earlier releases
        from facenet.models.modelfile import read_model_info

        table = read_model_info(args.table_from)
        if table.weights_id != info.weights_id:
            raise SystemExit(f"{args.table_from} is another network than the default; its table does not apply")
        info = table
    lfw_paths, lfw_labels, lfw_emb = face_sets.lfw_faces(
        args.lfw, face_sets.lfw_embedder(), args.cache / "lfw-b.reid.npz", half="b"
    )
    sources = args.distractors.split(",")
    aligned = tuple(s for s in sources if s != LFW_A)
    pool_paths, pool_labels, pool_sources, overlap = face_sets.faces_not_in_lfw(args.faces, aligned)
    pool_emb = (
        face_sets.embed_aligned(embedder, pool_paths, args.cache / "aligned.reid.npz")
        if pool_paths
        else np.zeros((0, info.embedding_size), np.float32)
    )
    if LFW_A in sources:
        pool_paths, pool_labels, pool_sources, pool_emb = with_lfw_half_a(
            args, pool_paths, pool_labels, pool_sources, pool_emb
        )
    names, counts = np.unique(lfw_labels, return_counts=True)
    known_people = names[counts >= 6]
    stranger = ~np.isin(lfw_labels, known_people)
    same_as_lfw, cleaning = judge_lfw_people(args, pool_paths, pool_labels, pool_sources, lfw_labels, known_people)
    table = {k: v for k, v in info.far_thresholds.items() if float(k) <= 1e-3}
    below = pairs_below(lfw_emb[stranger], pool_emb, table)
    cleaning["default_pair_rates"] = {
        "raw": pair_rates(below, int(stranger.sum()), pool_sources, table),
        "cleaned": pair_rates(below[~same_as_lfw], int(stranger.sum()), pool_sources[~same_as_lfw], table),
    }
    pool_emb, pool_sources, pool_labels = pool_emb[~same_as_lfw], pool_sources[~same_as_lfw], pool_labels[~same_as_lfw]
    order = np.random.default_rng(0).permutation(len(pool_emb))
    cohort, pool_emb = pool_emb[order[: args.cohort]], pool_emb[order[args.cohort :]]
    pool_sources, pool_labels = pool_sources[order[args.cohort :]], pool_labels[order[args.cohort :]]
    stranger_photos = [p.name for p, s in zip(lfw_paths, stranger) if s]
    sizes = [n for n in SIZES if n < len(pool_emb)] + [len(pool_emb)]
    print(
        f"LFW half B: {len(known_people)} people enrolled, {int(stranger.sum())} stranger photos; distractor pool "
        f"{len(pool_emb):,} faces ({len(overlap)} people named in LFW and {int(same_as_lfw.sum())} faces the judge "
        f"takes for an LFW person left out), cohort {len(cohort)}; model {info.id}\n{json.dumps(cleaning)}"
    )
    rows = []
    for enrolled in (1, 5):
        enrol_idx, owners, probe_idx, truth = [], [], [], []
        for p, person in enumerate(known_people):
            idx = np.flatnonzero(lfw_labels == person)  # sorted paths: first photos by file name
            enrol_idx += list(idx[:enrolled])
            owners += [p] * enrolled
            probe_idx += list(idx[5:])
            truth += [p] * len(idx[5:])
        faces, owners, truth = lfw_emb[enrol_idx], np.array(owners), np.array(truth)
        known_q, stranger_q = lfw_emb[probe_idx], lfw_emb[stranger]
        policies = args.policies.split(",")
        for policy in policies if enrolled > 1 else policies[:1]:  # one photo each: every policy scores alike
            for n in sizes:
                distractors = pool_emb[:n]
                people, gallery_faces = len(known_people) + n, len(faces) + n
                comparisons = parse_policy(policy).comparisons(people, gallery_faces)
                row = {
                    "enrolled": enrolled,
                    "policy": policy,
                    "distractors": n,
                    "faces": gallery_faces,
                    "comparisons": comparisons,
                }
                for scoring, c in (("raw", None), ("cohort", cohort)):
                    kb, ks, k2 = best_people(known_q, faces, owners, distractors, policy, c)
                    sb, ss, s2 = best_people(stranger_q, faces, owners, distractors, policy, c)
                    right = kb == truth
                    row[scoring] = {"rank1": float(right.mean()), "dir_at_measured_1pct": dir_at(right, ks, ss)}
                    if scoring == "raw":  # the best score less its lead over the second person
                        row["margin"] = {"dir_at_measured_1pct": dir_at(right, 2 * ks - k2, 2 * ss - s2)}
                        for far in ASKED:
                            promise = openset_promise(info, far, comparisons)
                            passed = np.flatnonzero(ss <= promise.threshold)
                            accepted = len(passed)
                            matched = sb[passed] - len(known_people)  # < 0: an LFW person
                            where = np.where(matched < 0, "lfw", pool_sources[np.maximum(matched, 0)])
                            best = [
                                known_people[b] if b < len(known_people) else pool_labels[b - len(known_people)]
                                for b in sb[passed]
                            ]
                            row["raw"][f"{far:g}"] = {
                                "stranger_accepts": accepted,
                                "threshold": promise.threshold,
                                "met": promise.met,
                                "expected_far": promise.expected_far,
                                "expected_tar": promise.expected_tar,
                                "stranger_far": accepted / len(ss),
                                "stranger_far_95": poisson_interval(accepted, len(ss)),
                                "accepts_by_source": {
                                    str(k): int(v) for k, v in zip(*np.unique(where, return_counts=True))
                                },
                                "dir": float(np.mean(right & (ks <= promise.threshold))),
                                # which stranger photo was taken for whom: how LFW's errata were found
                                "accepted": [[stranger_photos[i], str(name)] for i, name in zip(passed, best)],
                            }
                rows.append(row)
                print(summary(row), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"model": info.id, "strangers": int(stranger.sum()), "cleaning": cleaning, "rows": rows}, indent=1
            )
        )
    if args.plot:
        plot(rows, args.plot)


def with_lfw_half_a(args, paths, labels, sources, emb) -> tuple:
    """The pool with LFW's half A added: the strangers' own population and kind of photo, labelled, and
    split from half B by name. The FAR table was calibrated on half A's pairs among themselves, never on its
    pairs with half B. Left out: the faces the calibration left out as filed under another name
    (``probably_mislabelled``), and every face of a half-A name that ``ONE_PERSON`` pairs with a half-B
    name (LFW files a few people under two names, and a few photos under the wrong one)."""
    a_paths, a_labels, a_emb = face_sets.lfw_faces(
        args.lfw, face_sets.lfw_embedder(), args.cache / "lfw-a.reid.npz", half="a"
    )
    mislabelled = probably_mislabelled(a_emb, a_labels)
    aliases = np.isin(a_labels, [name for pair in one_person() for name in pair])
    keep = ~mislabelled & ~aliases
    print(
        f"LFW half A: {len(a_paths)} photos; left out {int(mislabelled.sum())} probably filed under another "
        f"name and {int(aliases.sum())} of the people {ONE_PERSON.name} names"
    )
    return (
        paths + [p for p, k in zip(a_paths, keep) if k],
        np.concatenate([labels, np.char.add(f"{LFW_A}/", a_labels[keep])]),
        np.concatenate([sources, np.full(int(keep.sum()), LFW_A)]),
        np.concatenate([emb, a_emb[keep]]),
    )


def one_person() -> list[tuple[str, str]]:
    """The pairs of LFW names that are one person (or one photo), from ``ONE_PERSON``."""
    lines = [line.split("\t") for line in ONE_PERSON.read_text().splitlines() if line and not line.startswith("#")]
    return [(a, b) for a, b, _why in lines]


def judge_table(lfw: Path, cache: Path, fars) -> tuple:
    """(the judge's FAR table over the different-identity pairs of LFW half A, a mask of the half-A photos
    where dlib found no face), the judge seeing each photo through dlib's own pipeline."""
    paths = face_sets.lfw_photos(lfw, "a")
    emb, missed = face_sets.judge_own_chips(paths, cache / "lfw-a.judge.npz")
    return calibrate(emb, np.array([p.parent.name for p in paths]), fars=fars), missed


def judge_lfw_people(args, paths, labels, sources, lfw_labels, known_people) -> tuple[np.ndarray, dict]:
    """(mask of the pool faces the judge takes for a person of LFW half B, a summary in counts only). Only
    ``JUDGED_SOURCES`` are judged, and only with ``--clean judge``; where a source labels its people
    (CelebA), one face taken for an LFW person removes every face of that person. The judge sees every
    photo, the pool's and LFW's, through dlib's own pipeline (``face_sets.judge_own_chips``); its threshold is its
    ``--judge-far`` over the different-identity pairs of LFW's half A (never measured on), mislabels filtered,
    and its hit rate on half B's own pairs says how much of the overlap it can catch."""
    flagged = np.zeros(len(paths), bool)
    judged = np.isin(sources, face_sets.JUDGED_SOURCES)
    if args.clean == "none" or not judged.any():
        return flagged, {"clean": args.clean, "judged": {}}
    table, a_missed = judge_table(
        args.lfw, args.cache, (1e-4, 10 * args.judge_far, args.judge_far, args.judge_far / 10)
    )
    threshold = table.thresholds[far_key(args.judge_far)]
    b_emb, b_missed = face_sets.judge_own_chips(face_sets.lfw_photos(args.lfw, "b"), args.cache / "lfw-b.judge.npz")
    b_pairs = pair_distances(b_emb, lfw_labels, keep_share=1e-3)
    rows = np.flatnonzero(judged)
    emb, missed = face_sets.judge_own_chips(
        face_sets.source_photos(args.faces, [paths[i] for i in rows]), args.cache / "aligned.judge.npz"
    )
    distance, match = face_sets.nearest(emb, b_emb)
    strangers_seen = ~np.isin(lfw_labels, known_people) & ~b_missed
    judge_rates = pair_rates(
        pairs_below(b_emb[strangers_seen], emb[~missed], table.thresholds),
        int(strangers_seen.sum()),
        sources[rows][~missed],
        table.thresholds,
    )
    flagged[rows] = distance < threshold
    faces_flagged = flagged.copy()
    labelled = judged & (sources != "utk")  # UTKFace's photos are one person each
    flagged |= labelled & np.isin(labels, labels[flagged & labelled])
    pairs = len(rows) * len(b_emb)
    matched = lfw_labels[match[distance < threshold]]
    return flagged, {
        "clean": "judge",
        "judge": f"{face_sets.JUDGE} on dlib's own chips",
        "judge_far": args.judge_far,
        "judge_threshold": threshold,
        "judge_calibration": {k: table.details[k] for k in ("faces", "people", "impostor_pairs")},
        "judge_table": table.thresholds,
        "judge_entries": table.details["entries"],
        "judge_on_half_b": {
            "same_person_pairs_below": b_pairs.tar(threshold),
            "different_person_pairs_below": int(np.searchsorted(b_pairs.smallest, threshold)) / b_pairs.impostor_count,
        },
        "no_face_for_dlib": {"lfw_a": int(a_missed.sum()), "lfw_b": int(b_missed.sum()), "pool": int(missed.sum())},
        "judged": {s: int(np.sum(judged & (sources == s))) for s in face_sets.JUDGED_SOURCES},
        "flagged": {s: int(np.sum(faces_flagged & (sources == s))) for s in face_sets.JUDGED_SOURCES},
        "removed": {s: int(np.sum(flagged & (sources == s))) for s in face_sets.JUDGED_SOURCES},
        "people_removed": {s: len(set(labels[flagged & (sources == s)])) for s in face_sets.JUDGED_SOURCES},
        "removed_matching_a_stranger": int(np.sum(~np.isin(matched, known_people))),
        "lfw_people_matched": len(set(matched)),
        "judge_pair_rates": judge_rates,
        "pairs_judged": pairs,
        "false_flags_expected": args.judge_far * pairs,
        "removed_at": {far: int(np.sum(distance < t)) for far, t in table.thresholds.items()},
    }


def pairs_below(queries, pool, thresholds: dict) -> np.ndarray:
    """Per pool face, how many ``queries`` lie nearer than each threshold of a FAR table (pool x thresholds)."""
    limits = np.array(list(thresholds.values()))
    below = np.zeros((len(pool), len(limits)), np.int64)
    for start in range(0, len(queries), 512):
        d = squared_l2(queries[start : start + 512].astype(np.float32), pool, pairwise=True)
        below += (d[:, :, None] < limits).sum(axis=0)
    return below


def pair_rates(below: np.ndarray, queries: int, sources, thresholds: dict) -> dict:
    """Per source, the share of (query, pool face) pairs nearer than each threshold (``pairs_below``'s counts
    of ``queries`` queries): the table's per-pair promise checked on a population it was not calibrated on
    (LFW half B's strangers against each distractor source)."""
    out = {}
    for s in np.unique(sources):
        pairs = queries * int(np.sum(sources == s))
        out[str(s)] = {"pairs": pairs, **{k: float(n) / pairs for k, n in zip(thresholds, below[sources == s].sum(0))}}
    return out


def dir_at(right: np.ndarray, known: np.ndarray, strangers: np.ndarray, rate: float = 0.01) -> float:
    """Known probes named right within the score that accepts ``rate`` of the strangers."""
    return float(np.mean(right & (known <= np.quantile(strangers, rate))))


def summary(row: dict) -> str:
    r = row["raw"]
    asked = "  ".join(
        f"asked {k}: FAR {r[k]['stranger_far']:.4f} DIR {r[k]['dir']:.3f}{'' if r[k]['met'] else ' (not met)'}"
        for k in ("0.01", "0.001")
    )
    return (
        f"{row['enrolled']} photo(s) {row['policy']:<10} +{row['distractors']:>6,} distractors  "
        f"rank-1 {r['rank1']:.3f}  {asked}  DIR at a measured 1%: raw {r['dir_at_measured_1pct']:.3f}, "
        f"cohort {row['cohort']['dir_at_measured_1pct']:.3f}, margin {row['margin']['dir_at_measured_1pct']:.3f}"
    )


def plot(rows, path: Path) -> None:
    """DIR at the asked 1% and measured / asked stranger rate (1% and 0.1%) against the faces in the gallery;
    with one photo each the policies coincide, so one line (one policy measured) stands for them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    lines = [(1, None, "1 photo (every policy)")]
    five = sorted({r["policy"] for r in rows if r["enrolled"] == 5})
    lines += [(5, policy, f"{policy}, 5 photos") for policy in five]
    for enrolled, policy, label in lines:
        sel = [r for r in rows if r["enrolled"] == enrolled and policy in (None, r["policy"])]
        x = [r["faces"] for r in sel]
        line = a.plot(x, [r["raw"]["0.01"]["dir"] for r in sel], label=label)[0]
        for asked, style in (("0.01", "-"), ("0.001", ":")):
            ratio = [r["raw"][asked]["stranger_far"] / float(asked) for r in sel]
            b.plot(x, ratio, style, color=line.get_color(), label=f"{label}, asked {float(asked):g}")
    b.axhspan(0.5, 2.0, color="k", alpha=0.08, label="within 2x of asked")
    b.set_yscale("log")
    a.set_title("enrolled people identified (DIR) at an asked 1%")
    b.set_title("measured / asked stranger false-accept rate")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("faces in the gallery (LFW people + distractors)")
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    b.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
