"""Embedding a collection on Ray (``facenet embed --out DIR/ --ray [ADDRESS]``; ``embed_on_ray``).

The same job as ``facenet embed --out DIR/`` (``facenet.shards``), its work spread over a Ray cluster, or over
the cores of this machine with a local Ray:

- Ray Data reads the photo list: local paths, or fsspec URLs (``s3://``, ``gs://``, ``https://``, ``file://``...;
  the filesystem's fsspec package must be installed on the workers, e.g. ``s3fs``);
- ``map_batches`` runs the photos through a pool of actors (``actors``), each of which loads the model once:
  CPU actors (``cpus_per_actor`` cores each), or GPU actors (``gpus_per_actor`` > 0; the model and the
  detector run on ``cuda``). Each actor detects, crops and embeds ``batch_size`` photos per call, on the one path
  the one-process run takes (``FaceEmbedder.find_faces`` and ``embed_crops``), so its rows are that run's rows;
- the rows stream back to this process (the *driver*), which writes them as Parquet shards of ``shard_size``
  photos with the manifest, through the same ``ShardDir`` as the one-process run, in photo order.

So a Ray run writes exactly the directory a one-process run writes: ``read_shards`` reads it, a re-run (on Ray or
not) skips the photos done, a killed run loses at most the shard in progress, and the directory is refused to a
run of another model or options. ``DIR`` is on the driver's machine; the photos must be readable by every worker
(a shared filesystem, or URLs). The model file is read here and sent to the actors through Ray's object store,
so workers need facenet installed but not the model file.

Faces are personal data. The actors print nothing, so Ray's worker logs hold no photo name or embedding; the
driver reports skipped photos on its own terminal and in ``skipped.json``, as the one-process run does. Rows pass
through Ray's object store (shared memory, spilled under Ray's temporary directory when full): on a shared
cluster, give Ray a private ``--temp-dir``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facenet.align.finder import MIN_FACE
from facenet.batch import NO_CROP, BatchReport, FaceRow, PhotoGroup, Skipped, face_rows, several_faces_note, skip_reason
from facenet.data.images import IMAGE_SUFFIXES, expand_image_paths
from facenet.errors import FaceNetError
from facenet.shards import SHARD_SIZE, ShardDir, run_identity

INSTALL_HINT = "Ray is not installed: pip install 'facenet-triplet[ray]' (Ray Data, pyarrow and fsspec)"


def is_url(source: str) -> bool:
    """``scheme://...``: a photo read through fsspec rather than a local path."""
    scheme, sep, _ = str(source).partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").isalnum() and len(scheme) > 1


