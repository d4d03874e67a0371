"""`finetune`: a few steps lower the loss; the weights round-trip through `extract --weights
file:` with their record; a finished run resumes without training again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.backbones import build_backbone, weights_digest
from models.spec import BackboneSpec
from tests.videos import index_frames, make_video
from training.cli import main
from training.crops import CropSet
from training.features import FeatureStore
from training.finetune import (
    RECORD_FILE,
    WEIGHTS_FILE,
    ClipClassifier,
    FinetuneConfig,
    FrameClassifier,
    clip_batch,
    clip_windows,
    evaluate,
    finetune,
    finetune_record,
    train_one_epoch,
    training_batch,
)
from training.manifest import ManifestRow, write_manifest
from training.train import class_weights

TINY = BackboneSpec(arch="mtcnn_onet", weights="none", input_size=48)


def _faces(count: int, seed: int) -> torch.Tensor:
    """Smooth face-like crops: a bright ellipse on a darker background, random colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:48, 0:48]
    inside = ((x - 24) / 15.0) ** 2 + ((y - 24) / 19.0) ** 2 <= 1.0
    crops = []
    for _ in range(count):
        skin, background = rng.uniform(120, 220, 3), rng.uniform(0, 90, 3)
        image = np.where(inside[..., None], skin, background) + rng.normal(0, 4, (48, 48, 3))
        crops.append(torch.from_numpy(image.clip(0, 255).astype(np.uint8)).permute(2, 0, 1))
    return torch.stack(crops)


