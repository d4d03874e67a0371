"""Feature store: round trip, resume, failures and refusal of another spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.spec import BackboneSpec, FaceSpec, SamplingSpec
from training.features import (
    FeatureStore,
    FeatureStoreError,
    SpecMismatch,
    StoreSpec,
    ViewFeatures,
)


def _spec(**backbone: object) -> StoreSpec:
    uniform = SamplingSpec(mode="uniform", num_frames=4, max_frames=4)
    return StoreSpec(
        inference_sampling=uniform,
        train_sampling={"real": uniform, "fake": uniform},
        face=FaceSpec(detector="none"),
        backbone=BackboneSpec(arch="mobilenet_v3_large", weights="none", **backbone),
        views=1,
    )


def _views(length: int, seed: int, count: int = 2) -> list[ViewFeatures]:
    generator = torch.Generator().manual_seed(seed)
    return [
        ViewFeatures(
            view,
            torch.randn(length - view, 960, generator=generator),
            [0.1 * i for i in range(length - view)],
            [True] * (length - view),
        )
        for view in range(count)
    ]


def test_round_trip_keeps_features_and_metadata(tmp_path: Path) -> None:
    store = FeatureStore.create_or_resume(tmp_path, _spec(), shard_videos=2)
    written = {f"/v/{i}.mp4": _views(4, i) for i in range(3)}
    for path, views in written.items():
        store.add_video(path, "fake", path[3], "train", views)
    store.flush()

    reopened = FeatureStore.open(tmp_path)
    assert reopened.spec == _spec()
    assert reopened.spec_hash == _spec().spec_hash
    assert len(reopened.entries) == 6
    assert {e.shard for e in reopened.entries} == {
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    }
    for entry in reopened.entries:
        view = written[entry.path][entry.view]
        assert torch.equal(reopened.features(entry), view.features)
        assert entry.length == len(view.timestamps_s)
        assert entry.timestamps_s == pytest.approx(view.timestamps_s)
        assert entry.target == 1
    assert [e.view for e in reopened.select("train", clean_only=True)] == [0, 0, 0]
    assert reopened.select("test") == []


def test_resume_skips_stored_and_failed_videos(tmp_path: Path) -> None:
    store = FeatureStore.create_or_resume(tmp_path, _spec())
    store.add_video("/v/a.mp4", "real", "a", "val", _views(3, 0, count=1))
    store.add_failure("/v/broken.mp4", "DECODE_FAILED: bad")
    store.flush()
    store.add_video("/v/lost.mp4", "real", "c", "val", _views(3, 1, count=1))  # never flushed

    resumed = FeatureStore.create_or_resume(tmp_path, _spec())
    assert resumed.contains("/v/a.mp4")
    assert resumed.contains("/v/broken.mp4")
    assert not resumed.contains("/v/lost.mp4")
    assert resumed.failures == {"/v/broken.mp4": "DECODE_FAILED: bad"}
    resumed.add_video("/v/lost.mp4", "real", "c", "val", _views(3, 1, count=1))
    resumed.flush()
    assert [e.path for e in FeatureStore.open(tmp_path).entries] == ["/v/a.mp4", "/v/lost.mp4"]
    with pytest.raises(FeatureStoreError):
        resumed.add_video("/v/a.mp4", "real", "a", "val", _views(3, 0, count=1))


def test_other_spec_is_refused(tmp_path: Path) -> None:
    FeatureStore.create_or_resume(tmp_path, _spec())
    other = _spec(input_size=128)
    assert other.spec_hash != _spec().spec_hash
    with pytest.raises(SpecMismatch) as error:
        FeatureStore.create_or_resume(tmp_path, other)
    assert error.value.code == "SPEC_MISMATCH"


def test_backbone_weights_round_trip(tmp_path: Path) -> None:
    store = FeatureStore.create_or_resume(tmp_path, _spec())
    module = torch.nn.Linear(3, 2)
    assert not store.has_backbone()
    store.save_backbone(module)
    state = FeatureStore.open(tmp_path).backbone_state()
    assert torch.equal(state["weight"], module.weight.detach())


def test_open_missing_store_fails(tmp_path: Path) -> None:
    with pytest.raises(FeatureStoreError):
        FeatureStore.open(tmp_path / "nothing")
