"""The inference spec: everything needed to turn a video into a verdict, stored in the checkpoint.

`spec_hash` covers exactly what changes the cached features (sampling, face crops, backbone and
its weights), so two models never share incompatible cached features. `trained_on` (what the
classifier learned from, and what it is for) changes no feature, so it stays out of `spec_hash`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

FEATURE_FORMAT = 1

BackboneArch = Literal[
    "resnet50", "resnet18", "mobilenet_v3_large", "efficientnet_b0", "mtcnn_onet"
]
ComputeDtype = Literal["float32", "bfloat16", "float16"]

FEATURE_DIMS: dict[str, int] = {
    "resnet50": 2048,
    "resnet18": 512,
    "mobilenet_v3_large": 960,
    "efficientnet_b0": 1280,
    "mtcnn_onet": 256,
}
ONET_INPUT_SIZE = 48
"""MTCNN's O-net reads 48 x 48 crops (its dense layer takes a fixed 3 x 3 x 128 map)."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    _omitted_when: ClassVar[dict[str, Any]] = {}
    """Fields left out of the JSON while they hold this value (fields added after checkpoints
    were written: those checkpoints keep their `spec_hash` and digest)."""

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name, unset in self._omitted_when.items():
            if getattr(self, name) == unset:
                data.pop(name, None)
        return data


class KeyframeSnap(_Spec):
    """Sample keyframes where they lie close to the sampled times (cheap to decode alone)."""

    tolerance_s: float = Field(
        default=0.5,
        ge=0.0,
        le=10.0,
        description="a sample time moves to the nearest keyframe at most this many seconds away; "
        "farther from any keyframe it is decoded from the keyframe before it (a GOP prefix)",
    )


class SamplingSpec(_Spec):
    """Which frames of a video are looked at: every n-th frame, or k evenly spaced ones.

    `keyframes` (optional) snaps those times to nearby keyframes (`models.keyframe_reader`);
    when unset the field is left out of the spec's JSON, so checkpoints without it keep their
    `spec_hash` and digest.
    """

    mode: Literal["every_nth", "uniform"] = "uniform"
    every_nth: Annotated[int, Field(ge=1)] = 30
    num_frames: Annotated[int, Field(ge=1)] = 32
    max_frames: Annotated[int, Field(ge=1)] = 64
    keyframes: KeyframeSnap | None = None

    _omitted_when: ClassVar[dict[str, Any]] = {"keyframes": None}


class DecodeLimits(_Spec):
    """Safety limits for decoding one video (not part of `spec_hash`)."""

    max_bytes: Annotated[int, Field(ge=1)] = 1 << 30
    max_duration_s: Annotated[float, Field(gt=0)] = 4 * 3600.0
    max_pixels: Annotated[int, Field(ge=1)] = 3840 * 2160
    max_decoded_frames: Annotated[int, Field(ge=1)] = 250_000
    max_wall_s: Annotated[float, Field(gt=0)] = 300.0


class FaceSpec(_Spec):
    """Face cropping: MTCNN (facenet-pytorch) largest face, square crop with a margin."""

    detector: Literal["mtcnn", "none"] = "mtcnn"
    margin: Annotated[float, Field(ge=0.0, le=2.0)] = 0.3
    min_face_size: Annotated[int, Field(ge=8)] = 40
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    detect_max_side: Annotated[int, Field(ge=64)] = 640
    no_face: Literal["drop", "full_frame"] = "drop"
    box_smoothing_s: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="standard deviation (seconds) of the Gaussian over which a video's face boxes "
        "are smoothed (local linear fit, models.tracking); 0 uses each frame's detection as is",
    )
    fill_gaps_s: float = Field(
        default=0.0,
        ge=0.0,
        le=60.0,
        description="frames without a detection between two detections of one face track at most "
        "this many seconds apart get the track's box (models.tracking); 0 leaves them without a "
        "face. Left out of the spec's JSON when 0, so older checkpoints keep their spec_hash",
    )

    _omitted_when: ClassVar[dict[str, Any]] = {"fill_gaps_s": 0.0}


