"""`benchmarks.context.Context.checkpoint`: `--model` picks the benchmark checkpoint."""

from __future__ import annotations

from pathlib import Path

from benchmarks.context import Context
from models.backbones import build_backbone, weights_digest
from models.checkpoint import load_checkpoint
from training.demo import DEMO_FACE, DEMO_MEMBERS


def test_onet_model_is_the_demo_model_with_the_wheels_onet_weights(tmp_path: Path) -> None:
    path = Context("full", tmp_path, tmp_path, model="onet").checkpoint()
    loaded = load_checkpoint(path)
    assert loaded.spec.backbone.arch == "mtcnn_onet"
    assert loaded.spec.face == DEMO_FACE
    assert loaded.spec.ensemble.members == DEMO_MEMBERS
    assert loaded.spec.sampling.every_nth == 30
    wheel = build_backbone(loaded.spec.backbone.model_copy(update={"weights_sha256": None}))
    stored = build_backbone(loaded.spec.backbone, state_dict=loaded.backbone_state)
    assert weights_digest(stored) == weights_digest(wheel)


def test_size_model_keeps_the_sizes_own_checkpoint(tmp_path: Path) -> None:
    smoke = Context("smoke", tmp_path, tmp_path).checkpoint()
    onet = Context("smoke", tmp_path, tmp_path, model="onet").checkpoint()
    assert smoke != onet
    assert load_checkpoint(smoke).spec.backbone.arch == "mobilenet_v3_large"
    assert load_checkpoint(onet).spec.backbone.arch == "mtcnn_onet"
