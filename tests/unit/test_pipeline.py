"""The Detector: staged path == predict_file, batching, face policy, determinism, errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from models.backbones import build_backbone
from models.checkpoint import load_checkpoint
from models.ensemble import Ensemble
from models.errors import NoFace, NotAVideo, TooLarge
from models.faces import FaceDetection
from models.pipeline import Detector, Prediction, VideoFeatures
from models.spec import DecodeLimits
from tests.checkpoints import make_checkpoint, tiny_spec
from tests.videos import make_video


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(2)


def _noise_frames(n: int, seed: int, size: tuple[int, int] = (64, 96)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    broken = root / "broken.mp4"
    broken.write_bytes(b"this is not a video at all" * 100)
    return {
        "checkpoint": make_checkpoint(root / "tiny.safetensors", seed=1),
        "noise_a": make_video(root / "a.mp4", _noise_frames(20, seed=1), fps=10),
        "noise_b": make_video(root / "b.mp4", _noise_frames(9, seed=2, size=(48, 64)), fps=5),
        "broken": broken,
    }


@pytest.fixture(scope="module")
def detector(files: dict[str, Path]) -> Detector:
    return Detector.load(files["checkpoint"])


def _staged(detector: Detector, path: Path) -> Prediction:
    """The stages the worker runs, called one by one."""
    video = detector.decode(path)
    faces = detector.faces_from(detector.detect_faces(video.frames), video.timestamps_s)
    embeddings = detector.embed(faces.kept_crops)
    return detector.classify([detector.features_from(faces, embeddings)])[0]


def test_predict_file_equals_the_staged_path(detector: Detector, files: dict[str, Path]) -> None:
    for name in ("noise_a", "noise_b"):
        assert detector.predict_file(files[name]) == _staged(detector, files[name])


def test_prediction_fields(detector: Detector, files: dict[str, Path]) -> None:
    prediction = detector.predict_file(files["noise_a"])
    assert prediction.sampled == 4 and prediction.with_face == 4  # detector "none": whole frames
    assert prediction.timestamps_s == pytest.approx([0.2, 0.7, 1.2, 1.7])
    assert len(prediction.attention) == 4
    assert sum(prediction.attention) == pytest.approx(1.0)
    assert set(prediction.members) == {"lstm_a", "lstm_b", "gru_a"}
    assert prediction.fake_probability == pytest.approx(sum(prediction.members.values()) / 3)
    assert prediction.threshold == 0.5
    assert prediction.label == ("fake" if prediction.fake_probability >= 0.5 else "real")


def test_threshold_decides_the_label(tmp_path: Path, files: dict[str, Path]) -> None:
    always = Detector.load(make_checkpoint(tmp_path / "t0.safetensors", seed=1, threshold=0.0))
    never = Detector.load(make_checkpoint(tmp_path / "t1.safetensors", seed=1, threshold=1.0))
    assert always.predict_file(files["noise_a"]).label == "fake"
    assert never.predict_file(files["noise_a"]).label == "real"


def test_batched_classification_matches_one_by_one(
    detector: Detector, files: dict[str, Path]
) -> None:
    features = [detector.extract(files["noise_a"]), detector.extract(files["noise_b"])]
    together = detector.classify(features)
    for item, batched in zip(features, together, strict=True):
        alone = detector.classify([item])[0]
        assert batched.fake_probability == pytest.approx(alone.fake_probability, abs=1e-6)
        assert batched.attention == pytest.approx(alone.attention, abs=1e-6)
        assert batched.timestamps_s == alone.timestamps_s
    assert detector.classify([]) == []


def test_embedding_frames_pooled_from_several_videos(
    detector: Detector, files: dict[str, Path]
) -> None:
    videos = [detector.decode(files["noise_a"]), detector.decode(files["noise_b"])]
    found = detector.detect_faces([f for v in videos for f in v.frames])
    first = len(videos[0].frames)
    faces = [
        detector.faces_from(found[:first], videos[0].timestamps_s).crops,
        detector.faces_from(found[first:], videos[1].timestamps_s).crops,
    ]
    pooled = detector.embed(torch.cat([faces[0].crops, faces[1].crops]))
    features = [
        detector.assembled(faces[0].has_face, videos[0].timestamps_s, pooled[:first]),
        detector.assembled(faces[1].has_face, videos[1].timestamps_s, pooled[first:]),
    ]
    for item, name in zip(features, ("noise_a", "noise_b"), strict=True):
        alone = detector.extract(files[name])
        torch.testing.assert_close(item.features, alone.features)
        assert item.timestamps_s == alone.timestamps_s


def test_loading_twice_gives_identical_predictions(files: dict[str, Path]) -> None:
    first = Detector.load(files["checkpoint"]).predict_file(files["noise_b"])
    second = Detector.load(files["checkpoint"]).predict_file(files["noise_b"])
    assert first == second


def test_warm_up_leaves_predictions_unchanged(files: dict[str, Path]) -> None:
    cold = Detector.load(files["checkpoint"]).predict_file(files["noise_b"])
    warmed = Detector.load(files["checkpoint"])
    warmed.warm_up()
    assert warmed.predict_file(files["noise_b"]) == cold


def test_in_memory_detector_matches_the_loaded_one(
    detector: Detector, files: dict[str, Path]
) -> None:
    loaded = load_checkpoint(files["checkpoint"])
    spec = loaded.spec
    ensemble = Ensemble(spec.ensemble, spec.feature_dim, temperature=spec.temperature)
    for name, state in loaded.member_states.items():
        ensemble.member(name).load_state_dict(state)
    backbone = build_backbone(spec.backbone, state_dict=loaded.backbone_state)
    in_memory = Detector(spec, backbone, ensemble)
    assert in_memory.predict_file(files["noise_a"]) == detector.predict_file(files["noise_a"])
    hotter = Ensemble(spec.ensemble, spec.feature_dim, temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        Detector(spec, backbone, hotter)


def test_assemble_checks_its_inputs(detector: Detector, files: dict[str, Path]) -> None:
    video = detector.decode(files["noise_a"])
    dim = detector.spec.feature_dim
    with pytest.raises(ValueError, match="face flags"):
        detector.assembled([True], video.timestamps_s, torch.zeros(1, dim))
    with pytest.raises(ValueError, match="expected embeddings"):
        detector.assembled([True, False, True, True], video.timestamps_s, torch.zeros(4, dim))
    features = detector.assembled(
        [True, False, True, False], video.timestamps_s, torch.zeros(2, dim)
    )
    assert features == VideoFeatures(
        features=features.features,
        timestamps_s=[video.timestamps_s[0], video.timestamps_s[2]],
        sampled=4,
        with_face=2,
    )


def test_no_face_policy_with_mtcnn_on_faceless_frames(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    dropping = Detector.load(
        make_checkpoint(tmp_path / "drop.safetensors", detector="mtcnn", no_face="drop")
    )
    with pytest.raises(NoFace) as caught:
        dropping.predict_file(files["noise_a"])
    assert caught.value.code == "NO_FACE"

    keeping = Detector.load(
        make_checkpoint(tmp_path / "full.safetensors", detector="mtcnn", no_face="full_frame")
    )
    prediction = keeping.predict_file(files["noise_a"])
    assert (prediction.sampled, prediction.with_face) == (4, 0)
    assert len(prediction.timestamps_s) == len(prediction.attention) == 4


def test_errors_carry_stable_codes(detector: Detector, files: dict[str, Path]) -> None:
    with pytest.raises(NotAVideo) as caught:
        detector.predict_file(files["broken"])
    assert caught.value.code == "NOT_A_VIDEO"
    strict = Detector.load(files["checkpoint"], decode_limits=DecodeLimits(max_bytes=100))
    assert strict.decode_limits.max_bytes == 100
    with pytest.raises(TooLarge):
        strict.predict_file(files["noise_a"])


def test_resnet50_and_mtcnn_on_an_astronaut_video(tmp_path: Path) -> None:
    """Real face detection: faces in the first half of the video, noise in the second."""
    astronaut = (resize(skdata.astronaut(), (256, 256), anti_aliasing=True) * 255).astype(np.uint8)
    frames = [np.roll(astronaut, shift, axis=1) for shift in range(0, 8, 2)]
    frames += _noise_frames(4, seed=3, size=(256, 256))
    video = make_video(tmp_path / "astronaut.mp4", frames, fps=4)
    spec = tiny_spec(arch="resnet50", detector="mtcnn", no_face="drop", input_size=96)
    detector = Detector.load(make_checkpoint(tmp_path / "r50.safetensors", spec=spec))

    decoded = detector.decode(video)
    faces = detector.crop_faces(decoded.frames, decoded.timestamps_s)
    assert faces.has_face == [True, True, False, False]
    x1, y1, x2, y2 = faces.boxes[0] or (0, 0, 0, 0)
    assert 60 < (x1 + x2) / 2 < 160 and 10 < (y1 + y2) / 2 < 110  # the astronaut's face
    assert detector.embed(faces.crops).shape == (4, 2048)

    prediction = detector.predict_file(video)
    assert (prediction.sampled, prediction.with_face) == (4, 2)
    assert prediction.timestamps_s == pytest.approx(
        [decoded.timestamps_s[0], decoded.timestamps_s[1]]
    )
    assert sum(prediction.attention) == pytest.approx(1.0)
    assert 0.0 <= prediction.fake_probability <= 1.0


def test_an_onet_backbone_checkpoint_serves(tmp_path: Path, files: dict[str, Path]) -> None:
    spec = tiny_spec(arch="mtcnn_onet", input_size=48, detector="mtcnn", no_face="full_frame")
    path = make_checkpoint(tmp_path / "onet.safetensors", spec=spec)
    detector = Detector.load(path)
    assert detector.spec.feature_dim == 256
    prediction = detector.predict_file(files["noise_a"])
    assert prediction == Detector.load(path).predict_file(files["noise_a"])
    assert 0.0 <= prediction.fake_probability <= 1.0 and prediction.sampled == 4


def test_the_stages_run_with_the_callers_runners(
    detector: Detector, files: dict[str, Path]
) -> None:
    video = detector.decode(files["noise_a"])
    ran: list[tuple[str, int]] = []

    def detect(frames: Sequence[np.ndarray]) -> list[FaceDetection]:
        ran.append(("detect", len(frames)))
        return detector.detect_faces(frames)

    def embed(crops: torch.Tensor) -> torch.Tensor:
        ran.append(("embed", len(crops)))
        return detector.embed(crops)

    faces = detector.faces(video.frames, video.timestamps_s, detect)
    features = detector.features(faces, embed)
    assert ran == [("detect", 4), ("embed", 4)]
    assert detector.classify([features])[0] == detector.predict_file(files["noise_a"])
