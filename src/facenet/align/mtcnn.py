"""MTCNN (Zhang et al. 2016): P-Net proposals -> R-Net refinement -> O-Net boxes + 5 landmarks.

The nets are torch modules whose attribute names follow the published PyTorch weights shipped in the
``facenet-pytorch`` wheel (``facenet_pytorch/data/{pnet,rnet,onet}.pt``), which are loaded with
``torch.load(weights_only=True)``; the package itself is never imported (it needs torchvision).
The cascade reproduces facenet-pytorch's ``detect_face``: image pyramid with factor 0.709 from a
20 px minimum face, area-interpolated resizing, thresholds 0.6/0.7/0.7, NMS 0.5 per scale then
0.7, and a final "min"-overlap NMS after O-Net. Sandberg's TF ``det*.npy`` files are not read:
they are pickled dicts, and the project never unpickles weights.

On the CPU the three nets run on ONNX Runtime by default (``backend="auto"``): exported once from
the torch modules, checked against them, and cached in ``$XDG_CACHE_HOME/facenet/onnx/mtcnn``.
On one thread that halved the time per 250 px LFW photo; on large photos the gain is smaller, as
P-Net on the biggest pyramid levels dominates there and runs about as fast on either. The torch
path stays for GPUs. Every resize (pyramid levels, R-/O-Net patches) uses the bins of torch's
``interpolate(mode="area")``, the resizing facenet-pytorch's boxes depend on, computed exactly from
a summed-area table (OpenCV's integral image) in numpy, all of a photo's boxes in one gather.
``detect_many`` gives R-Net and O-Net the candidates of all its photos together.

Proposals (``proposals``): P-Net's pyramid is most of MTCNN's cost on big photos (a 1333x1000
working copy: 12 levels, about 970,000 pixels, 1.8 GMAC), so by default YuNet (``facenet.align.yunet``,
shipped with the package) proposes the faces instead, and R-Net and O-Net refine them as they refine
P-Net's: boxes, scores and the 5 landmarks stay MTCNN's, so the models' crops stay the kind they were
measured with (RESULTS.md, issue 28). Where that finds nothing, the P-Net cascade runs. ``"pnet"``
(detector ``mtcnn-pnet``) is the published cascade alone, as facenet-pytorch runs it.

One addition: a photo where the standard thresholds find nothing is searched again with lower
ones (``retry_thresholds``, 0.5/0.4/0.5). Faces behind masks lose the mouth and nose the
refinement stages look for: on 1,194 real photos of masked people the retry raised MTCNN's
detection rate from 79.9% to 87.5% (RESULTS.md); photos where a face is found at the standard
thresholds are unaffected. And a last resort: where neither finds a face, YuNet's own detections (its
boxes, scores and 5 landmarks) are the answer. A mask drawn up to the nose bridge leaves R-Net and O-Net
nothing they know at any threshold, while YuNet still finds the face: on LFW photos with the held-out
renderer's surgical mask, MTCNN missed 26 of 1,200 and YuNet found 25 of them (RESULTS.md, "Masks the
project never drew").
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from facenet.align.base import CpuNet, Detection, box_iou, check_image
from facenet.errors import FaceNetError
from facenet.export import export_form
from facenet.fileio import atomic_write_bytes
from facenet.paths import cache_home

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
INSTALL_HINT = "pip install --no-deps facenet-pytorch==2.5.3"
BACKENDS = ("auto", "onnx", "torch")
OPSET = 17  # as for the embedding models' exports (facenet.export.DEFAULT_OPSET)
EXPORT_TOLERANCE = 1e-4  # max abs difference of any net output, ONNX Runtime vs PyTorch
CPU_BATCH = 32  # patches per R-/O-Net call on the CPU (see MTCNNDetector._run)
STAGE_OUTPUTS = ((4, 2), (4, 2), (4, 10, 2))  # widths of each net's outputs: box offsets, [landmarks,] probabilities
PROPOSALS = ("auto", "yunet", "pnet")
# O-Net run again up to this many times on each found face, on squares cut at sub-pixel bounds, its answers
# damped (each pass moves the face halfway to O-Net's new answer) so that where O-Net ends depends less on
# where the proposal started: this settles the landmarks (the crops follow them). Then up to LANDMARK_PASSES
# more on squares placed by those landmarks (``_landmark_square``) settle the box: boxes that placed their own
# squares stopped anywhere along a line of answers O-Net is content with (1.4% of the width apart on a
# reduced copy and at full size for one LFW face: its regression barely pulls a chin back); placed by
# landmarks, every reliable face found on a reduced copy lies within 1% of its full-size box
# (benchmarks/box_stability.py; RESULTS.md, issue 28).
SETTLE_PASSES = 8
# A face stops settling once O-Net's answer lies within this fraction of its square's side of where it stands
# (the damped passes then move it by half of that, the landmark passes all of it).
SETTLED = 0.002
# The landmark square: side = LANDMARK_SIDE x the geometric mean of the eye distance and the eyes-to-mouth
# distance, centre = the landmarks' mean raised (towards the eyes) by LANDMARK_RISE x the side: the medians of
# O-Net's own squares over 157 LFW faces of at least 60 px (spread: 7% of the side between quartiles). It
# stays within LANDMARK_SPAN of the cascade's square either way (a profile's eyes nearly meet).
LANDMARK_SIDE = 2.876
LANDMARK_RISE = 0.076
LANDMARK_SPAN = 1.5
LANDMARK_PASSES = 2
# A box settled on landmark squares is kept only where it overlaps the one its own squares gave by this much
# (intersection over union): otherwise O-Net answered for a neighbouring face (a face half outside an LFW photo,
# or one beside the subject, took the subject's box) or placed a turned face's box anew; the box it had stays.
LANDMARK_IOU = 0.7
# R-Net's input for a face YuNet finds: a square on YuNet's box centre, this fraction of its height on a side
# (the side of the squares MTCNN's own R-Net hands O-Net for the same faces: median over 331 LFW photos).
YUNET_SQUARE = 0.92
# The smallest face (px) YuNet's proposals are relied on for: LFW faces shrunk to 15 px were all found (80 of
# 80, as at 16-24 px; 79 at 14); a phone's 12 MP photo (shorter side 3000-3024 px) at the default 2% then
# decodes straight at 1/4 (750 px), with no resize.
YUNET_MIN_FACE = 15
log = logging.getLogger(__name__)


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
    """Folder holding pnet.pt, rnet.pt, onet.pt: ``weights``, else $FACENET_MTCNN_WEIGHTS, else the
    facenet-pytorch wheel."""
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
    raise FaceNetError(
        f"MTCNN weights ({', '.join(WEIGHT_FILES)}) not found in {where}; "
        f"install them with `{INSTALL_HINT}` or pass a folder holding them"
    )


class MTCNNDetector:
    """MTCNN face detector. ``weights``: folder with pnet.pt/rnet.pt/onet.pt (default: the facenet-pytorch wheel).

    ``backend``: "onnx" runs the three nets on ONNX Runtime (CPU only), "torch" on PyTorch (any
    device), "auto" picks ONNX Runtime on the CPU and PyTorch elsewhere, falling back to PyTorch with
    a warning when the export fails. Both find the same faces (tests compare them on LFW).
    ``proposals``: "yunet" (YuNet proposes, R-Net and O-Net refine; P-Net only where that finds
    nothing), "pnet" (the published cascade), "auto" (YuNet when OpenCV can load it, else P-Net).
    ``min_face_size`` (px): 15 with YuNet's proposals (``YUNET_MIN_FACE``), 20 with P-Net's.
    ``settle_passes``: damped O-Net passes over each found face (``SETTLE_PASSES``; 0: O-Net answers once).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        min_face_size: int | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str | torch.device = "cpu",
        retry_thresholds: tuple[float, float, float] | None = (0.5, 0.4, 0.5),
        backend: str = "auto",
        proposals: str = "auto",
        settle_passes: int = SETTLE_PASSES,
    ):
        if backend not in BACKENDS:
            raise FaceNetError(f"unknown MTCNN backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if proposals not in PROPOSALS:
            raise FaceNetError(f"unknown MTCNN proposals {proposals!r}; choose one of {', '.join(PROPOSALS)}")
        folder = find_weights(weights)
        self.proposer = None if proposals == "pnet" else _yunet(required=proposals == "yunet")
        self.name = "mtcnn-pnet" if proposals == "pnet" else "mtcnn"  # the registry name that builds it again
        if min_face_size is None:
            min_face_size = YUNET_MIN_FACE if self.proposer else 20
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor
        self.retry_thresholds = tuple(retry_thresholds) if retry_thresholds else None
        self.settle_passes = settle_passes
        self.device = torch.device(device)
        if backend == "onnx" and self.device.type != "cpu":
            raise FaceNetError(f"the MTCNN onnx backend runs on the CPU, not {self.device}; use backend='torch'")
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        for net, file in zip((self.pnet, self.rnet, self.onet), WEIGHT_FILES):
            try:
                net.load_state_dict(torch.load(folder / file, map_location="cpu", weights_only=True))
            except Exception as exc:  # corrupt or foreign file: name it instead of a torch traceback
                raise FaceNetError(
                    f"{folder / file}: not usable MTCNN weights ({exc}); reinstall with `{INSTALL_HINT}`"
                ) from None
            net.to(self.device).eval()
        self.sessions = None  # ONNX Runtime sessions for P-, R-, O-Net when backend is onnx
        if backend == "onnx" or (backend == "auto" and self.device.type == "cpu"):
            try:
                self.sessions = onnx_sessions(folder, (self.pnet, self.rnet, self.onet))
            except Exception as exc:  # export or ONNX Runtime failure (ORT raises its own untyped errors)
                if backend == "onnx":
                    raise FaceNetError(f"cannot run MTCNN on ONNX Runtime ({exc}); use backend='torch'") from None
                log.warning("MTCNN on ONNX Runtime unavailable (%s); using PyTorch", exc)
        self.backend = "onnx" if self.sessions else "torch"

    @property
    def thread_safe(self) -> bool:
        """On ONNX Runtime ``detect`` keeps no state between calls (sessions run concurrently), so threads
        may share this detector; the torch path changes torch's process-wide thread count."""
        return self.sessions is not None

    def detect(self, image: np.ndarray) -> list[Detection]:
        return self.detect_many([image])[0]

    @torch.inference_mode()
    def glance(self, image: np.ndarray) -> list[Detection]:
        """The faces the first attempt finds, with ``detect``'s scores but unsettled boxes: YuNet's proposals
        refined once (with no proposer, P-Net's at the standard thresholds), never searched again. For checks
        that need a face's score, not its exact place (``finder.FaceFinder``'s turned-photo check): where
        ``detect`` finds nothing it runs P-Net's pyramid twice more, 20 times a thumbnail's detection."""
        with self._cpu_threads():
            photo = _Pixels(check_image(image))
            return self._cascade([photo], self.thresholds, from_yunet=bool(self.proposer), settle=False)[0]

    @torch.inference_mode()
    def detect_many(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """Faces in each photo, as ``detect`` finds them. R-Net and O-Net see all photos' candidates
        together: one call each on a GPU; on the CPU in ``CPU_BATCH`` chunks, as fast as one ``detect``
        per photo (measured on 32 LFW photos)."""
        images = [check_image(image) for image in images]
        if not images:
            return []
        with self._cpu_threads():
            return self._detect_many(images)

    @contextlib.contextmanager
    def _cpu_threads(self):
        """PyTorch on the CPU runs the cascade on one thread: it is hundreds of tiny convolutions, extra
        threads only add synchronisation, and on a busy CPU they spin (measured on 2 loaded cores: 41 ms/photo
        on 1 thread, 1.7 s on 2). ONNX Runtime's sessions and GPUs are left as they are."""
        if self.sessions or self.device.type != "cpu":
            yield
            return
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)

    def _detect_many(self, images: list[np.ndarray]) -> list[list[Detection]]:
        """YuNet's proposals refined (when there is a proposer), then, for the photos still without a face,
        the P-Net cascade at the standard and at the retry thresholds, and last YuNet's own faces."""
        photos = [_Pixels(image) for image in images]
        attempts = [(self.thresholds, True)] if self.proposer else []
        attempts += [(self.thresholds, False)] + ([(self.retry_thresholds, False)] if self.retry_thresholds else [])
        found = [[] for _ in photos]
        for thresholds, from_yunet in attempts:
            empty = [i for i, faces in enumerate(found) if not faces]
            if not empty:
                break
            for i, faces in zip(empty, self._cascade([photos[i] for i in empty], thresholds, from_yunet)):
                found[i] = faces
        if self.proposer:  # the last resort (module doc): faces only YuNet sees, with its boxes and landmarks
            for i in [i for i, faces in enumerate(found) if not faces]:
                found[i] = [d for d in self._yunet_faces(photos[i]) if min(d.width, d.height) >= self.min_face_size]
        return found

    def _cascade(
        self, photos: list[_Pixels], thresholds, from_yunet: bool = False, settle: bool = True
    ) -> list[list[Detection]]:
        """The three stages on several photos (YuNet's proposals instead of P-Net's with ``from_yunet``), then the
        settle passes (``settle``); R-Net and O-Net batch all photos."""
        if from_yunet:
            boxes = [self._yunet_boxes(photo) for photo in photos]
        else:
            boxes = [self._propose(photo.table, thresholds[0]) for photo in photos]
        answers = self._output(photos, self._refine(photos, boxes, thresholds[1]), thresholds[2])
        found = []
        for photo_boxes, points in zip(*(self._settle(photos, *answers) if settle else answers)):
            found.append([Detection(*_as_pixels(b, p)) for b, p in zip(photo_boxes, points)])
        return found

    def _run(self, stage: int, x: np.ndarray) -> list[np.ndarray]:
        """Net ``stage`` (0 P, 1 R, 2 O) on a normalised batch: box offsets, [landmarks,] probabilities.

        On the CPU in chunks of ``CPU_BATCH``: per patch, R-Net and O-Net ran fastest at batches of
        4-64 on both backends and up to 1.5x slower at 128 and more, which outgrow the caches.
        """
        if self.device.type == "cpu" and len(x) > CPU_BATCH:
            chunks = [self._run(stage, x[i : i + CPU_BATCH]) for i in range(0, len(x), CPU_BATCH)]
            return [np.concatenate(outputs) for outputs in zip(*chunks)]
        if self.sessions:
            return self.sessions[stage].run(None, {"x": x})
        net = (self.pnet, self.rnet, self.onet)[stage]
        return [y.cpu().numpy() for y in net(torch.from_numpy(x).to(self.device))]

    def _run_batched(
        self, stage: int, photos: list[_Pixels], boxes: list[np.ndarray], size: int, subpixel: bool = False
    ) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Cut every photo's boxes, run net ``stage`` on all the patches together, split its outputs per photo."""
        cut = [photo.patches(photo_boxes, size, subpixel) for photo, photo_boxes in zip(photos, boxes)]
        boxes = [photo_boxes for photo_boxes, _ in cut]
        patches = np.concatenate([photo_patches for _, photo_patches in cut])
        if not len(patches):  # nothing to run; empty outputs of the right widths
            return boxes, [[np.zeros((0, n)) for n in STAGE_OUTPUTS[stage]] for _ in boxes]
        ends = np.cumsum([len(photo_boxes) for photo_boxes in boxes])[:-1]
        outputs = [np.split(y, ends) for y in self._run(stage, patches)]
        return boxes, [list(photo_outputs) for photo_outputs in zip(*outputs)]

    def _scales(self, h: int, w: int) -> list[float]:
        scale = 12.0 / self.min_face_size
        side = min(h, w) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def _yunet_faces(self, photo: _Pixels) -> list[Detection]:
        """YuNet's faces in ``photo``, found once: its proposals and the last resort read the same."""
        if photo.yunet is None:
            photo.yunet = self.proposer.detect(photo.image)
        return photo.yunet

    def _yunet_boxes(self, photo: _Pixels) -> np.ndarray:
        """Stage 1 from YuNet: a square (N, 5: x1 y1 x2 y2 score) around each face it finds, sized as
        MTCNN's own refined squares are (``YUNET_SQUARE``)."""
        found = self._yunet_faces(photo)
        if not found:
            return np.zeros((0, 5))
        cx, cy = np.array([d.center for d in found]).T
        half = 0.5 * YUNET_SQUARE * np.array([d.height for d in found])
        # Pixel edges to the cascade's numbering (first pixel 1-based, last inclusive: ``_as_pixels``).
        return np.stack([cx - half + 1, cy - half + 1, cx + half, cy + half, [d.score for d in found]], axis=1)

    def _propose(self, table: np.ndarray, threshold: float) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> squared candidate boxes (N, 5: x1 y1 x2 y2 score)."""
        h, w = table.shape[0] - 1, table.shape[1] - 1
        found = []
        for scale in self._scales(h, w):
            level = _area_resize(table, np.array([[0, 0, h, w]]), int(h * scale + 1), int(w * scale + 1))
            reg, prob = self._run(0, _normalise(level))
            prob, reg = prob[0, 1], reg[0]
            ys, xs = np.nonzero(prob >= threshold)
            if not len(ys):
                continue
            cells = np.stack([xs, ys], axis=1).astype(np.float64)
            cand = np.concatenate(
                [
                    np.floor((2 * cells + 1) / scale),
                    np.floor((2 * cells + 12) / scale),
                    prob[ys, xs][:, None],
                    reg[:, ys, xs].T,
                ],
                axis=1,
            )
            found.append(cand[nms(cand[:, :4], cand[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5))
        cand = np.concatenate(found)
        cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
        size = np.stack([cand[:, 2] - cand[:, 0], cand[:, 3] - cand[:, 1]] * 2, axis=1)
        boxes = np.concatenate([cand[:, :4] + cand[:, 5:9] * size, cand[:, 4:5]], axis=1)
        return _square(boxes)

    def _refine(self, photos: list[_Pixels], boxes: list[np.ndarray], threshold: float) -> list[np.ndarray]:
        """Stage 2: R-Net rescoring and box regression (NMS per photo)."""
        refined = []
        for photo_boxes, (reg, prob) in zip(*self._run_batched(1, photos, boxes, 24)):
            score = prob[:, 1]
            keep = score > threshold
            photo_boxes, reg = np.concatenate([photo_boxes[keep, :4], score[keep, None]], axis=1), reg[keep]
            pick = nms(photo_boxes[:, :4], photo_boxes[:, 4], 0.7)
            refined.append(_square(_regress(photo_boxes[pick], reg[pick])))
        return refined

    def _output(
        self, photos: list[_Pixels], boxes: list[np.ndarray], threshold: float
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Stage 3: O-Net final score, box regression and landmarks (NMS per photo)."""
        final, landmarks = [], []
        for photo_boxes, (reg, marks, prob) in zip(*self._run_batched(2, photos, boxes, 48)):
            score = prob[:, 1]
            keep = score > threshold
            photo_boxes = np.concatenate([photo_boxes[keep, :4], score[keep, None]], axis=1)
            photo_boxes, points = _onet_answer(photo_boxes, reg[keep], marks[keep])
            pick = nms(photo_boxes[:, :4], photo_boxes[:, 4], 0.7, method="min")
            final.append(photo_boxes[pick])
            landmarks.append(points[pick])
        return final, landmarks

    def _settle(
        self, photos: list[_Pixels], boxes: list[np.ndarray], points: list[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """O-Net passes over the found faces (scores kept from the first pass): up to ``settle_passes`` damped ones
        on squares their boxes place, which settle the landmarks (a face stops once its landmarks do: its box may
        still wander along O-Net's line of answers, and the next stage places it anew), then up to
        ``LANDMARK_PASSES`` on squares those landmarks place, which settle the boxes (SETTLE_PASSES). Those need no
        damping: O-Net's landmarks hardly follow the square they are shown, so each pass lands near where the
        face's box settles."""
        sides = [np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) for b in boxes]  # the cascade's squares
        boxes, points = self._passes(
            photos, boxes, points, lambda i, b, p: _square(b), self.settle_passes, landmarks_only=True
        )
        placed = min(self.settle_passes, LANDMARK_PASSES)
        landmark_square = lambda i, b, p: _landmark_square(p, sides[i])  # noqa: E731
        placed_boxes, _ = self._passes(
            photos, [b.copy() for b in boxes], [p.copy() for p in points], landmark_square, placed, step=1.0
        )
        for photo_boxes, settled in zip(boxes, placed_boxes):
            same = box_iou(photo_boxes, settled) >= LANDMARK_IOU  # else O-Net answered for a neighbouring face
            photo_boxes[same, :4] = settled[same, :4]
        return boxes, points

    def _passes(
        self,
        photos: list[_Pixels],
        boxes: list[np.ndarray],
        points: list[np.ndarray],
        place,
        passes: int,
        step: float = 0.5,
        landmarks_only: bool = False,
    ):
        """Up to ``passes`` O-Net passes, each on the squares ``place(photo index, boxes, landmarks)`` gives, moved
        inside the photo (``_square_within``); each face's box and landmarks move ``step`` of the way to O-Net's
        answer; a face stops once a pass moved it (its landmarks alone with ``landmarks_only``) by at most
        ``SETTLED``, and is not shown to O-Net again. A face stays where it is once its square still reaches past
        the photo (O-Net would see black where the head goes on: a face filling an ID photo drifts) or O-Net no
        longer sees a face in it (a small or blurred face).
        The squares are cut at their exact sub-pixel bounds: cut at whole pixels, a face on a reduced copy
        could only settle to the nearest pixel of that copy, a step of 1-2% of a 60-100 px face."""
        moving = [np.ones(len(b), bool) for b in boxes]
        for _ in range(passes):
            if not any(m.any() for m in moving):  # every face has stopped: no pass can change anything
                break
            squares = [  # only the faces still moving are shown to O-Net again
                _square_within(place(i, b, p), *photo.image.shape[:2])[m]
                for i, (photo, b, p, m) in enumerate(zip(photos, boxes, points, moving))
            ]
            cut, outputs = self._run_batched(2, photos, squares, 48, subpixel=True)
            for i, (square, (reg, marks, prob)) in enumerate(zip(cut, outputs)):
                face = np.flatnonzero(moving[i])
                if len(square) != len(face):  # a face left the photo: keep what the cascade found
                    continue
                h, w = photos[i].image.shape[:2]
                inside = (square[:, 0] >= 0) & (square[:, 1] >= 0) & (square[:, 2] < w) & (square[:, 3] < h)
                moved, moved_points = _onet_answer(square, reg, marks)
                keep = inside & (prob[:, 1] > self.thresholds[2])
                change = np.abs(moved_points - points[i][face]).max((1, 2))
                if not landmarks_only:
                    change = np.maximum(change, np.abs(moved[:, :4] - boxes[i][face, :4]).max(1))
                change /= square[:, 2] - square[:, 0]
                f = face[keep]
                boxes[i][f, :4] += step * (moved[keep, :4] - boxes[i][f, :4])
                points[i][f] += step * (moved_points[keep] - points[i][f])
                moving[i][face] = keep & (change > SETTLED)  # this pass moved it (a part of) that: no further pass
        return boxes, points


def mtcnn_pnet(
    weights: str | os.PathLike | None = None, device: str | torch.device = "cpu", backend: str = "auto", **options
) -> MTCNNDetector:
    """The published cascade alone (detector ``mtcnn-pnet``): P-Net proposes every face, O-Net answers once."""
    options.setdefault("settle_passes", 0)
    return MTCNNDetector(weights, device=device, backend=backend, proposals="pnet", **options)


def _yunet(required: bool):
    """YuNet for the proposals; ``None`` (with a warning) where it cannot be built and was not required."""
    from facenet.align.yunet import YuNetDetector

    try:
        return YuNetDetector()
    except FaceNetError as exc:  # no model file, or one ONNX Runtime cannot run
        if required:
            raise FaceNetError(f"YuNet proposals unavailable ({exc}); use proposals='pnet'") from None
        log.warning("YuNet proposals unavailable (%s); MTCNN uses P-Net's", exc)
        return None


class _Pixels:
    """One photo as the cascade reads it: the summed-area table of the whole photo is built only when
    P-Net's pyramid or the settle passes' sub-pixel squares need it; until then R-Net and O-Net patches of
    YuNet's few proposals come from tables of their own windows (the same integer sums, so the same patches:
    a glance, or a photo where nothing is found, never builds the whole table)."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self._table = None
        self.yunet: list[Detection] | None = None  # YuNet's faces, once found (``MTCNNDetector._yunet_faces``)

    @property
    def table(self) -> np.ndarray:
        if self._table is None:
            self._table = _integral(self.image)
        return self._table

    def patches(self, boxes: np.ndarray, size: int, subpixel: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``boxes`` that keep pixels and their patches at ``size`` x ``size``, normalised. ``subpixel``: each
        box's exact area (``_subpixel_patches``) instead of the published cascade's whole-pixel window."""
        h, w = self.image.shape[:2]
        boxes, windows = _windows(boxes, h, w)
        if subpixel:
            return boxes, _normalise(_subpixel_patches(self.table, boxes, size))
        if self._table is not None:
            return boxes, _normalise(_area_resize(self._table, windows, size, size))
        patches = np.empty((len(windows), 3, size, size), np.float32)
        for i, (top, left, height, width) in enumerate(windows):
            table = _integral(self.image[top : top + height, left : left + width])
            patches[i] = _area_resize(table, np.array([[0, 0, height, width]]), size, size)[0]
        return boxes, _normalise(patches)


def onnx_cache_paths(folder: Path, opset: int = OPSET) -> list[Path]:
    """Where the exports of P-, R- and O-Net are cached: keyed by a hash of the three weight files
    and the opset, in a folder of their own (which the embedding exports' pruning leaves alone)."""
    sha = hashlib.sha256()
    for file in WEIGHT_FILES:
        sha.update((folder / file).read_bytes())
    stem = f"mtcnn-{sha.hexdigest()[:32]}-opset{opset}"
    return [cache_home() / "onnx" / "mtcnn" / f"{stem}-{Path(file).stem}.onnx" for file in WEIGHT_FILES]


def onnx_sessions(folder: Path, nets: tuple[nn.Module, nn.Module, nn.Module], opset: int = OPSET) -> list:
    """ONNX Runtime sessions for P-, R- and O-Net: from the cache when it holds a readable export,
    else exported, checked against PyTorch and cached (kept in memory, with a warning, when the
    cache folder cannot be written)."""
    sessions, unsaved = [], None
    for net, path in zip(nets, onnx_cache_paths(folder, opset)):
        if path.is_file():
            try:
                sessions.append(CpuNet(str(path)))
                continue
            except Exception as exc:  # ORT raises its own untyped errors; a bad cache file is replaced
                log.warning("ignoring unreadable cached MTCNN export %s (%s)", path, str(exc).splitlines()[0])
        data = export_net(net, opset)
        sessions.append(CpuNet(data))
        _check_export(net, sessions[-1])
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_bytes(path, data)
        except OSError as exc:
            unsaved = exc
    if unsaved:
        log.warning("cannot cache the MTCNN ONNX export (%s); exporting again at every start", unsaved)
    return sessions


def export_net(net: nn.Module, opset: int = OPSET) -> bytes:
    """The ONNX graph of one MTCNN net: input ``x``; P-Net with dynamic batch, height and width
    (one graph for every pyramid level), R-Net and O-Net with dynamic batch."""
    dynamic = {0: "batch", 2: "height", 3: "width"} if isinstance(net, PNet) else {0: "batch"}
    outputs = ["reg", "marks", "prob"] if isinstance(net, ONet) else ["reg", "prob"]
    # P-Net keeps PRelu: on whole pyramid levels the spelt-out form's extra full-size tensors took
    # ONNX Runtime's peak memory on a 2400x1800 level from 0.6 to 1.7 GB, for no measurable gain per photo.
    model = net if isinstance(net, PNet) else export_form(net)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(
            model,
            (_example(net),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=outputs,
            dynamic_axes={name: dynamic for name in ["x", *outputs]},
        )
    return buffer.getvalue()


def _example(net: nn.Module) -> torch.Tensor:
    """A fixed normalised input for the export and its check (P-Net: an odd size, as pyramid levels are)."""
    shape = (2, 3, 37, 45) if isinstance(net, PNet) else (3, 3, 24, 24) if isinstance(net, RNet) else (3, 3, 48, 48)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _check_export(net: nn.Module, session) -> None:
    """An export whose outputs differ from PyTorch's must not be used (or cached)."""
    x = _example(net)
    with torch.no_grad():
        expected = [y.numpy() for y in net(x)]
    worst = max(float(np.abs(a - b).max()) for a, b in zip(session.run(None, {"x": x.numpy()}), expected))
    if not worst <= EXPORT_TOLERANCE:
        raise FaceNetError(f"ONNX export of {type(net).__name__} differs from PyTorch by {worst:.1e}")


def _integral(image: np.ndarray) -> np.ndarray:
    """Summed-area table (H+1, W+1, 3) of an H,W,3 uint8 image: exact integers in float64 (below 2^53 for any
    photo), OpenCV's integral image (4x faster than two numpy cumsums over a 1000x750 copy)."""
    return cv2.integral(image, sdepth=cv2.CV_64F)


def _area_resize(table: np.ndarray, windows: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Windows (N, 4: top, left, height, width) of the image resized to (N, 3, out_h, out_w) float32.

    Same bins as ``interpolate(mode="area")`` (adaptive average pooling: output row i averages input
    rows floor(i*n/out) .. ceil((i+1)*n/out)-1), read from the summed-area table with four gathers
    for all windows at once instead of one torch call per window.
    """
    _, w1, _ = table.shape
    top, left, height, width = (windows[:, i : i + 1] for i in range(4))
    (y0, y1), (x0, x1) = _bins(top, height, out_h), _bins(left, width, out_w)
    pixels = (y1 - y0)[:, :, None] * (x1 - x0)[:, None, :]
    # Offsets of the red sums in the flattened table, (N, out_h, out_w) once row and column parts are added.
    row0, row1 = y0[:, :, None] * w1 * 3, y1[:, :, None] * w1 * 3
    col0, col1 = x0[:, None, :] * 3, x1[:, None, :] * 3
    corners = [row1 + col1, row0 + col1, row1 + col0, row0 + col0]
    flat = table.reshape(-1)
    out = np.empty((len(windows), 3, out_h, out_w), np.float32)
    for channel in range(3):  # one channel at a time: a big pyramid level's temporaries stay a third as big
        a, b, c, d = (flat.take(index + channel) for index in corners)
        out[:, channel] = (a - b - c + d) / pixels
    return out


def _subpixel_patches(table: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """The parts of the image under ``boxes`` (N, 4+; 1-based inclusive corners, as the cascade's, so pixels
    x1-1 .. x2 continuously; clipped to the image) averaged into ``size`` x ``size`` cells of equal fractional
    extent: (N, 3, size, size) float32, from the image's summed-area ``table`` (``_integral``). Exact areas: the
    table of a piecewise-constant image is bilinear inside each pixel, so interpolating it bilinearly gives the
    exact sum up to any fractional corner."""
    h, w = table.shape[0] - 1, table.shape[1] - 1
    x0, y0 = np.clip(boxes[:, 0] - 1, 0.0, w - 1.0), np.clip(boxes[:, 1] - 1, 0.0, h - 1.0)
    x1, y1 = np.minimum(np.maximum(boxes[:, 2], x0 + 1), w), np.minimum(np.maximum(boxes[:, 3], y0 + 1), h)
    steps = np.arange(size + 1) / size
    ys, xs = y0[:, None] + (y1 - y0)[:, None] * steps, x0[:, None] + (x1 - x0)[:, None] * steps  # (N, size+1)
    (r, fy), (c, fx) = _cell(ys, h), _cell(xs, w)
    rows, cols = np.stack([r, r + 1], 1)[:, :, None, :, None], np.stack([c, c + 1], 1)[:, None, :, None, :]
    wy, wx = np.stack([1 - fy, fy], 1)[:, :, None, :, None], np.stack([1 - fx, fx], 1)[:, None, :, None, :]
    # The four cell corners (N, 2, 2, size+1, size+1, 3), weighted and summed: the table at each grid point.
    sums = (table[rows, cols] * (wy * wx)[..., None]).sum((1, 2))
    cells = sums[:, 1:, 1:] - sums[:, :-1, 1:] - sums[:, 1:, :-1] + sums[:, :-1, :-1]
    area = np.diff(ys)[:, :, None] * np.diff(xs)[:, None, :]
    return (cells / area[..., None]).transpose(0, 3, 1, 2).astype(np.float32)


def _cell(at: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel index (0 .. n-1) and fraction inside it of each coordinate in [0, n]."""
    index = np.minimum(at.astype(np.int64), n - 1)
    return index, at - index


def _bins(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive-pooling bins [lo, hi) of ``length`` pixels from ``start`` (both (N, 1)) into ``size`` cells."""
    i = np.arange(size)
    return start + i * length // size, start - (-(i + 1) * length // size)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x - np.float32(127.5)) * np.float32(0.0078125)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (side = longer side)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += (w - side) / 2
    boxes[:, 1] += (h - side) / 2
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def _landmark_square(points: np.ndarray, cascade_side: np.ndarray) -> np.ndarray:
    """O-Net's square (N, 5, the cascade's numbering) for each face's five landmarks (N, 5, 2; pixel edges), its
    side kept within ``LANDMARK_SPAN`` of ``cascade_side`` (module constants LANDMARK_*)."""
    eyes = np.linalg.norm(points[:, 1] - points[:, 0], axis=1)
    up = (points[:, 0] + points[:, 1] - points[:, 3] - points[:, 4]) / 2  # from the mouth to the eyes
    length = np.linalg.norm(up, axis=1)
    side = np.clip(LANDMARK_SIDE * np.sqrt(eyes * length), cascade_side / LANDMARK_SPAN, cascade_side * LANDMARK_SPAN)
    centre = points.mean(1) + (LANDMARK_RISE * side / np.maximum(length, 1e-9))[:, None] * up
    low, high = centre - side[:, None] / 2, centre + side[:, None] / 2
    return np.concatenate([low + 1, high, np.ones((len(points), 1))], axis=1)  # first pixel 1-based (_as_pixels)


def _square_within(boxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """``_square``, each square moved (not resized) to lie inside an h x w photo where it fits: O-Net then
    sees the face off-centre rather than black where the photo ends."""
    squares = _square(boxes)
    side = squares[:, 2] - squares[:, 0]
    for lo, limit in ((0, w), (1, h)):
        fits = side <= limit - 2
        start = np.clip(squares[:, lo], 1, np.maximum(limit - 1 - side, 1))
        shift = np.where(fits, start - squares[:, lo], 0.0)
        squares[:, lo] += shift
        squares[:, lo + 2] += shift
    return squares


def _as_pixels(box: np.ndarray, points: np.ndarray) -> tuple[list[float], float, np.ndarray]:
    """A cascade box and its landmarks as ``Detection`` numbers them. The cascade numbers a box by its first
    pixel, 1-based, and its last, inclusive: it looks at pixels x1-1 .. x2-1, from edge x1-1 to edge x2, the
    pixel edges a ``Detection`` holds. Without this, a box mapped from a reduced copy to the full photo would
    be off by a pixel of the copy (RESULTS.md, issue 28). Landmarks are kept as the cascade gives them (read as
    pixel centres, as facenet-pytorch's users and the crops the accuracy figures were measured on read them)."""
    return [box[0] - 1, box[1] - 1, box[2], box[3]], box[4], points


def _regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the nets' box offsets (fractions of the inclusive box width/height)."""
    boxes = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] += reg[:, :4] * np.stack([w, h, w, h], axis=1)
    return boxes


def _onet_answer(boxes: np.ndarray, reg: np.ndarray, marks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O-Net's boxes (its offsets applied) and five landmarks (N, 5, 2) for the squares it was shown."""
    marks = marks.astype(np.float64)
    x1, y1 = boxes[:, 0:1], boxes[:, 1:2]
    bw, bh = boxes[:, 2:3] - x1 + 1, boxes[:, 3:4] - y1 + 1
    points = np.stack([bw * marks[:, :5] + x1 - 1, bh * marks[:, 5:] + y1 - 1], axis=2)
    return _regress(boxes, reg), points


def _windows(boxes: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Each box clipped to an h x w image (1-based inclusive as in the original code) as a window (top,
    left, height, width); boxes left with no pixels are dropped."""
    ibox = np.trunc(boxes[:, :4]).astype(np.int64)
    x1, y1 = np.maximum(ibox[:, 0], 1), np.maximum(ibox[:, 1], 1)
    x2, y2 = np.minimum(ibox[:, 2], w), np.minimum(ibox[:, 3], h)
    ok = (x2 > x1 - 1) & (y2 > y1 - 1)
    return boxes[ok], np.stack([y1 - 1, x1 - 1, y2 - y1 + 1, x2 - x1 + 1], axis=1)[ok]


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
