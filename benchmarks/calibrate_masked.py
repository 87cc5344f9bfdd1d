"""The default model's masked comparisons (issue 24, item 2): when a face counts as masked, and the thresholds
for a masked face compared with a clean one.

Calibrated on the LFW-free sources only (``face_sets.CALIBRATION_SOURCES``: PubFig83, the Glint sample, the
CelebA sample; pairs only within a source, since their people overlap), never on LFW, where
``masked_openset.py`` measures the result with masks the project never drew:

- ``covered_below``: the ``facenet.occluder.mask_sensitivity`` under which ``FALSE_ALARM`` of a seeded sample
  of the clean crops falls, so about that share of clean faces is compared as masked;
- the FAR table of a masked face against a clean one: each crop drawn with one of ``facenet.occlusion``'s
  training looks (mask, cloth mask, N95 in turn), every pair of a masked crop and another person's clean crop
  (``calibrate(..., against=clean)``, streamed in tiles, the tail model below the measured rates);
- ``threshold``: that table's threshold at the per-pair false-accept rate the plain verification threshold has
  in the plain table, so a masked pair is verified at the rate a clean one is.

Prints the ``masked`` entry for ``facenet/models/pretrained.py`` and writes it with the figures to ``--json``;
``--model FILE --write`` calibrates a model of your own (crops cut with its recipe: ``prepare_training_data.py``
cuts them with the default's) and stores the entry in its file, weights untouched, so that its masked faces are
compared as masked too.

    .venv/bin/python benchmarks/calibrate_masked.py --faces ~/faces/aligned --cache /tmp/openset \\
        --json /tmp/openset/masked.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import face_sets
import numpy as np

import facenet
from facenet.align.crop import template_points
from facenet.evaluate.calibrate import openset_threshold, table_far
from facenet.occluder import AS_MASKED_KINDS, mask_sensitivity
from facenet.occlusion import occlude

FALSE_ALARM = 0.02  # share of clean faces compared as masked
SENSITIVITY_SAMPLE = 3000  # clean crops the sensitivity cut is taken from


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--faces", type=Path, required=True, help="the aligned folders of scripts/prepare_training_data.py")
    ap.add_argument("--cache", type=Path, required=True, help="folder keeping the embeddings")
    ap.add_argument("--json", type=Path, help="write the masked entry and its figures here")
    ap.add_argument("--model", help="a model file or shipped name (default: the default model)")
    ap.add_argument("--write", action="store_true", help="store the entry in --model's file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.write and not args.model:
        ap.error("--write needs --model FILE: the shipped default's entry lives in facenet/models/pretrained.py")
    args.cache.mkdir(parents=True, exist_ok=True)
    embedder = facenet.load_model(args.model, detect=False)
    tag = "reid" if args.model is None else embedder.info.weights_id  # the default: calibrate_default.py's cache
    size, recipe = embedder.info.input_size, embedder.recipe
    points = template_points(size, recipe.margin, recipe.template)  # where the aligned crop put the landmarks
    paths, labels, groups = face_sets.aligned_faces(args.faces, face_sets.CALIBRATION_SOURCES)
    index = {str(p.resolve()): n for n, p in enumerate(paths)}

    def masked_looks(chunk):
        return embedder.embed_crops(
            [
                occlude(face_sets.read_crop(p, size), points, AS_MASKED_KINDS[n % 3], seed=n, variant="train")
                for p in chunk
                for n in [index[str(p.resolve())]]
            ]
        )

    clean = face_sets.embed_aligned(embedder, paths, args.cache / f"aligned.{tag}.npz")
    masked = face_sets.embed_cached(paths, args.cache / f"aligned-masked.{tag}.npz", masked_looks)

    sample = np.sort(np.random.default_rng(args.seed).choice(len(paths), SENSITIVITY_SAMPLE, replace=False))
    crops = [face_sets.read_crop(paths[i], size) for i in sample]
    started = time.perf_counter()
    sensitivity = mask_sensitivity(embedder, crops, clean[sample])
    per_face_ms = 1000 * (time.perf_counter() - started) / len(sample)
    covered_below = round(float(np.quantile(sensitivity, FALSE_ALARM)), 4)
    print(
        f"mask sensitivity of {len(sample):,} clean crops: quantiles 1/2/5/50% "
        f"{np.round(np.quantile(sensitivity, [0.01, 0.02, 0.05, 0.5]), 3).tolist()}; covered below {covered_below} "
        f"({per_face_ms:.1f} ms a face)"
    )

    sources = ", ".join(f"{g} {np.sum(groups == g)}" for g in face_sets.CALIBRATION_SOURCES)
    on = f"LFW-free sources, a training mask look on one face of each pair, pairs within each ({sources} faces)"
    result, seconds, peak = face_sets.timed_calibration(masked, labels, groups, on, against=clean)
    d = result.details
    far = table_far(embedder.info.far_thresholds, embedder.info.threshold)
    threshold = round(openset_threshold(result.thresholds, far, 1)[0], 4)
    print(f"plain verification threshold {embedder.info.threshold} is a per-pair FAR of {far:.2e}: masked {threshold}")
    print(f"{'FAR':>6} {'plain':>7} {'masked':>7} {'kind':>12} {'pairs below':>12} {'TAR':>6}")
    for key, value in result.thresholds.items():
        entry = d["entries"][key]
        plain = embedder.info.far_thresholds.get(key, float("nan"))
        print(f"{key:>6} {plain:7.4f} {value:7.4f} {entry['kind']:>12} {entry['pairs_below']:12,} {entry['tar']}")
    masked_entry = {
        "covered_below": covered_below,
        "covered_calibration": {
            "on": f"{len(sample)} clean crops of the LFW-free sources",
            "false_alarm": FALSE_ALARM,
        },
        "threshold": threshold,
        "far_thresholds": result.thresholds,
        "far_calibration": d,
    }
    print(json.dumps(masked_entry, indent=4))
    if args.write:
        from facenet.embedder import model_file
        from facenet.models.modelfile import load_model_file, save_model

        path = model_file(args.model)
        model, info = load_model_file(path)
        save_model(model, path, dataclasses.replace(info, masked=masked_entry))
        print(f"masked comparisons written to {path}")
    if args.json:
        figures = {"seconds": seconds, "peak_mib": peak, "sensitivity_ms_per_face": per_face_ms}
        args.json.write_text(json.dumps({"masked": masked_entry, **figures}, indent=2))


if __name__ == "__main__":
    main()