@pytest.mark.parametrize(("clip_frames", "centred"), [(0, False), (4, False), (4, True)])
def test_a_few_steps_lower_the_loss(clip_frames: int, centred: bool) -> None:
    torch.manual_seed(0)
    if clip_frames:  # 4 real videos of 8 crops: 8 clips an epoch, each with a blended twin
        crops = CropSet(_faces(32, 0), torch.arange(32) // 8, [f"v{i}" for i in range(4)], [0] * 4)
    else:
        crops = CropSet(_faces(16, 0), torch.arange(16), [f"v{i}" for i in range(16)], [0] * 16)
    config = FinetuneConfig(
        backbone=TINY, batch_size=8, jpeg_p=0.0, clip_frames=clip_frames, clip_centred=centred
    )
    model = (
        ClipClassifier(build_backbone(TINY), TINY, centred)
        if clip_frames
        else FrameClassifier(build_backbone(TINY), TINY)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    weights = class_weights([0] * 16 + [1] * 16)
    losses = [
        train_one_epoch(
            model,
            crops,
            optimizer,
            constant,
            config,
            np.random.default_rng(epoch),
            weights,
            torch.device("cpu"),
        )
        for epoch in range(8)
    ]
    assert np.mean(losses[-2:]) < losses[0], losses  # from chance (ln 2) downwards


@pytest.mark.parametrize("classifier", [FrameClassifier, ClipClassifier])
def test_evaluate_pools_frames_per_video(
    classifier: type[FrameClassifier | ClipClassifier],
) -> None:
    crops = CropSet(_faces(6, 1), torch.tensor([0, 0, 0, 1, 1, 2]), ["a", "b", "c"], [0, 1, 1])
    model = classifier(build_backbone(TINY), TINY)
    result = evaluate(model, crops, torch.device("cpu"))
    assert set(result) == {"val_loss", "val_auc"} and result["val_auc"] in (0.0, 0.5, 1.0)


def test_clip_windows_are_consecutive_crops_of_one_video() -> None:
    video = torch.tensor([0] * 7 + [1] * 3 + [2] * 9)
    crops = CropSet(_faces(19, 3), video, ["a", "b", "c"], [0, 1, 0])
    windows = clip_windows(crops, 3, np.random.default_rng(0))
    assert len(windows) == 2 + 1 + 3
    for window in windows:
        assert len(set(video[window].tolist())) == 1
        assert torch.equal(window, torch.arange(int(window[0]), int(window[0]) + 3))


def test_clip_batch_gives_each_real_clip_a_jittered_blended_twin() -> None:
    crops = CropSet(_faces(12, 4), torch.arange(12) // 4, ["a", "b", "c"], [0, 1, 0])
    config = FinetuneConfig(backbone=TINY, clip_frames=4, jpeg_p=0.0, flip_p=0.0)
    windows = clip_windows(crops, 4, np.random.default_rng(0))
    clips, labels = clip_batch(crops, windows, config, np.random.default_rng(1))
    assert clips.shape == (5, 4, 3, 48, 48) and clips.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 1, 0, 1]
    assert torch.equal(clips[0], crops.crops[:4]) and torch.equal(clips[2], crops.crops[4:8])
    twin = clips[1]
    assert not torch.equal(twin, clips[0])
    changes = [(twin[i] != clips[0][i]).any(dim=0) for i in range(4)]
    assert len({tuple(c.flatten().tolist()) for c in changes}) > 1  # the blend moves per frame


@pytest.mark.parametrize("clip_frames", [1, 9])
def test_clip_frames_is_zero_or_two_to_frames(clip_frames: int) -> None:
    with pytest.raises(ValueError, match="clip_frames"):
        FinetuneConfig(backbone=TINY, frames=8, clip_frames=clip_frames)
    with pytest.raises(ValueError, match="clip_centred needs clip_frames"):
        FinetuneConfig(backbone=TINY, clip_centred=True)


@torch.inference_mode()
def test_a_centred_clip_classifier_reads_no_feature_level() -> None:
    torch.manual_seed(0)
    model = ClipClassifier(nn.Identity(), TINY, centred=True)
    features = torch.randn(2, 5, TINY.feature_dim)
    shifted = features + torch.randn(2, 1, TINY.feature_dim) * 10
    model.features = lambda crops: crops.float()  # type: ignore[method-assign]
    torch.testing.assert_close(model(shifted), model(features), atol=1e-4, rtol=0)
    model.centred = False
    assert not torch.allclose(model(shifted), model(features))


@pytest.mark.parametrize(("chance", "twins"), [(1.0, 3), (0.0, 0)])
def test_self_blend_p_sets_the_twins_of_real_crops(chance: float, twins: int) -> None:
    crops = CropSet(_faces(5, 2), torch.arange(5), [f"v{i}" for i in range(5)], [0, 0, 0, 1, 1])
    config = FinetuneConfig(backbone=TINY, self_blend_p=chance, jpeg_p=0.0)
    images, labels = training_batch(crops, np.arange(5), config, np.random.default_rng(0))
    assert labels.tolist().count(1) == 2 + twins and len(images) == 5 + twins


def test_supervised_finetune_needs_the_datasets_fakes(tmp_path: Path) -> None:
    rows = [ManifestRow("r.mp4", "real", "a", "train"), ManifestRow("f.mp4", "fake", "b", "val")]
    config = FinetuneConfig(backbone=TINY, self_blend_p=0.0, dataset_fakes=False)
    with pytest.raises(ValueError, match="fake videos"):
        finetune(rows, tmp_path / "ft", config)


def _dataset(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = []
    placement = [("real", "train"), ("real", "train"), ("fake", "train"), ("real", "val")]
    placement.append(("fake", "val"))
    for i, (label, split) in enumerate(placement):
        path = make_video(root / f"v{i}.mp4", index_frames(4, (48, 48)), fps=4)
        rows.append(ManifestRow(str(path), label, f"g{i}", split))
    write_manifest(root / "manifest.csv", rows)
    return root / "manifest.csv"


@pytest.mark.parametrize("clip_frames", ["0", "2"])
def test_weights_round_trip_through_extract(tmp_path: Path, clip_frames: str) -> None:
    manifest, out, store = _dataset(tmp_path / "data"), tmp_path / "ft", tmp_path / "store"
    common = ["--arch", "mtcnn_onet", "--input-size", "48", "--detector", "none"]
    tune = ["finetune", "--manifest", manifest, "--out", out, "--weights", "none", *common]
    tune += ["--frames", "3", "--epochs", "2", "--batch-size", "4", "--clip-frames", clip_frames]
    assert main([str(a) for a in tune]) == 0
    record = finetune_record(out / WEIGHTS_FILE)
    assert record["arch"] == "mtcnn_onet" and record["start_weights"] == "none"
    assert record["data"]["train_videos"] == {"real": 2, "fake": 1}
    assert record["config"]["clip_frames"] == int(clip_frames)
    history = json.loads((out / RECORD_FILE).read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1]

    assert main([str(a) for a in tune]) == 0  # finished: resumes without another epoch
    assert json.loads((out / RECORD_FILE).read_text())["history"] == history

    weights = f"file:{out / WEIGHTS_FILE}"
    extract = ["extract", "--manifest", manifest, "--out", store, "--weights", weights, *common]
    extract += ["--inference-frames", "3", "--sampling", "uniform"]
    assert main([str(a) for a in extract]) == 0
    features = FeatureStore.open(store)
    stored = build_backbone(features.spec.backbone, state_dict=features.backbone_state())
    assert weights_digest(stored) == record["weights_sha256"]
    assert features.spec.backbone.weights_sha256 == record["weights_sha256"]
    assert features.backbone_record() == record
