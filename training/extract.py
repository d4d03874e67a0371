"""`extract`: videos -> sampled frames -> face crops -> backbone features, into a feature store.

The stages are the inference pipeline's own (`models.video.decode_frames`, then
`models.stages.FeatureStages`: faces, embed), so the VAL and TEST features
(made with the inference sampling) are exactly what an exported checkpoint computes on those files.
TRAIN videos are sampled per label (the research setup: every 60th frame of fakes, every 30th of
reals) or uniformly, and get `--views` extra augmented views (see `training.augment`).

Resume: videos already in the store (or recorded as failed) are skipped.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.progress import track
from torch import nn

from models.backbones import FILE_PREFIX, FrameEmbedder, build_backbone, weights_digest
from models.errors import PipelineError
from models.faces import FaceCropper
from models.spec import (
    BackboneSpec,
    DecodeLimits,
)
from models.stages import FeatureStages, kept_frames
from models.video import DecodedVideo, decode_frames
from training.augment import augment_view, stable_seed
from training.features import MANIFEST_FILE, FeatureStore, SpecMismatch, StoreSpec, ViewFeatures
from training.finetune import finetune_record
from training.manifest import ManifestRow

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class FeatureExtractor:
    """Face crops and backbone features of decoded videos, for one `StoreSpec`: the inference
    pipeline's feature stages (`models.stages`), plus augmented views of the kept crops."""

    def __init__(self, spec: StoreSpec, backbone: nn.Module, device: str = "cpu") -> None:
        self.spec = spec
        self.stages = FeatureStages(spec.face, spec.backbone, backbone, device)

    def views(self, video: DecodedVideo, key: str, augmented: int) -> list[ViewFeatures]:
        """The clean view 0 (as the inference pipeline computes it) and `augmented` more."""
        faces = self.stages.faces(video.frames, video.timestamps_s)
        crops = faces.kept_crops
        stamps = [video.timestamps_s[i] for i in faces.kept]
        has_face = [faces.crops.has_face[i] for i in faces.kept]
        views = [ViewFeatures(0, self.stages.embed(crops), stamps, has_face)]
        for view in range(1, augmented + 1):
            seed = stable_seed(self.spec.seed, key, view)
            result = augment_view(crops.cpu(), self.spec.augment, seed)
            views.append(
                ViewFeatures(
                    view,
                    self.stages.embed(result.crops),
                    [stamps[p] for p in result.positions],
                    [has_face[p] for p in result.positions],
                )
            )
        return views


def calibrate_batchnorm(module: nn.Module, spec: BackboneSpec, crops: torch.Tensor) -> None:
    """Re-estimate every BatchNorm's statistics on `crops` (cumulative average over batches).

    A random-init backbone (`weights none`) keeps BatchNorm's initial statistics (mean 0, var 1),
    so its features vanish or explode with depth; statistics of real crops give features of
    order one, which the sequence classifiers can learn from.
    """
    embedder = FrameEmbedder(spec, module)  # sets eval mode: switch the norms back after it
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
    embedder.embed(crops)
    module.eval()


def prepare_backbone(
    spec: StoreSpec,
    store_root: Path,
    calibration_rows: Sequence[ManifestRow],
    limits: DecodeLimits,
) -> tuple[StoreSpec, nn.Module]:
    """The backbone of a store: loaded from an existing store made with `spec`, or built (and for
    `weights none`, BatchNorm-calibrated on `calibration_rows`); returns the completed spec."""
    if (store_root / MANIFEST_FILE).is_file():
        store = FeatureStore.open(store_root)
        if _without_digest(store.spec) != _without_digest(spec):
            raise SpecMismatch(f"{store_root} holds features of another spec; use another --out")
        return store.spec, build_backbone(store.spec.backbone, state_dict=store.backbone_state())
    module = build_backbone(spec.backbone, seed=spec.seed)
    if spec.backbone.weights == "none" and calibration_rows:
        cropper = FaceCropper(spec.face, spec.backbone.input_size)
        crops = []
        for row in calibration_rows:
            video = decode_frames(row.path, spec.sampling_for(row.split, row.label), limits)
            faces = cropper.crop(video.frames, video.timestamps_s)
            crops.append(faces.crops[kept_frames(faces.has_face, "full_frame")])
        calibrate_batchnorm(module, spec.backbone, torch.cat(crops))
    digest = weights_digest(module)
    backbone = spec.backbone.model_copy(update={"weights_sha256": digest})
    return spec.model_copy(update={"backbone": backbone}), module


