"""The feature store: per-frame backbone features of every video view, in safetensors shards.

Layout of a store directory:

- `store.json`: the `StoreSpec` (sampling, face, backbone with its weights digest, augmentation),
  its `spec_hash`, one `StoreEntry` per video view and the videos that failed;
- videos are named by their path relative to the dataset manifest's directory (`dataset_root`,
  where `extract` last read them), so a dataset moved or copied together with its manifest resumes
  its store instead of extracting every video again;
- `shard-00000.safetensors`, ...: `[T, D]` float32 features keyed by `StoreEntry.key`;
- `backbone.safetensors`: the weights of the backbone that produced the features.

Videos are added whole (all their views at once) and written in shards; `store.json` is replaced
atomically after each shard, so an interrupted extraction resumes after the last written shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from models.spec import BackboneSpec, FaceSpec, SamplingSpec, feature_hash
from training.augment import AugmentSpec
from training.manifest import Label, Split

logger = logging.getLogger(__name__)

STORE_FORMAT = 2  # 2: video paths relative to the manifest's directory
MANIFEST_FILE = "store.json"
BACKBONE_FILE = "backbone.safetensors"
BACKBONE_RECORD_KEY = "backbone_record"
SHARD_PATTERN = "shard-{:05d}.safetensors"


class FeatureStoreError(Exception):
    """A feature store is missing, inconsistent, or was made with another spec."""

    code = "FEATURE_STORE"


class SpecMismatch(FeatureStoreError):
    """The store holds features of a different spec than the one asked for."""

    code = "SPEC_MISMATCH"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StoreSpec(_Model):
    """How the features of a store were made.

    VAL and TEST videos use `inference_sampling` (the checkpoint's); TRAIN videos use
    `train_sampling[label]`. `views` augmented views per TRAIN video follow the clean view 0.
    """

    inference_sampling: SamplingSpec
    train_sampling: dict[Label, SamplingSpec]
    face: FaceSpec
    backbone: BackboneSpec
    augment: AugmentSpec = AugmentSpec()
    views: int = Field(0, ge=0)
    seed: int = 0

    @property
    def spec_hash(self) -> str:
        """The inference spec hash: equal to the exported checkpoint's `spec_hash`."""
        return feature_hash(self.inference_sampling, self.face, self.backbone)

    def sampling_for(self, split: Split, label: Label) -> SamplingSpec:
        """The sampling of a video of `split` and `label`."""
        return self.train_sampling[label] if split == "train" else self.inference_sampling


class StoreEntry(_Model):
    """One view of one video: where its `[length, D]` features are and what they stand for.

    `path` is the video's path relative to its manifest's directory.
    """

    path: str
    label: Label
    group: str
    split: Split
    view: int
    shard: str
    key: str
    length: int
    timestamps_s: list[float]
    with_face: list[bool]

    @property
    def target(self) -> int:
        """Class index: 1 = fake, 0 = real (the models' convention)."""
        return int(self.label == "fake")


@dataclass(frozen=True)
class ViewFeatures:
    """Features of one view, before they are written."""

    view: int
    features: torch.Tensor
    timestamps_s: list[float]
    with_face: list[bool]


class _Manifest(_Model):
    format: int = STORE_FORMAT
    spec: StoreSpec
    spec_hash: str
    dataset_root: str = ""
    entries: list[StoreEntry] = []
    failures: dict[str, str] = {}


class FeatureStore:
    """Read and append to a store directory (see the module docstring)."""

    def __init__(self, root: Path, manifest: _Manifest, shard_videos: int = 64) -> None:
        self.root = root
        self.spec = manifest.spec
        self.dataset_root = Path(manifest.dataset_root) if manifest.dataset_root else None
        self.entries: list[StoreEntry] = list(manifest.entries)
        self.failures: dict[str, str] = dict(manifest.failures)
        self.shard_videos = shard_videos
        self._pending: list[tuple[StoreEntry, torch.Tensor]] = []
        self._pending_videos: set[str] = set()
        self._done = {entry.path for entry in self.entries} | set(self.failures)
        numbers = [int(entry.shard.removesuffix(".safetensors")[6:]) for entry in self.entries]
        self._next_shard = max(numbers, default=-1) + 1
        self._shards: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> FeatureStore:
        """An existing store, read-only use."""
        root = Path(root)
        file = root / MANIFEST_FILE
        if not file.is_file():
            raise FeatureStoreError(f"no feature store at {root} ({MANIFEST_FILE} missing)")
        try:
            manifest = _Manifest.model_validate_json(file.read_bytes())
        except ValueError as error:
            raise FeatureStoreError(f"{file} is not a valid store manifest: {error}") from error
        if manifest.format != STORE_FORMAT:
            raise FeatureStoreError(
                f"{file}: store format {manifest.format}, this version reads {STORE_FORMAT}; "
                "extract again into a new directory"
            )
        if manifest.spec_hash != manifest.spec.spec_hash:
            raise FeatureStoreError(f"{file}: spec_hash does not match its spec")
        return cls(root, manifest)

    @classmethod
    def create_or_resume(
        cls, root: str | os.PathLike[str], spec: StoreSpec, shard_videos: int = 64
    ) -> FeatureStore:
        """A new store for `spec`, or the existing one at `root` if made with the same spec."""
        root = Path(root)
        if (root / MANIFEST_FILE).exists():
            store = cls.open(root)
            if store.spec != spec:
                raise SpecMismatch(
                    f"{root} holds features of spec {store.spec.spec_hash} "
                    f"({store.spec.model_dump_json()}), not of {spec.spec_hash} "
                    f"({spec.model_dump_json()}); use another --out directory"
                )
            store.shard_videos = shard_videos
            return store
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, _Manifest(spec=spec, spec_hash=spec.spec_hash), shard_videos)
        store._write_manifest()
        return store

    @property
    def spec_hash(self) -> str:
        return self.spec.spec_hash

    def video_path(self, entry: StoreEntry) -> str:
        """Where the video of `entry` was read: its path under `dataset_root`."""
        if self.dataset_root is None:
            raise FeatureStoreError(f"{self.root}: no dataset root recorded")
        return os.path.normpath(self.dataset_root / entry.path)

    def contains(self, path: str) -> bool:
        """Whether `path` was already extracted (or failed) and need not be extracted again."""
        return path in self._done or path in self._pending_videos

    def add_video(
        self, path: str, label: Label, group: str, split: Split, views: Iterable[ViewFeatures]
    ) -> None:
        """Queue all views of one video; written with the next shard."""
        if self.contains(path):
            raise FeatureStoreError(f"{path} is already in the store")
        video_id = len(self._done) + len(self._pending_videos)
        shard = SHARD_PATTERN.format(self._next_shard)
        for item in views:
            if item.features.ndim != 2 or item.features.shape[0] != len(item.timestamps_s):
                raise FeatureStoreError(f"{path}: features must be [T, D] with T timestamps")
            entry = StoreEntry(
                path=path,
                label=label,
                group=group,
                split=split,
                view=item.view,
                shard=shard,
                key=f"v{video_id:06d}.{item.view}",
                length=int(item.features.shape[0]),
                timestamps_s=item.timestamps_s,
                with_face=item.with_face,
            )
            self._pending.append((entry, item.features.to(torch.float32).contiguous()))
        self._pending_videos.add(path)
        if len(self._pending_videos) >= self.shard_videos:
            self.flush()

    def add_failure(self, path: str, reason: str) -> None:
        """Record a video that cannot be extracted (skipped on resume); persisted at next flush."""
        self.failures[path] = reason
        self._done.add(path)

    def flush(self) -> None:
        """Write the queued videos as one shard, then the manifest."""
        if self._pending:
            shard = self._pending[0][0].shard
            save_file({e.key: t for e, t in self._pending}, str(self.root / shard))
            self.entries.extend(e for e, _ in self._pending)
            self._done.update(self._pending_videos)
            self._next_shard += 1
            logger.info("wrote %s (%d views)", shard, len(self._pending))
        self._pending, self._pending_videos = [], set()
        self._write_manifest()

    def features(self, entry: StoreEntry) -> torch.Tensor:
        """The `[length, D]` float32 features of one entry."""
        if entry.shard not in self._shards:
            path = self.root / entry.shard
            if not path.is_file():
                raise FeatureStoreError(f"shard {path} is missing")
            self._shards[entry.shard] = load_file(str(path))
        try:
            return self._shards[entry.shard][entry.key]
        except KeyError as error:
            raise FeatureStoreError(f"{entry.key} missing from {entry.shard}") from error

    def select(self, split: Split, *, clean_only: bool = False) -> list[StoreEntry]:
        """Entries of one split (only view 0 when `clean_only`), in store order."""
        return [e for e in self.entries if e.split == split and not (clean_only and e.view)]

    def save_backbone(self, module: nn.Module, record: Mapping[str, object] | None = None) -> None:
        """Store the weights of the backbone that makes this store's features, with the record
        of how they were made (e.g. `finetune`'s), if any."""
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        metadata = {BACKBONE_RECORD_KEY: json.dumps(record)} if record else None
        save_file(state, str(self.root / BACKBONE_FILE), metadata=metadata)

    def backbone_record(self) -> dict[str, object]:
        """The record stored with the backbone weights (empty when there is none)."""
        with safe_open(str(self.root / BACKBONE_FILE), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return json.loads(metadata[BACKBONE_RECORD_KEY]) if BACKBONE_RECORD_KEY in metadata else {}

    def has_backbone(self) -> bool:
        return (self.root / BACKBONE_FILE).is_file()

    def backbone_state(self) -> Mapping[str, torch.Tensor]:
        """The stored backbone weights (load with `models.backbones.build_backbone`)."""
        path = self.root / BACKBONE_FILE
        if not path.is_file():
            raise FeatureStoreError(f"backbone weights {path} are missing")
        return load_file(str(path))

    def _write_manifest(self) -> None:
        manifest = _Manifest(
            spec=self.spec,
            spec_hash=self.spec_hash,
            dataset_root=str(self.dataset_root or ""),
            entries=self.entries,
            failures=self.failures,
        )
        _atomic_write(self.root / MANIFEST_FILE, manifest.model_dump_json(indent=1))


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def dump_json(path: Path, document: object) -> None:
    """Write a JSON document atomically (used for run and report files)."""
    _atomic_write(path, json.dumps(document, indent=2, sort_keys=True))
