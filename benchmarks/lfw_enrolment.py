"""Few photos per person (issue 13): open-set identification with 1, 3 or 5 enrolled photos per person,
under each gallery aggregation policy (``facenet.gallery.policy``), with clean and masked probes.

Known people: every LFW person with at least ``--min-images`` (6) photos (``--limit-people``: that many,
evenly spread over the sorted names). Each gets their first 1, 3 or 5 photos (by file name) enrolled in
a temporary ``facenet.gallery.Gallery``; the probes are the same for the three: their photos after the
fifth, plus as many photos of people with fewer photos (never enrolled), spread evenly over them.
Masked probes: the same probe photos with a surgical mask drawn on (``facenet.occlusion``, "eval"
looks, placed from MTCNN's landmarks); enrolment photos always stay clean.

Metrics per (photos enrolled, policy, probes):

* rank-1: share of known probes whose top person is right (closed set, no threshold);
* DIR@FAR=1%: the threshold that accepts 1% of the unknown probes (their top person's score), and the
  share of known probes whose top person is right AND within it (detection and identification rate);
* FAR at the model's open-set thresholds (from its FAR table, for a wanted FAR of 1%; the verification
  threshold for a model without one, e.g. dlib) for as many comparisons as there are enrolled people,
  and as there are enrolled faces; ``identify_counts`` says which of the two ``facenet identify`` uses
  under the policy (``Gallery.comparisons``).

Every photo is embedded once: clean embeddings in ``--cache DIR/<model>.npz``, masked ones in
``<model>.mask.npz``. Photos where no face is found are embedded from a centred crop (as
``facenet evaluate`` does, the same for every model) and counted; their paths are kept beside the
cache (``<model>[.mask].noface.txt``), so a run that reads the cache still counts them.

    .venv/bin/python benchmarks/lfw_enrolment.py --images ../shared/data/lfw/images --cache /tmp/enrol \\
        --json enrol_default.json
    .venv/bin/python benchmarks/lfw_enrolment.py --model dlib-cpp --images ../shared/data/lfw/images \\
        --cache /tmp/enrol --json enrol_dlib.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

from facenet.commands.core import add_model_options, embedder_from_args
from facenet.errors import FaceNetError
from facenet.evaluate.calibrate import identification_threshold
from facenet.evaluate.protocol import embed_paths
from facenet.fileio import atomic_write_bytes
from facenet.gallery import Gallery, Record
from facenet.gallery.policy import parse_policy

HERE = Path(__file__).resolve().parent
ENROLLED = (1, 3, 5)
DEFAULT_POLICIES = "nearest,mean-of-2,mean-of-3,template"
WANTED_FAR = 0.01


class NoFaceLog:
    """An embedder that notes each photo where the wrapped one found no face (and used the centre).

    Photos go through one at a time so each is known (MTCNN and dlib work photo by photo anyway); the
    paths are appended to ``log`` as they happen, so an interrupted run loses none.
    """

    def __init__(self, embedder, log: Path):
        self.embedder, self.log = embedder, log
        self.name, self.embedding_size = embedder.name, embedder.embedding_size

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        rows = []
        for image in images:
            before = self.embedder.fallbacks
            rows.append(self.embedder.embed([image], batch_size=1)[0])
            if self.embedder.fallbacks > before:
                with open(self.log, "a") as fh:
                    fh.write(f"{image}\n")
        return np.stack(rows)


def embed_counted(embedder, paths: list[Path], cache: Path, batch_size: int) -> tuple[dict, dict]:
    """({path: embedding} for ``paths``, counts of photos embedded and where no face was found), embedding only
    what the cache lacks."""
    log = cache.with_suffix(".noface.txt")
    emb, failed = embed_paths(NoFaceLog(embedder, log), paths, "none", batch_size, True, cache)
    if failed:  # the centre fallback always yields a crop; a photo that cannot even be read lands here
        print(f"{len(failed)} photos could not be embedded and are left out", file=sys.stderr)
    no_face = set(log.read_text().splitlines()) if log.exists() else set()
    emb = {p: emb[p] for p in paths if p in emb}  # the cache may hold other photos too
    return emb, {"photos": len(emb), "no_face": sum(str(p) in no_face for p in emb)}


def load_embedders(args):
    """(embedder, the same with a mask drawn on each photo), both with the centred-crop fallback."""
    from facenet.align import get_detector
    from facenet.occlusion import OccludingEmbedder

    if args.model == "dlib-cpp":
        from facenet.baselines.dlib_model import DlibEmbedder

        embedder = DlibEmbedder(on_no_face="center")
    else:
        embedder = embedder_from_args(args, which="central")  # LFW labels the middle face
        embedder.fallback_detector = get_detector("center")
    return embedder, OccludingEmbedder(embedder, "mask")


def rates(top_person: np.ndarray, top_score: np.ndarray, truth: np.ndarray, model_thresholds: dict) -> dict:
    """Open-set figures from each probe's top person and score; ``truth`` is -1 for unknown probes."""
    known = truth >= 0
    right = (top_person == truth) & known
    strangers = np.sort(top_score[~known])
    accepted = int(np.floor(WANTED_FAR * len(strangers)))  # accept exactly these many strangers: scores < t
    threshold = float(strangers[accepted]) if accepted < len(strangers) else float("inf")
    out = {
        "rank1": float(right[known].mean()),
        "dir_threshold": threshold,
        "dir": float((right & (top_score < threshold))[known].mean()),
        "far_at_dir_threshold": float((strangers < threshold).mean()),
    }
    for label, t in model_thresholds.items():
        out[f"far_at_{label}"] = float((top_score[~known] < t).mean())
        out[f"dir_at_{label}"] = float((right & (top_score < t))[known].mean())
    return out


