"""The inference pipeline of one checkpoint: the feature stages (`models.stages`, in their one
order) and the classifier, in stages the worker can batch across videos.

    decode (per video) -> detect_faces (frames pooled) -> faces_from (per video: track, cut, keep)
      -> embed (crops pooled) -> features_from (per video) -> classify (a batch of videos)

`predict_file` runs exactly these stages for one video, so it gives the same numbers as the
worker's staged path for the same inputs. (Pooling frames of several videos into one backbone
batch may change results in the last float bits, as any change of batch composition can.)

Thread-safety: `decode` may run concurrently from many threads. The other stages only read the
modules (eval mode, inference mode) and may also be called concurrently, though one thread per
stage is the efficient way to feed an accelerator.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from models.backbones import build_backbone, weights_digest
from models.checkpoint import load_checkpoint
from models.decoders import FrameDecoder
from models.ensemble import Ensemble
from models.faces import FaceCrops
from models.heads import pad_sequences
from models.spec import DecodeLimits, PipelineSpec
from models.stages import FeatureStages, VideoFeatures
from models.video import DecodedVideo, Source

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The verdict on one video. `label` is "fake" iff `fake_probability >= threshold`."""

    fake_probability: float
    label: Literal["fake", "real"]
    threshold: float
    members: dict[str, float]
    timestamps_s: list[float]
    attention: list[float]  # one weight per timestamp, summing to 1
    sampled: int
    with_face: int


class Detector(FeatureStages):
    """A checkpoint's whole pipeline: video -> frames -> face crops -> features -> verdict.

    Takes ownership of `backbone` and `ensemble`: they are moved to `device` and set to eval mode.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        backbone: nn.Module,
        ensemble: Ensemble,
        device: torch.device | str = "cpu",
        *,
        decode_limits: DecodeLimits | None = None,
        compile_backbone: bool = False,
    ) -> None:
        if ensemble.spec != spec.ensemble or ensemble.input_dim != spec.feature_dim:
            raise ValueError("the ensemble was not built from this spec's ensemble and feature dim")
        if ensemble.temperature != spec.temperature:
            raise ValueError(
                f"ensemble temperature {ensemble.temperature} differs from the spec's "
                f"{spec.temperature}"
            )
        super().__init__(
            spec.face, spec.backbone, backbone, device, compile_backbone=compile_backbone
        )
        self.spec = spec
        self.device = torch.device(device)
        self.decode_limits = decode_limits or spec.decode
        self.frame_decoder = FrameDecoder()
        """Where `decode` runs: the CPU unless set (`models.decoders.build_frame_decoder`)."""
        self._ensemble = ensemble.to(self.device).eval()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: torch.device | str = "cpu",
        *,
        decode_limits: DecodeLimits | None = None,
        compile_backbone: bool = False,
    ) -> Detector:
        """The detector stored in a checkpoint (raises `CheckpointError` when it is unusable);
        `compile_backbone`: see `FrameEmbedder` (call `warm_up` before serving)."""
        loaded = load_checkpoint(path)
        spec = loaded.spec
        backbone = build_backbone(spec.backbone, state_dict=loaded.backbone_state)
        ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
        for name, state in loaded.member_states.items():
            ensemble.member(name).load_state_dict(state)
        logger.info(
            "loaded %s v%s (spec_hash %s) from %s", spec.name, spec.version, spec.spec_hash, path
        )
        return cls(
            spec,
            backbone,
            ensemble,
            device,
            decode_limits=decode_limits,
            compile_backbone=compile_backbone,
        )

    @cached_property
    def model_digest(self) -> str:
        """SHA-256 hex of everything that decides a prediction, computed once.

        Hashes the spec JSON (sampling, face, backbone with its `weights_sha256`, members,
        ensemble weights, temperature, threshold) and every member's tensors. The backbone's
        tensors are hashed too when the spec does not name them by `weights_sha256`.
        """
        digest = hashlib.sha256(self.spec.model_dump_json().encode())
        backbone = self.spec.backbone.weights_sha256 or weights_digest(self.embedder.module)
        digest.update(backbone.encode())
        digest.update(weights_digest(self._ensemble).encode())
        return digest.hexdigest()

    def decode(self, source: Source, *, threads: int = 0) -> DecodedVideo:
        """The sampled frames of one video, by `frame_decoder` (safe to call from several
        threads)."""
        return self.frame_decoder.decode(
            source, self.spec.sampling, self.decode_limits, threads=threads
        )

    def crop_faces(
        self, frames: Sequence[np.ndarray | Tensor], timestamps_s: Sequence[float]
    ) -> FaceCrops:
        """One crop per frame of one video, face policy not applied (`faces` applies it)."""
        return self.cropper.crop(frames, timestamps_s)

    def extract(self, source: Source, *, threads: int = 0) -> VideoFeatures:
        """All feature stages for one video (what training caches and the worker computes)."""
        video = self.decode(source, threads=threads)
        return self.features(self.faces(video.frames, video.timestamps_s))

    def classify(self, batch: Sequence[VideoFeatures]) -> list[Prediction]:
        """Verdicts for several videos, run as one padded, masked batch."""
        if not batch:
            return []
        x, mask = pad_sequences([item.features for item in batch])
        with torch.inference_mode():
            output = self._ensemble(x.to(self.device), mask.to(self.device))
        probabilities = output.fake_probability.cpu().tolist()
        members = {name: p.cpu().tolist() for name, p in output.members.items()}
        attention = output.attention.cpu()
        threshold = self.spec.threshold
        return [
            Prediction(
                fake_probability=probability,
                label="fake" if probability >= threshold else "real",
                threshold=threshold,
                members={name: values[i] for name, values in members.items()},
                timestamps_s=list(item.timestamps_s),
                attention=attention[i, : len(item.timestamps_s)].tolist(),
                sampled=item.sampled,
                with_face=item.with_face,
            )
            for i, (item, probability) in enumerate(zip(batch, probabilities, strict=True))
        ]

    def warm_up(self) -> None:
        """Run every model stage once on a blank frame: the first face detection, the backbone's
        compilation (with `compile_backbone`) and the first ensemble call happen here, not in the
        first request's latency."""
        size = self.spec.backbone.input_size
        self.detect_faces([np.zeros((size, size, 3), dtype=np.uint8)])
        self.embedder.warm_up()
        features = torch.zeros((1, self.spec.feature_dim), dtype=torch.float32)
        self.classify([VideoFeatures(features, [0.0], sampled=1, with_face=0)])

    def predict_file(self, source: Source, *, threads: int = 0) -> Prediction:
        """The whole pipeline on one video (the same stages the worker runs)."""
        return self.classify([self.extract(source, threads=threads)])[0]
