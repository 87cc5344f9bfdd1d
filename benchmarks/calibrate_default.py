"""The default model's FAR table (issue 23): calibrated on LFW's half A and the LFW-free sources, measured on
LFW's half B.

Calibrates on every different-identity pair within each source (``face_sets.py``: LFW half A, PubFig83,
Glint sample, CelebA sample; pairs only within a source, since their people overlap), reports the peak
memory of the calibration itself, then counts for each threshold the share of LFW half B's
different-identity pairs below it (its people are never calibrated on). Prints the table for
``facenet/models/pretrained.py`` and writes everything to ``--json``.

    .venv/bin/python benchmarks/calibrate_default.py --faces ~/faces/aligned --lfw ../shared/data/lfw/images \\
        --cache /tmp/openset --json /tmp/openset/calibration.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import face_sets
import numpy as np

import facenet
from facenet.evaluate.calibrate import pair_distances


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, required=True, help="the aligned folders of scripts/prepare_training_data.py")
    ap.add_argument("--lfw", type=Path, required=True, help="LFW's images folder (half A calibrated on, B measured on)")
    ap.add_argument("--cache", type=Path, required=True, help="folder keeping the embeddings")
    ap.add_argument("--json", type=Path, help="write the table and the LFW check here")
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    embedder = facenet.load_model(detect=False)
    paths, labels, groups = face_sets.aligned_faces(args.faces, face_sets.CALIBRATION_SOURCES)
    emb = face_sets.embed_aligned(embedder, paths, args.cache / "aligned.reid.npz")
    lfw = face_sets.lfw_embedder()
    _, a_labels, a_emb = face_sets.lfw_faces(args.lfw, lfw, args.cache / "lfw-a.reid.npz", half="a")
    _, b_labels, b_emb = face_sets.lfw_faces(args.lfw, lfw, args.cache / "lfw-b.reid.npz", half="b")
    emb = np.concatenate([a_emb, emb])
    labels = np.concatenate([a_labels, labels])
    groups = np.concatenate([np.full(len(a_emb), "lfw-a"), groups])
    sources = ", ".join(f"{g} {np.sum(groups == g)}" for g in ("lfw-a",) + face_sets.CALIBRATION_SOURCES)
    on = f"LFW half A and LFW-free sources, pairs within each ({sources} faces)"
    result, seconds, peak = face_sets.timed_calibration(emb, labels, groups, on)
    print(f"embeddings {emb.nbytes / 2**20:.0f} MiB")
    d = result.details
    lfw = pair_distances(b_emb, b_labels, keep_share=2e-2)
    lfw_pairs = lfw.impostor_count
    print(f"measured on LFW half B: {len(b_emb):,} photos, {lfw_pairs:,} different-identity pairs")
    header = f"{'FAR':>6} {'threshold':>9} {'kind':>12} {'pairs below':>12} {'TAR':>6}  {'90% interval':>15}"
    print(header + f" {'B FAR':>9} {'x asked':>8} {'B TAR':>8}")
    check = {}
    for key, threshold in result.thresholds.items():
        entry = d["entries"][key]
        below = int(np.searchsorted(lfw.smallest, threshold))
        lfw_far, lfw_tar = below / lfw_pairs, lfw.tar(threshold)
        check[key] = {"lfw_pairs_below": below, "lfw_far": lfw_far, "lfw_tar": round(lfw_tar, 4)}
        interval = "-".join(f"{v:.4f}" for v in entry.get("interval", ())) or "-"
        print(
            f"{key:>6} {threshold:>9.4f} {entry['kind']:>12} {entry['pairs_below']:>12,} {entry['tar']:>6.3f}  "
            f"{interval:>15} {lfw_far:>9.2e} {lfw_far / float(key):>8.2f} {lfw_tar:>8.3f}"
        )
    print("\nfor facenet/models/pretrained.py:")
    print(f"    far_thresholds={result.thresholds!r},")
    print(f"    far_calibration={json.dumps(d)},")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "calibration": d,
                    "thresholds": result.thresholds,
                    "lfw": check,
                    "seconds": seconds,
                    "peak_mib": peak,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