def evaluate(embedder, names, enrol_emb, probes: np.ndarray, truth: np.ndarray, policy: str, count: int) -> dict:
    """Enrol each person's first ``count`` photos in a temporary gallery scored by ``policy``; score the probes."""
    records = [Record(n, e[:count], [""] * len(e[:count])) for n, e in zip(names, enrol_emb)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        Gallery.open(Path(tmp) / "g.db", embedder.name, embedder.embedding_size, policy=policy) as gallery,
    ):
        gallery.enroll_many(records)
        matches = gallery.identify(probes, k=1)
        comparisons = gallery.comparisons()
    index = {n: i for i, n in enumerate(names)}
    top_person = np.array([index[m[0].name] for m in matches])
    top_score = np.array([m[0].distance for m in matches])
    faces = sum(len(r.embeddings) for r in records)
    thresholds = {
        "people_threshold": identification_threshold(embedder, len(names)),
        "faces_threshold": identification_threshold(embedder, faces),
    }
    return {
        **rates(top_person, top_score, truth, thresholds),
        **thresholds,
        "identify_counts": "people" if comparisons == len(names) < faces else "faces",
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default=None,
        help="model file, a shipped model's name (reid, dlib), or 'dlib-cpp' (dlib's own C++ pipeline) "
        "(default: the installed default model)",
    )
    ap.add_argument("--images", type=Path, required=True, help="folder with one sub-folder of photos per person")
    ap.add_argument("--ext", default="jpg", help="image file extension (default: jpg)")
    ap.add_argument("--min-images", type=int, default=6, help="photos a person needs to be 'known' (default: 6)")
    ap.add_argument("--limit-people", type=int, help="keep this many known people, evenly spread (for speed)")
    ap.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help=f"comma-separated gallery policies to compare (default: {DEFAULT_POLICIES})",
    )
    ap.add_argument("--cache", type=Path, required=True, help="folder keeping the embeddings (one file per model)")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--batch-size", type=int, default=32)
    add_model_options(ap, model_option=False)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except FaceNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args) -> int:
    sys.path.insert(0, str(HERE))
    from lfw_identification import split_people

    policies = [parse_policy(p.strip()).name for p in args.policies.split(",") if p.strip()]
    if args.min_images <= max(ENROLLED):
        raise FaceNetError(
            f"--min-images must be above {max(ENROLLED)}: known people need probes beyond the photos enrolled"
        )
    embedder, masking = load_embedders(args)
    known, unknown = split_people(args.images, args.ext, args.min_images, args.limit_people, enrolled=max(ENROLLED))
    args.cache.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", embedder.name)
    known_probes = [p for ps in known.values() for p in ps[max(ENROLLED) :]]
    clean, clean_count = embed_counted(
        embedder, [p for ps in known.values() for p in ps] + unknown, args.cache / f"{stem}.npz", args.batch_size
    )
    masked, masked_count = embed_counted(
        masking, known_probes + unknown, args.cache / f"{stem}.mask.npz", args.batch_size
    )

    # a person takes part only when all five enrolment photos were embedded: the same people for 1, 3 and 5
    names = [n for n, ps in known.items() if all(p in clean for p in ps[: max(ENROLLED)])]
    enrol_emb = [np.stack([clean[p] for p in known[n][: max(ENROLLED)]]) for n in names]
    result = {
        "model": embedder.name,
        "images_dir": str(args.images),
        "min_images": args.min_images,
        "limit_people": args.limit_people,
        "known_people": len(names),
        "embedded": {"clean": clean_count, "masked": masked_count},
        "rows": [],
    }
    for probe_kind, emb in (("clean", clean), ("masked", masked)):
        queries = [(p, i) for i, n in enumerate(names) for p in known[n][max(ENROLLED) :] if p in emb] + [
            (p, -1) for p in unknown if p in emb
        ]
        probes = np.stack([emb[p] for p, _ in queries])
        truth = np.array([t for _, t in queries])
        result[f"{probe_kind}_probes"] = {"known": int((truth >= 0).sum()), "unknown": int((truth < 0).sum())}
        for count in ENROLLED:
            for policy in policies:
                row = evaluate(embedder, names, enrol_emb, probes, truth, policy, count)
                result["rows"].append({"probes": probe_kind, "enrolled": count, "policy": policy, **row})
                print(
                    f"{probe_kind:6} {count} {policy:10} rank-1 {100 * row['rank1']:6.2f}%  "
                    f"DIR@FAR=1% {100 * row['dir']:6.2f}%",
                    file=sys.stderr,
                )
    print(table(result))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(f"results written to {args.json}")
    return 0


