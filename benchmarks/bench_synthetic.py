"""Synthetic face rendering speed (one core) vs decoding the same images from PNG, and how
separable identities are by mean colour vs by a crude pixel feature.

    taskset -c 0 .venv/bin/python benchmarks/bench_synthetic.py [--size 160] [--n 500]
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from PIL import Image
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from facenet.data.images import load_image
from facenet.data.synthetic import SyntheticFaces


def rate(fn, items) -> float:
    start = time.perf_counter()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - start)


def grey16(images: np.ndarray) -> np.ndarray:
    x = np.stack(
        [np.asarray(Image.fromarray(im).convert("L").resize((16, 16), Image.BILINEAR), np.float32) for im in images]
    ).reshape(len(images), -1)
    x -= x.mean(1, keepdims=True)
    return x / (x.std(1, keepdims=True) + 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--identities", type=int, default=50)
    parser.add_argument("--per-identity", type=int, default=10)
    args = parser.parse_args()

    keys = [(k % args.identities, k) for k in range(args.n)]
    table = []
    for occlusion in (0.0, 0.5):
        faces = SyntheticFaces(args.identities, size=args.size, occlusion_prob=occlusion)
        faces.render(0, 0)  # warm-up
        table.append((f"render, occlusion_prob={occlusion}", rate(lambda key, faces=faces: faces.render(*key), keys)))
    pngs = []
    for key in keys:
        buf = io.BytesIO()
        Image.fromarray(faces.render(*key)).save(buf, "PNG")
        pngs.append(buf.getvalue())
    table.append(("peer: load_image(PNG bytes)", rate(load_image, pngs)))

    peer = table[-1][1]
    print(f"{'task (' + str(args.size) + 'x' + str(args.size) + ')':40s} {'img/s':>9s} {'vs PNG decode':>14s}")
    for name, value in table:
        print(f"{name:40s} {value:9.1f} {value / peer:14.2f}")

    ids, per = args.identities, args.per_identity
    faces = SyntheticFaces(ids, size=args.size)
    images = np.stack([faces.render(i, k) for i in range(ids) for k in range(per)])
    labels = np.repeat(np.arange(ids), per)
    train = np.tile(np.arange(per) < per // 2, ids)
    features = {
        "mean RGB (3 features)": images.reshape(len(images), -1, 3).mean(1),
        "16x16 grey, prewhitened": grey16(images),
    }
    print(f"\nheld-out identity accuracy, {ids} identities x {per} images, half for training (chance {1 / ids:.3f})")
    print(f"{'feature':28s} {'1-NN':>6s} {'centroid':>9s}")
    for name, x in features.items():
        accs = [
            (clf.fit(x[train], labels[train]).predict(x[~train]) == labels[~train]).mean()
            for clf in (KNeighborsClassifier(1), NearestCentroid())
        ]
        print(f"{name:28s} {accs[0]:6.3f} {accs[1]:9.3f}")


if __name__ == "__main__":
    main()
