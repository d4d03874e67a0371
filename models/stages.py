"""The per-frame feature stages of a spec, in their one order; callers bring their own runners.

    decode (models.decoders) -> faces: detect (frames pooled from any videos) -> track, cut and
    keep (per video) -> embed (crops pooled from any videos) -> features (per video)
    -> classify (models.pipeline.Detector, a batch of videos)

`faces` and `features` run a stage for one video with its default runner, or with the caller's:
the worker passes its dynamic batchers (`detect`, `embed`), the benchmarks and training call them
directly or pool first and hand the pooled results to `faces_from` / `features_from`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from models.backbones import FrameEmbedder
from models.errors import NoFace
from models.faces import FaceCropper, FaceCrops, FaceDetection
from models.spec import BackboneSpec, FaceSpec

Frame = np.ndarray | Tensor
"""An H x W x 3 uint8 RGB frame: a numpy array (CPU decoding) or a tensor (NVDEC, on the GPU)."""
Detect = Callable[[Sequence[Frame]], list[FaceDetection]]
"""Runs face detection on frames, one detection per frame in order."""
Embed = Callable[[Tensor], Tensor]
"""Runs the backbone on `[N, 3, S, S]` uint8 crops, giving `[N, D]` features."""


def kept_frames(has_face: Sequence[bool], no_face: Literal["drop", "full_frame"]) -> list[int]:
    """Indices of the frames the face policy keeps; `NoFace` when "drop" leaves none."""
    if no_face == "full_frame":
        return list(range(len(has_face)))
    kept = [i for i, found in enumerate(has_face) if found]
    if not kept:
        raise NoFace(f"no face found in any of the {len(has_face)} sampled frames")
    return kept


@dataclass(frozen=True)
class VideoFaces:
    """The faces stage's result for one video: a crop per sampled frame and the frames kept."""

    crops: FaceCrops
    kept: list[int]
    timestamps_s: list[float]  # of every sampled frame

    @property
    def kept_crops(self) -> Tensor:
        """The crops of the kept frames, to embed."""
        return self.crops.crops[self.kept]

    @property
    def with_face(self) -> int:
        return sum(self.crops.has_face)


@dataclass(frozen=True)
class VideoFeatures:
    """The classifier's input for one video: features of the frames kept by the face policy."""

    features: Tensor  # [T, D] float32 on CPU
    timestamps_s: list[float]  # one per kept frame
    sampled: int  # frames decoded from the sample
    with_face: int  # of which had a face


class FeatureStages:
    """Face crops and backbone features of sampled frames, for one face and backbone spec.

    Takes ownership of `backbone` (moved to `device`, eval mode; see `FrameEmbedder`).
    """

    def __init__(
        self,
        face: FaceSpec,
        backbone_spec: BackboneSpec,
        backbone: nn.Module,
        device: torch.device | str = "cpu",
        *,
        compile_backbone: bool = False,
    ) -> None:
        self.face = face
        self.feature_dim = backbone_spec.feature_dim
        self.cropper = FaceCropper(face, backbone_spec.input_size, device)
        self.embedder = FrameEmbedder(backbone_spec, backbone, device, compile=compile_backbone)

    def detect_faces(self, frames: Sequence[Frame]) -> list[FaceDetection]:
        """The largest face of each frame (frames of several videos may be pooled)."""
        return self.cropper.detect(frames)

    def faces_from(
        self, detections: Sequence[FaceDetection], timestamps_s: Sequence[float]
    ) -> VideoFaces:
        """One video's crops around its face track (its detections, in display order) and the
        frames the face policy keeps (`NoFace` when it keeps none)."""
        crops = self.cropper.crop_detected(detections, timestamps_s)
        return VideoFaces(crops, kept_frames(crops.has_face, self.face.no_face), list(timestamps_s))

    def faces(
        self, frames: Sequence[Frame], timestamps_s: Sequence[float], detect: Detect | None = None
    ) -> VideoFaces:
        """The faces stage of one video, detecting with `detect` (default: `detect_faces`)."""
        return self.faces_from((detect or self.detect_faces)(frames), timestamps_s)

    def embed(self, crops: Tensor) -> Tensor:
        """`[N, 3, S, S]` uint8 crops -> `[N, D]` float32 features on CPU."""
        return self.embedder.embed(crops)

    def features_from(self, faces: VideoFaces, embeddings: Tensor) -> VideoFeatures:
        """One video's features from the embeddings of its kept crops, in order."""
        return self.assembled(faces.crops.has_face, faces.timestamps_s, embeddings)

    def assembled(
        self, has_face: Sequence[bool], timestamps_s: Sequence[float], embeddings: Tensor
    ) -> VideoFeatures:
        """One video's features from its face flags and sampled times (one per frame) and the
        embeddings of the frames the face policy keeps, in order."""
        if len(has_face) != len(timestamps_s):
            raise ValueError(f"{len(has_face)} face flags for {len(timestamps_s)} frames")
        kept = kept_frames(has_face, self.face.no_face)
        if embeddings.shape != (len(kept), self.feature_dim):
            raise ValueError(
                f"expected embeddings of shape {(len(kept), self.feature_dim)} for the kept "
                f"frames, got {tuple(embeddings.shape)}"
            )
        return VideoFeatures(
            features=embeddings.to("cpu", torch.float32),
            timestamps_s=[timestamps_s[i] for i in kept],
            sampled=len(timestamps_s),
            with_face=sum(has_face),
        )

    def features(self, faces: VideoFaces, embed: Embed | None = None) -> VideoFeatures:
        """The embed stage of one video, embedding with `embed` (default: `embed`)."""
        return self.features_from(faces, (embed or self.embed)(faces.kept_crops))