def table(r: dict) -> str:
    clean, masked = r["embedded"]["clean"], r["embedded"]["masked"]
    lines = [
        f"{r['model']}: {r['known_people']} known people; clean probes {r['clean_probes']['known']} known + "
        f"{r['clean_probes']['unknown']} unknown, masked probes {r['masked_probes']['known']} + "
        f"{r['masked_probes']['unknown']}; no face found (centre crop used) in {clean['no_face']} of "
        f"{clean['photos']} clean and {masked['no_face']} of {masked['photos']} masked photos",
        "",
        "| probes | enrolled | policy | rank-1 | DIR@FAR=1% (threshold) | FAR at the people-count threshold | "
        "FAR at the faces-count threshold |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        used = {row["identify_counts"]: "**"}  # bold: the threshold `facenet identify` uses under this policy
        lines.append(
            f"| {row['probes']} | {row['enrolled']} | {row['policy']} | {100 * row['rank1']:.2f}% | "
            f"{100 * row['dir']:.2f}% ({row['dir_threshold']:.4f}) | {used.get('people', '')}"
            f"{100 * row['far_at_people_threshold']:.2f}%{used.get('people', '')} "
            f"({row['people_threshold']:.4f}) | {used.get('faces', '')}"
            f"{100 * row['far_at_faces_threshold']:.2f}%{used.get('faces', '')} "
            f"({row['faces_threshold']:.4f}) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
