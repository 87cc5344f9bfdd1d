"""MTCNN (Zhang et al. 2016) in plain torch: P-Net proposals -> R-Net refinement -> O-Net boxes + 5 landmarks.

The networks' attribute names follow the published PyTorch weights shipped in the
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), which are loaded with
``torch.load(weights_only=True)``; the package itself is never imported (it needs torchvision).
The cascade reproduces facenet-pytorch's ``detect_face``: image pyramid with factor 0.709 from a
20 px minimum face, area-interpolated resizing, thresholds 0.6/0.7/0.7, NMS 0.5 per scale then
0.7, and a final "min"-overlap NMS after O-Net. Sandberg's TF ``det*.npy`` files are not read:
they are pickled dicts, and the project never unpickles weights.

One addition: a photo where the standard thresholds find nothing is searched again with lower
ones (``retry_thresholds``, 0.5/0.4/0.5). Faces behind masks lose the mouth and nose the
refinement stages look for: on 1,194 real photos of masked people the retry raised MTCNN's
detection rate from 79.9% to 87.5% (RESULTS.md); photos where a face is found at the standard
thresholds are unaffected.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate

from facenet.align.base import Detection, check_image
from facenet.errors import FaceNetError

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.5.3"


class PNet(nn.Module):
    """Fully convolutional 12x12 proposal net: face probability + box offsets on a stride-2 grid."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """24x24 refinement net."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.dense4(_flatten_tf(x)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """48x48 output net: box offsets, 5 landmarks (x1..x5, y1..y5 relative to the box), probability."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_tf(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def _flatten_tf(x: torch.Tensor) -> torch.Tensor:
    """Flatten in the (W, H, C) order the weights were converted from (TF/Caffe layout)."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """Folder holding pnet.pt, rnet.pt, onet.pt: ``weights``, else $FACENET_MTCNN_WEIGHTS, else the facenet-pytorch wheel."""
    candidates = [weights] if weights else []
    if not weights and os.environ.get("FACENET_MTCNN_WEIGHTS"):
        candidates.append(os.environ["FACENET_MTCNN_WEIGHTS"])
    if not candidates:
        spec = importlib.util.find_spec("facenet_pytorch")  # locates the package without importing it
        if spec and spec.submodule_search_locations:
            candidates += [Path(p) / "data" for p in spec.submodule_search_locations]
    for folder in map(Path, candidates):
        if all((folder / f).is_file() for f in WEIGHT_FILES):
            return folder
    where = ", ".join(str(c) for c in candidates) or "no facenet-pytorch installation"
    raise FaceNetError(f"MTCNN weights ({', '.join(WEIGHT_FILES)}) not found in {where}; "
                       f"install them with `{INSTALL_HINT}` or pass a folder holding them")


class MTCNNDetector:
    """MTCNN face detector. ``weights``: folder with pnet.pt/rnet.pt/onet.pt (default: the facenet-pytorch wheel)."""

    name = "mtcnn"

    def __init__(self, weights: str | os.PathLike | None = None, min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 device: str | torch.device = "cpu",
                 retry_thresholds: tuple[float, float, float] | None = (0.5, 0.4, 0.5)):
        folder = find_weights(weights)
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor
        self.retry_thresholds = tuple(retry_thresholds) if retry_thresholds else None
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, file in zip((self.pnet, self.rnet, self.onet), WEIGHT_FILES):
            try:
                net.load_state_dict(torch.load(folder / file, map_location="cpu", weights_only=True))
            except Exception as exc:  # corrupt or foreign file: name it instead of a torch traceback
                raise FaceNetError(f"{folder / file}: not usable MTCNN weights ({exc}); "
                                   f"reinstall with `{INSTALL_HINT}`") from None
            net.to(self.device).eval()

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[Detection]:
        if self.device.type != "cpu":
            return self._detect(image)
        # The cascade is hundreds of tiny convolutions: extra threads only add synchronisation,
        # and on a busy CPU they spin (measured on 2 loaded cores: 41 ms/photo on 1 thread, 1.7 s on 2).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._detect(image)
        finally:
            torch.set_num_threads(threads)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        image = check_image(image)
        img = torch.from_numpy(image.astype(np.float32)).to(self.device).permute(2, 0, 1)[None]
        found = self._cascade(img, self.thresholds)
        if not found and self.retry_thresholds:
            found = self._cascade(img, self.retry_thresholds)
        return found

    def _cascade(self, img: torch.Tensor, thresholds) -> list[Detection]:
        boxes = self._propose(img, thresholds[0])
        if len(boxes):
            boxes = self._refine(img, boxes, thresholds[1])
        if not len(boxes):
            return []
        boxes, points = self._output(img, boxes, thresholds[2])
        return [Detection(b[:4].tolist(), b[4], p) for b, p in zip(boxes, points)]

    def _scales(self, h: int, w: int) -> list[float]:
        scale = 12.0 / self.min_face_size
        side = min(h, w) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _propose(self, img: torch.Tensor, threshold: float) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> squared candidate boxes (N, 5: x1 y1 x2 y2 score)."""
        h, w = img.shape[2:]
        found = []
        for scale in self._scales(h, w):
            reg, prob = self.pnet(_normalise(interpolate(img, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")))
            prob, reg = prob[0, 1].cpu().numpy(), reg[0].cpu().numpy()
            ys, xs = np.nonzero(prob >= threshold)
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            cand = np.concatenate([np.floor((2 * cells + 1) / scale), np.floor((2 * cells + 12) / scale),
                                   prob[ys, xs][:, None], reg[:, ys, xs].T], axis=1)
            found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        size = np.stack([cand[:, 2] - cand[:, 0], cand[:, 3] - cand[:, 1]] * 2, axis=1)
        boxes = np.concatenate([cand[:, :4] + cand[:, 5:9] * size, cand[:, 4:5]], axis=1)
        return _square(boxes)

    def _refine(self, img: torch.Tensor, boxes: np.ndarray, threshold: float) -> np.ndarray:
        """Stage 2: R-Net rescoring and box regression."""
        boxes, patches = _patches(img, boxes, 24)
        reg, prob = self.rnet(patches)
        score = prob[:, 1].cpu().numpy()
        keep = score > threshold
        boxes, reg = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1), reg.cpu().numpy()[keep]
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
        return _square(_regress(boxes[pick], reg[pick]))

    def _output(self, img: torch.Tensor, boxes: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Stage 3: O-Net final score, box regression and landmarks."""
        boxes, patches = _patches(img, boxes, 48)
        reg, marks, prob = self.onet(patches)
        score = prob[:, 1].cpu().numpy()
        keep = score > threshold
        boxes = np.concatenate([boxes[keep, :4], score[keep, None]], axis=1)
        reg, marks = reg.cpu().numpy()[keep], marks.cpu().numpy()[keep].astype(np.float64)
        bw, bh = boxes[:, 2:3] - boxes[:, 0:1] + 1, boxes[:, 3:4] - boxes[:, 1:2] + 1
        points = np.stack([bw * marks[:, :5] + boxes[:, 0:1] - 1, bh * marks[:, 5:] + boxes[:, 1:2] - 1], axis=2)
        boxes = _regress(boxes, reg)
        pick = nms(boxes[:, :4], boxes[:, 4], 0.7, method="min")
        return boxes[pick], points[pick]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the nets' box offsets (fractions of the inclusive box width/height)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _patches(img: torch.Tensor, boxes: np.ndarray, size: int) -> tuple[np.ndarray, torch.Tensor]:
    """Cut each box (clipped to the image, 1-based inclusive as in the original code) and resize it."""
    h, w = img.shape[2:]
    ibox = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(ibox[:, 0], 1), np.maximum(ibox[:, 1], 1)
    x2, y2 = np.minimum(ibox[:, 2], w), np.minimum(ibox[:, 3], h)
    ok = (x2 > x1 - 1) & (y2 > y1 - 1)
    crops = [interpolate(img[:, :, b - 1:d, a - 1:c], size=(size, size), mode="area")
             for a, b, c, d in zip(x1[ok], y1[ok], x2[ok], y2[ok])]
    patches = torch.cat(crops) if crops else img.new_zeros((0, 3, size, size))
    return boxes[ok], _normalise(patches)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first.

    Overlap is intersection over union, or over the smaller box (``method="min"``, used after
    O-Net so that a box inside a bigger one goes). Areas use inclusive pixel corners (+1).
    """
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        denom = np.minimum(area[i], area[rest]) if method == "min" else area[i] + area[rest] - inter
        order = rest[inter / denom <= threshold]
    return np.asarray(keep, dtype=np.int64)
