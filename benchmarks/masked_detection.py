"""Face detection on real photos of people wearing masks: the share of photos where each detector finds a face.

Data: the Real-World Masked Face Dataset, part 1 (1,194 photos, not identity-labelled, some with
several people). Get it with
    git clone https://github.com/X-zhangyang/Real-World-Masked-Face-Dataset
    git -C Real-World-Masked-Face-Dataset checkout b6772855cc581f42b851dc53b78d4ba852cc3860
and pass ``--images Real-World-Masked-Face-Dataset/RWMFD_part_1``. Every photo holds at least one
masked face, so a photo where a detector finds nothing is a miss. Also reported: photos per second,
and the photos each detector missed (``--misses FILE`` writes them as JSON for a look).

    .venv/bin/python benchmarks/masked_detection.py --images RWMFD_part_1 --limit 1194
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    from facenet.align import get_detector
    from facenet.data.images import load_image
    from facenet.errors import FaceNetError

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True, help="RWMFD_part_1 folder (or any folder of masked faces)")
    ap.add_argument("--detectors", default="mtcnn,yunet,dlib", help="comma-separated detectors (default: all three)")
    ap.add_argument("--limit", type=int, default=None, help="evenly spread subset of this many photos")
    ap.add_argument("--limit-dlib", type=int, default=None, help="smaller subset for dlib's slow HOG detector")
    ap.add_argument("--misses", type=Path, default=None, help="write the missed photos per detector here (JSON)")
    args = ap.parse_args(argv)
    photos = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    if not photos:
        print(f"no photos under {args.images}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_embedding import machine_line

    print(machine_line(0))
    print(f"{'detector':10s} {'photos':>7s} {'found':>7s} {'rate':>7s} {'photos/s':>9s}")
    missed = {}
    for name in args.detectors.split(","):
        limit = args.limit_dlib if name == "dlib" and args.limit_dlib else args.limit
        chosen = photos[:: max(1, len(photos) // limit)][:limit] if limit else photos
        try:
            detector = get_detector(name)
        except FaceNetError as exc:
            print(f"{name:10s} skipped: {exc}")
            continue
        found, misses, start = 0, [], time.perf_counter()
        for photo in chosen:
            try:
                faces = detector.detect(load_image(photo))
            except FaceNetError:
                faces = []
            found += bool(faces)
            if not faces:
                misses.append(str(photo.relative_to(args.images)))
        seconds = time.perf_counter() - start
        missed[name] = misses
        print(f"{name:10s} {len(chosen):7d} {found:7d} {100 * found / len(chosen):6.1f}% {len(chosen) / seconds:9.2f}")
    if args.misses:
        args.misses.write_text(json.dumps(missed, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