def photo_sources(inputs: Iterable[str]) -> list[str]:
    """The photos ``inputs`` name, each once, in order: local files and folders as ``facenet embed`` expands
    them (absolute paths: the keys of a shard directory), URLs as given, a URL that is a folder expanded to the
    images below it (sorted) through fsspec."""
    sources: list[str] = []
    for item in inputs:
        if not is_url(item):
            sources.extend(os.path.abspath(p) for p in expand_image_paths([item]))
            continue
        import fsspec

        fs, root = fsspec.core.url_to_fs(item)
        if fs.isdir(root):
            found = sorted(p for p in fs.find(root) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FaceNetError(f"no images found in folder {item}")
            sources.extend(fs.unstrip_protocol(p) for p in found)
        else:
            sources.append(item)
    return list(dict.fromkeys(sources))


@dataclass
class RayRun:
    """What ``embed_on_ray`` did: ``run`` (this run's photos), ``total`` (every photo of the directory, earlier
    runs' included), ``shards`` (listed in the manifest), ``already_done`` (photos skipped as done before) and the
    model's ``embedding_size``."""

    run: BatchReport
    total: BatchReport
    shards: int
    already_done: int
    embedding_size: int


def embed_on_ray(
    photos: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: str | os.PathLike | None = None,
    *,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    device: str | None = None,
    detector: str | None = None,
    detect: bool = True,
    backend: str = "auto",
    which: str | None = None,
    all_faces: bool = False,
    min_face: float | None = MIN_FACE,
    batch_size: int = 32,
    shard_size: int = SHARD_SIZE,
    num_cpus: int | None = None,
    progress: bool = True,
) -> RayRun:
    """Embed ``photos`` (paths, folders or fsspec URLs) into the shard directory ``out_dir`` on Ray.

    ``model`` is a model file or a shipped model's name (``None``: the installed default), read here and sent
    to the actors. Ray: the one this process has already initialised (``ray.init`` with your own
    ``runtime_env``, say), else ``address`` (``"auto"``: the cluster this machine belongs to; ``"ray://host:10001"``:
    Ray Client), else the cluster ``$RAY_ADDRESS`` names, else a local Ray started here on ``num_cpus`` cores
    (default: all); a Ray started here is shut down at the end.
    ``actors`` (default: as many as the cluster's CPUs, or GPUs with ``gpus_per_actor``, allow) each hold the
    model once and take ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs; ``device`` defaults to ``cuda`` for GPU
    actors, else ``cpu``. ``detector``, ``detect``, ``backend``, ``which``, ``all_faces`` and ``min_face`` mean what
    they mean to ``load_embedder`` and ``facenet embed``; ``batch_size`` photos go to an actor per call.

    The directory is the one ``facenet embed --out DIR/`` writes (``facenet.shards``): photos already done there
    are skipped, the rest written ``shard_size`` photos per shard, each photo in exactly one shard; a directory
    holding another model's or options' embeddings is refused (``FaceNetError``).
    """
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is the "data" extra of ray
    except ImportError:
        raise FaceNetError(INSTALL_HINT) from None
    from facenet.embedder import load_embedder, model_file

    if batch_size < 1 or shard_size < 1:
        raise FaceNetError("the batch size and the shard size must be at least 1 photo")
    if gpus_per_actor < 0 or cpus_per_actor < 0 or (actors is not None and actors < 1):
        raise FaceNetError("actors must be at least 1, and CPUs and GPUs per actor at least 0")
    device = device or ("cuda" if gpus_per_actor > 0 else "cpu")
    sources = photo_sources(str(p) for p in photos)
    path = model_file(model)
    local = load_embedder(path, device="cpu", detect=False, backend="torch", which=which, min_face=min_face)
    detector_name = (detector or local.recipe.detector) if detect else None
    identity = run_identity(local, detector_name, all_faces)
    spec = {
        "model_suffix": path.suffix,
        "device": device,
        "detector": detector_name,
        "backend": backend,
        "which": which,
        "min_face": min_face,
        "all_faces": all_faces,
        "batch_size": batch_size,
        "cpus_per_actor": cpus_per_actor,
        "model_id": identity["model"],
    }
    with ShardDir.open(out_dir, identity) as shards:
        todo = [s for s in sources if s not in shards.done]
        run = BatchReport("embed")
        if todo:
            started = not ray.is_initialized()
            if started:
                kwargs = {"address": address} if address else {"num_cpus": num_cpus}
                ray.init(include_dashboard=False, configure_logging=False, **kwargs)
            try:
                spec["model_bytes"] = ray.put(path.read_bytes())
                batches = _ray_rows(todo, spec, actors, cpus_per_actor, gpus_per_actor, progress)
                dims = identity["embedding_size"]
                for group in _groups(batches, shard_size, dims, run, local.recipe.which, all_faces):
                    shards.write(group)
            finally:
                if started:
                    ray.shutdown()
        return RayRun(run, shards.report(), len(shards.shards), len(sources) - len(todo), local.embedding_size)


def _ray_rows(todo: list[str], spec: dict, actors, cpus_per_actor, gpus_per_actor, progress) -> Iterator[dict]:
    """Ray Data over the photo list: the actors' output batches (numpy columns), in photo order."""
    import ray
    from ray.data import DataContext

    if actors is None:
        resources = ray.cluster_resources()
        if gpus_per_actor > 0:
            actors = int(resources.get("GPU", 0) // gpus_per_actor)
        else:
            actors = int(resources.get("CPU", 1) // max(cpus_per_actor, 1e-9))
        actors = max(1, min(actors, len(todo)))
    context = DataContext.get_current()  # this process's: what is changed here is put back at the end
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    context.execution_options.preserve_order = True  # shards hold the photos in input order, as a one-process run's
    context.enable_progress_bars = progress
    try:
        yield from _dataset(todo, spec, actors, cpus_per_actor, gpus_per_actor).iter_batches(
            batch_size=None, batch_format="numpy"
        )
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _dataset(todo: list[str], spec: dict, actors: int, cpus_per_actor: float, gpus_per_actor: float):
    """The photo list as a Ray dataset, mapped by a pool of ``actors`` embedding actors."""
    import ray
    from ray.data import ActorPoolStrategy

    size = spec["batch_size"]
    blocks = max(1, min(len(todo), max(actors, -(-len(todo) // size))))
    dataset = ray.data.from_items([{"photo": s} for s in todo], override_num_blocks=blocks)
    dataset = dataset.map_batches(
        _EmbedActor,
        fn_constructor_args=(spec,),
        batch_size=size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    return dataset


class _EmbedActor:
    """One Ray actor: the model loaded once (from the bytes the driver sent), then batches of photos -> rows.
    A photo gives a row per face used, or one row with ``face = -1`` and the reason it was skipped. Prints
    nothing (worker logs must hold no photo names)."""

    def __init__(self, spec: dict):
        import tempfile

        import cv2
        import ray
        import torch

        from facenet.embedder import load_embedder

        self.spec = spec
        threads = max(1, int(spec["cpus_per_actor"]))  # the actors are the parallelism: no oversubscribed cores
        torch.set_num_threads(threads)
        cv2.setNumThreads(threads)
        data = spec["model_bytes"]
        data = ray.get(data) if isinstance(data, ray.ObjectRef) else data
        with tempfile.TemporaryDirectory(prefix="facenet-ray-") as folder:  # mode 0700
            model = Path(folder) / f"model{spec['model_suffix']}"
            model.write_bytes(data)
            self.embedder = load_embedder(
                model,
                device=spec["device"],
                detector=spec["detector"],
                detect=spec["detector"] is not None,
                backend=spec["backend"],
                which=spec["which"],
                min_face=spec["min_face"],
            )
        if self.embedder.name != spec["model_id"]:
            raise FaceNetError(f"the actor loaded model {self.embedder.name}, not {spec['model_id']}")

    def __call__(self, batch: dict) -> dict:
        rows: list[FaceRow] = []
        skipped: dict[int, str] = {}
        owners: list[int] = []  # the photo (index in the batch) of each row
        photos = [str(p) for p in batch["photo"]]
        for i, source in enumerate(photos):
            result = self._rows(source)
            if isinstance(result, Skipped):
                skipped[i] = result.reason
                owners.append(i)
            else:
                rows.extend(result)
                owners.extend([i] * len(result))
        emb = self.embedder.embed_crops([r.crop for r in rows], batch_size=self.spec["batch_size"]) if rows else None
        dims = self.embedder.embedding_size
        out: dict[str, list] = {k: [] for k in ("photo", "face", "faces", "box", "score", "notes", "reason")}
        vectors = []
        it = iter(range(len(rows)))
        for i in owners:
            out["photo"].append(photos[i])
            if i in skipped:
                out["face"].append(-1), out["faces"].append(0), out["box"].append((np.nan,) * 4)
                out["score"].append(np.nan), out["notes"].append("[]"), out["reason"].append(skipped[i])
                vectors.append(np.zeros(dims, np.float32))
                continue
            k = next(it)
            row = rows[k]
            out["face"].append(row.face), out["faces"].append(row.faces_found), out["box"].append(row.box)
            out["score"].append(row.score), out["notes"].append(json.dumps(list(row.notes))), out["reason"].append("")
            vectors.append(emb[k])
        return {
            "photo": np.array(out["photo"], dtype=object),
            "face": np.array(out["face"], np.int32),
            "faces": np.array(out["faces"], np.int32),
            "box": np.array(out["box"], np.float32).reshape(-1, 4),
            "score": np.array(out["score"], np.float32),
            "notes": np.array(out["notes"], dtype=object),
            "reason": np.array(out["reason"], dtype=object),
            "embedding": np.array(vectors, np.float32).reshape(-1, dims),
        }

    def _rows(self, source: str) -> list[FaceRow] | Skipped:
        """``batch.photo_rows`` for a path or a URL (read through fsspec)."""
        all_faces = self.spec["all_faces"]
        try:
            image = _read_url(source) if is_url(source) else source
            return face_rows(self.embedder.find_faces(image, all_faces=all_faces, source=source), source)
        except (FaceNetError, OSError) as exc:
            reason = skip_reason(exc, source)
            return Skipped(source, reason[len("<bytes>: ") :] if reason.startswith("<bytes>: ") else reason)


def _read_url(url: str) -> bytes:
    """A photo's bytes through fsspec; a failure is the photo's skip reason (``BadImageError``), worded as for a
    local file and without the location a filesystem's own message repeats."""
    import fsspec

    from facenet.errors import BadImageError

    try:
        with fsspec.open(url, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise BadImageError(f"{url}: no such file; check the path") from None
    except IsADirectoryError:
        raise BadImageError(f"{url}: is a directory, not an image file") from None
    except Exception as exc:  # noqa: BLE001 - a remote filesystem's own errors: the photo is skipped, with why
        raise BadImageError(f"{url}: cannot read ({getattr(exc, 'strerror', None) or type(exc).__name__})") from None


def _groups(batches, shard_size: int, dims: int, run: BatchReport, which: str, all_faces: bool) -> Iterator[PhotoGroup]:
    """The actors' rows cut into groups of ``shard_size`` photos (every row of a photo in one group), counted in
    ``run`` as ``embed_photo_groups`` counts them (with its "several faces" notes)."""
    group = PhotoGroup([], [], np.empty((0, dims), np.float32), [])
    blocks: list[np.ndarray] = []

    def finish(g: PhotoGroup) -> PhotoGroup:
        g.embeddings = np.concatenate(blocks).astype(np.float32) if blocks else g.embeddings
        blocks.clear()
        return g

    for batch in batches:
        photos = [str(p) for p in batch["photo"]]
        starts = [k for k in range(len(photos)) if k == 0 or photos[k] != photos[k - 1]]
        for n, start in enumerate(starts):
            end = starts[n + 1] if n + 1 < len(starts) else len(photos)
            photo = photos[start]
            more = bool(group.photos) and group.photos[-1] == photo  # a photo's rows split over two batches
            if not more:
                if len(group.photos) >= shard_size:  # a group is cut only where a new photo starts
                    yield finish(group)
                    group = PhotoGroup([], [], np.empty((0, dims), np.float32), [])
                group.photos.append(photo)
                run.photos += 1
            if int(batch["face"][start]) < 0:
                skipped = Skipped(photo, str(batch["reason"][start]))
                group.skipped.append(skipped)
                run.skipped.append(skipped)
                continue
            rows = [
                FaceRow(
                    photo,
                    int(batch["face"][k]),
                    int(batch["faces"][k]),
                    tuple(float(v) for v in batch["box"][k]),  # type: ignore[arg-type]
                    float(batch["score"][k]),
                    NO_CROP,
                    tuple(json.loads(str(batch["notes"][k]))),
                )
                for k in range(start, end)
            ]
            group.rows.extend(rows)
            blocks.append(np.asarray(batch["embedding"][start:end], np.float32))
            run.faces += len(rows)
            if more:
                continue
            run.embedded_photos += 1
            if not all_faces and (note := several_faces_note(rows[0], which)):
                print(note, file=sys.stderr)
    if group.photos:
        yield finish(group)
