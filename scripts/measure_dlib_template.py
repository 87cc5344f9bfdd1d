"""Measure the ``dlib`` alignment template: where MTCNN's five landmarks fall inside dlib's own chips.

For LFW photos where dlib's HOG detector finds exactly one face, dlib's 5-point shape predictor
gives the chip (150 px, padding 0.25) and its mapping from the photo; MTCNN's landmarks of the
same face are mapped into chip coordinates. The mean over the photos is the template that
``facenet.align.crop.TEMPLATES["dlib"]`` holds (divided by 150). The mapping is checked by
warping each photo with it and comparing with dlib's own chip.

    .venv/bin/python scripts/measure_dlib_template.py --photos 400
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw" / "images"


def chip_mapping(details) -> np.ndarray:
    """dlib's photo -> chip affine map: the chip rectangle, rotated by its angle about its centre,
    onto the chip's corner pixels (0, 0), (cols-1, 0), (cols-1, rows-1)."""
    r, a = details.rect, details.angle
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = np.array([(r.left(), r.top()), (r.right(), r.top()), (r.right(), r.bottom())])
    src = ((corners - centre) @ rot.T + centre).astype(np.float32)
    dst = np.array([[0, 0], [details.cols - 1, 0], [details.cols - 1, details.rows - 1]], np.float32)
    return cv2.getAffineTransform(src, dst)


def main() -> None:
    from facenet.align import get_detector, select_faces
    from facenet.baselines.dlib_model import load_dlib
    from facenet.data.images import load_image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=LFW)
    ap.add_argument("--photos", type=int, default=400)
    args = ap.parse_args()
    dlib, models = load_dlib()
    hog = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    mtcnn = get_detector("mtcnn")
    files = sorted(args.images.glob("*/*.jpg"))
    random.Random(0).shuffle(files)
    points, warp_errors = [], []
    for path in files[: args.photos]:
        rgb = load_image(path)
        boxes = hog(rgb, 1)
        faces = select_faces(mtcnn.detect(rgb), rgb.shape, "central")
        if len(boxes) != 1 or not faces:
            continue
        shape = predictor(rgb, boxes[0])
        mapping = chip_mapping(dlib.get_face_chip_details(shape, 150, 0.25))
        chip = np.asarray(dlib.get_face_chip(rgb, shape, 150, 0.25)).astype(int)
        warped = cv2.warpAffine(rgb, mapping, (150, 150), flags=cv2.INTER_LINEAR).astype(int)
        warp_errors.append(np.abs(chip - warped)[5:-5, 5:-5].mean())
        points.append(faces[0].landmarks @ mapping[:, :2].T + mapping[:, 2])
    points = np.array(points)
    print(f"{len(points)} photos; mapping check: mean |dlib chip - our warp| = {np.mean(warp_errors):.2f} grey levels")
    print("template (150 px chip), mean:\n", np.round(points.mean(0), 2))
    print("spread (std, px):\n", np.round(points.std(0), 2))


if __name__ == "__main__":
    main()