def _without_digest(spec: StoreSpec) -> StoreSpec:
    return spec.model_copy(
        update={"backbone": spec.backbone.model_copy(update={"weights_sha256": None})}
    )


def open_store(
    spec: StoreSpec,
    root: Path,
    rows: Sequence[ManifestRow],
    *,
    calibration_videos: int = 32,
    limits: DecodeLimits | None = None,
    shard_videos: int = 64,
) -> tuple[FeatureStore, nn.Module]:
    """Create or resume the store at `root` and return it with its backbone (weights saved)."""
    train = [row for row in rows if row.split == "train"][:calibration_videos]
    spec, module = prepare_backbone(spec, root, train, limits or DecodeLimits())
    store = FeatureStore.create_or_resume(root, spec, shard_videos=shard_videos)
    if not store.has_backbone():
        store.save_backbone(module, weights_record(spec.backbone))
    return store, module


def weights_record(spec: BackboneSpec) -> dict[str, Any]:
    """How `file:` weights were made: the record `finetune` stores in its weights file."""
    if not spec.weights.startswith(FILE_PREFIX):
        return {}
    return finetune_record(Path(spec.weights.removeprefix(FILE_PREFIX)))


def extract(
    rows: Sequence[ManifestRow],
    store: FeatureStore,
    backbone: nn.Module,
    *,
    manifest_dir: Path,
    limits: DecodeLimits | None = None,
    device: str = "cpu",
    decode_threads: int = 0,
    prefetch: int = 4,
) -> dict[str, int]:
    """Extract every row not yet in `store`; returns counts of done, skipped and failed videos."""
    spec = store.spec
    limits = limits or DecodeLimits()
    extractor = FeatureExtractor(spec, backbone, device)
    named = [(store_path(row, manifest_dir), row) for row in rows]
    check_same_placement(store, named)
    store.dataset_root = manifest_dir.absolute()
    todo = [(name, row) for name, row in named if not store.contains(name)]
    counts = {"extracted": 0, "skipped": len(rows) - len(todo), "failed": 0}

    def decode(row: ManifestRow) -> DecodedVideo | PipelineError:
        try:
            sampling = spec.sampling_for(row.split, row.label)
            return decode_frames(row.path, sampling, limits, threads=decode_threads)
        except PipelineError as error:
            return error

    decoded = prefetched(decode, [row for _, row in todo], prefetch)
    for (name, row), video in track(
        zip(todo, decoded, strict=True), total=len(todo), description="extract"
    ):
        try:
            if isinstance(video, PipelineError):
                raise video
            augmented = spec.views if row.split == "train" else 0
            views = extractor.views(video, name, augmented)
        except PipelineError as error:
            logger.warning("%s: %s %s", row.path, error.code, error.message)
            store.add_failure(name, f"{error.code}: {error.message}")
            counts["failed"] += 1
            continue
        store.add_video(name, row.label, row.group, row.split, views)
        counts["extracted"] += 1
    store.flush()
    return counts


def store_path(row: ManifestRow, manifest_dir: Path) -> str:
    """How the store names a video: its path relative to the manifest's directory."""
    return os.path.relpath(row.path, manifest_dir)


def check_same_placement(store: FeatureStore, named: Sequence[tuple[str, ManifestRow]]) -> None:
    """Refuse manifest rows (with their store names) that put a stored video in another split
    (or label, or group): the store would keep its old placement, and a TEST video could end up
    trained on."""
    held = {entry.path: (entry.label, entry.group, entry.split) for entry in store.entries}
    for name, row in named:
        stored = held.get(name, (row.label, row.group, row.split))
        if stored != (row.label, row.group, row.split):
            raise SpecMismatch(
                f"{name} is stored as label/group/split {'/'.join(stored)}, but the manifest says "
                f"{row.label}/{row.group}/{row.split}; a store serves one manifest: use another "
                "--out directory"
            )


def prefetched(function: Callable[[T], R], items: list[T], depth: int) -> Iterator[R]:
    """`map(function, items)` computed up to `depth` items ahead in a thread pool, in order."""
    with ThreadPoolExecutor(max_workers=max(1, min(depth, 2))) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