class BackboneSpec(_Spec):
    """Frame feature extractor: a torchvision classifier without its head, or MTCNN's O-net
    without its outputs (`mtcnn_onet`: 256 face features of 48 px crops)."""

    arch: BackboneArch = "resnet50"
    weights: str = Field(
        default="imagenet",
        description="identity of the weights: 'imagenet' (torchvision archs), 'facenet' "
        "(mtcnn_onet: the O-net weights in the facenet-pytorch wheel), 'none' (random init) or "
        "'file:<name>'",
    )
    weights_sha256: str | None = Field(
        default=None, description="digest of the backbone weights stored in the checkpoint"
    )
    input_size: Annotated[int, Field(ge=32)] = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    dtype: ComputeDtype = "float32"
    channels_last: bool = True

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIMS[self.arch]

    @model_validator(mode="after")
    def _check_input_size(self) -> BackboneSpec:
        if self.arch == "mtcnn_onet" and self.input_size != ONET_INPUT_SIZE:
            raise ValueError(f"mtcnn_onet reads {ONET_INPUT_SIZE} px crops, not {self.input_size}")
        return self


class MemberSpec(_Spec):
    """One sequence classifier of the ensemble (bidirectional LSTM or GRU + attention pooling)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")]
    kind: Literal["lstm", "gru"]
    hidden_size: Annotated[int, Field(ge=1)]
    num_layers: Annotated[int, Field(ge=1)] = 2
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    fc_dims: tuple[int, ...] = (256,)
    input_norm: Literal["none", "standardize"] = Field(
        default="none",
        description="'standardize': subtract a per-feature mean and divide by a per-feature std "
        "(computed on the TRAIN features, stored with the member's weights)",
    )
    input_dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    temporal_change: bool = Field(
        default=False,
        description="also feed each frame's absolute change from the previous frame "
        "(|x_t - x_(t-1)|, after standardisation; 0 for the first frame)",
    )
    centre_sequences: bool = Field(
        default=False,
        description="subtract each sequence's mean frame (after standardisation), so the member "
        "reads how frames depart from their video's average rather than the average itself "
        "(what the face looks like). Left out of the spec's JSON when false",
    )

    _omitted_when: ClassVar[dict[str, Any]] = {"centre_sequences": False}


DEFAULT_MEMBERS: tuple[MemberSpec, ...] = (
    MemberSpec(name="lstm768", kind="lstm", hidden_size=768),
    MemberSpec(name="lstm512", kind="lstm", hidden_size=512),
    MemberSpec(name="gru768", kind="gru", hidden_size=768),
)


class EnsembleSpec(_Spec):
    """Members and their (optional) weights for softmax-probability averaging."""

    members: tuple[MemberSpec, ...] = DEFAULT_MEMBERS
    weights: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> EnsembleSpec:
        names = [m.name for m in self.members]
        if not names:
            raise ValueError("an ensemble needs at least one member")
        if len(set(names)) != len(names):
            raise ValueError(f"member names must be unique: {names}")
        if self.weights is not None and (
            len(self.weights) != len(self.members)
            or min(self.weights) < 0
            or sum(self.weights) <= 0
        ):
            raise ValueError("weights need one non-negative value per member and a positive sum")
        return self


DatasetKind = Literal["synthetic", "real", "unknown"]
SYNTHETIC_USE = (
    "pipeline demonstration and tests only: trained on synthetic faces, so its verdicts on real "
    "videos mean nothing"
)


class TrainingData(_Spec):
    """What a checkpoint's classifier was trained on and what it is for.

    `kind`: `synthetic` (generated clips, e.g. `synth`), `real` (recorded videos and real
    deepfakes, e.g. Celeb-DF v2) or `unknown` (checkpoints written before this was recorded).
    """

    kind: DatasetKind = "unknown"
    name: str = "unknown"
    intended_use: str = "unknown"


class PipelineSpec(_Spec):
    """The whole inference recipe of one checkpoint."""

    name: str = "dfd-ensemble"
    version: str = "0"
    sampling: SamplingSpec = SamplingSpec()
    decode: DecodeLimits = DecodeLimits()
    face: FaceSpec = FaceSpec()
    backbone: BackboneSpec = BackboneSpec()
    ensemble: EnsembleSpec = EnsembleSpec()
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    temperature: Annotated[float, Field(gt=0.0)] = 1.0
    training: dict[str, Any] = Field(default_factory=dict)
    trained_on: TrainingData = TrainingData()

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def spec_hash(self) -> str:
        """Hash of everything that changes the features (namespaces the feature cache)."""
        return feature_hash(self.sampling, self.face, self.backbone)


def feature_hash(sampling: SamplingSpec, face: FaceSpec, backbone: BackboneSpec) -> str:
    """Stable 16-hex-digit digest of the feature-defining parts of a spec."""
    document = {
        "feature_format": FEATURE_FORMAT,
        "sampling": sampling.model_dump(mode="json"),
        "face": face.model_dump(mode="json"),
        "backbone": backbone.model_dump(mode="json"),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
