"""The one-file checkpoint: round trip, header-only reads, and every way loading can fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.backbones import build_backbone, weights_digest
from models.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    describe,
    load_checkpoint,
    save_checkpoint,
    spec_of,
)
from models.ensemble import Ensemble
from models.errors import CheckpointError
from models.heads import pad_sequences
from models.spec import SYNTHETIC_USE, TrainingData
from tests.checkpoints import make_checkpoint, tiny_spec

Tensors = dict[str, torch.Tensor]
Metadata = dict[str, str]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", seed=3)


def _rewrite(source: Path, target: Path, change: Callable[[Tensors, Metadata], None]) -> Path:
    """Copy a checkpoint with its tensors and metadata changed in place by `change`."""
    tensors = load_file(source)
    with safe_open(source, framework="pt") as reader:
        metadata = dict(reader.metadata())
    change(tensors, metadata)
    save_file(tensors, target, metadata=metadata)
    return target


def test_round_trip_restores_identical_weights_and_outputs(tmp_path: Path) -> None:
    spec = tiny_spec()
    backbone = build_backbone(spec.backbone, seed=1)
    torch.manual_seed(1)
    ensemble = Ensemble(spec.ensemble, spec.feature_dim).eval()
    saved = save_checkpoint(tmp_path / "model.safetensors", spec, backbone, ensemble)

    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.spec == saved
    assert saved.backbone.weights_sha256 == weights_digest(backbone)
    assert saved.model_copy(update={"backbone": spec.backbone}) == spec
    restored_backbone = build_backbone(loaded.spec.backbone, state_dict=loaded.backbone_state)
    restored = Ensemble(loaded.spec.ensemble, loaded.spec.feature_dim).eval()
    for name, state in loaded.member_states.items():
        restored.member(name).load_state_dict(state)

    crops = torch.randint(
        0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    pixels = crops.float() / 255
    with torch.inference_mode():
        assert torch.equal(backbone(pixels), restored_backbone(pixels))
        x, mask = pad_sequences(
            [torch.randn(4, spec.feature_dim), torch.randn(2, spec.feature_dim)]
        )
        original, again = ensemble(x, mask), restored(x, mask)
    assert torch.equal(original.fake_probability, again.fake_probability)
    assert torch.equal(original.attention, again.attention)


def test_tensor_names_and_metadata(checkpoint: Path) -> None:
    with safe_open(checkpoint, framework="pt") as reader:
        names, metadata = list(reader.keys()), reader.metadata()
    assert metadata["format"] == FORMAT and metadata["format_version"] == FORMAT_VERSION
    assert json.loads(metadata["spec"])["name"] == "test-ensemble"
    assert any(n.startswith("backbone.") for n in names)
    assert {n.split(".")[1] for n in names if n.startswith("members.")} == {
        "lstm_a",
        "lstm_b",
        "gru_a",
    }
    assert set(load_checkpoint(checkpoint).member_states) == {"lstm_a", "lstm_b", "gru_a"}


def test_spec_of_and_describe_read_the_header(checkpoint: Path) -> None:
    spec = spec_of(checkpoint)
    assert spec == load_checkpoint(checkpoint).spec
    info = describe(checkpoint)
    assert info["spec_hash"] == spec.spec_hash
    assert info["spec"] == json.loads(spec.model_dump_json())


def test_training_data_is_recorded_outside_spec_hash(tmp_path: Path) -> None:
    plain = tiny_spec()
    trained_on = TrainingData(kind="synthetic", name="synth v1", intended_use=SYNTHETIC_USE)
    spec = plain.model_copy(update={"trained_on": trained_on})
    assert spec.spec_hash == plain.spec_hash  # it changes no feature: cached features are shared
    path = make_checkpoint(tmp_path / "synthetic.safetensors", spec=spec)
    assert spec_of(path).trained_on == trained_on
    assert describe(path)["trained_on"] == {
        "kind": "synthetic",
        "name": "synth v1",
        "intended_use": SYNTHETIC_USE,
    }


def test_a_checkpoint_without_training_data_loads_as_unknown(
    checkpoint: Path, tmp_path: Path
) -> None:
    def drop_training_data(_tensors: Tensors, metadata: Metadata) -> None:
        spec = json.loads(metadata["spec"])
        del spec["trained_on"]
        metadata["spec"] = json.dumps(spec)

    older = _rewrite(checkpoint, tmp_path / "older.safetensors", drop_training_data)
    assert load_checkpoint(older).spec.trained_on == TrainingData()
    assert describe(older)["trained_on"] == {
        "kind": "unknown",
        "name": "unknown",
        "intended_use": "unknown",
    }


def _same_tensors(first: Path, second: Path) -> bool:
    a, b = load_file(first), load_file(second)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_saving_is_deterministic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    first = make_checkpoint(tmp_path / "a.safetensors", seed=5)
    second = make_checkpoint(tmp_path / "b.safetensors", seed=5)
    assert _same_tensors(first, second) and spec_of(first) == spec_of(second)
    make_checkpoint(first, seed=6)  # overwrite in place
    assert not _same_tensors(first, second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_save_refuses_a_spec_naming_other_backbone_weights(tmp_path: Path) -> None:
    spec = tiny_spec()
    backbone = build_backbone(spec.backbone, seed=0)
    other = spec.model_copy(
        update={"backbone": spec.backbone.model_copy(update={"weights_sha256": "0" * 64})}
    )
    ensemble = Ensemble(spec.ensemble, spec.feature_dim)
    with pytest.raises(CheckpointError, match="names other weights"):
        save_checkpoint(tmp_path / "x.safetensors", other, backbone, ensemble)
    with pytest.raises(CheckpointError, match="not built from this spec"):
        save_checkpoint(tmp_path / "x.safetensors", spec, backbone, Ensemble(spec.ensemble, 7))
    with pytest.raises(CheckpointError, match="float32"):
        save_checkpoint(tmp_path / "x.safetensors", spec, backbone.double(), ensemble)
    assert not list(tmp_path.iterdir())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        spec_of(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_file(checkpoint: Path, tmp_path: Path, keep: float) -> None:
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="not a safetensors file or is corrupted"):
        load_checkpoint(truncated)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04\x95 this is a pickle, not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file or is corrupted"):
        load_checkpoint(junk)


def test_unknown_format_and_version(checkpoint: Path, tmp_path: Path) -> None:
    def version_2(tensors: Tensors, metadata: Metadata) -> None:
        metadata["format_version"] = "2"

    def other_format(tensors: Tensors, metadata: Metadata) -> None:
        metadata["format"] = "something-else"

    newer = _rewrite(checkpoint, tmp_path / "v2.safetensors", version_2)
    with pytest.raises(CheckpointError, match="unsupported format_version '2'"):
        load_checkpoint(newer)
    with pytest.raises(CheckpointError, match="unsupported format_version"):
        spec_of(newer)
    with pytest.raises(CheckpointError, match="is not a dfd-checkpoint file"):
        load_checkpoint(_rewrite(checkpoint, tmp_path / "other.safetensors", other_format))
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, plain)
    with pytest.raises(CheckpointError, match="is not a dfd-checkpoint file"):
        load_checkpoint(plain)


def test_invalid_spec(checkpoint: Path, tmp_path: Path) -> None:
    def bad_threshold(tensors: Tensors, metadata: Metadata) -> None:
        spec = json.loads(metadata["spec"])
        spec["threshold"] = 1.5
        metadata["spec"] = json.dumps(spec)

    with pytest.raises(CheckpointError, match="invalid spec"):
        load_checkpoint(_rewrite(checkpoint, tmp_path / "bad.safetensors", bad_threshold))


def test_missing_unexpected_and_misshapen_tensors(checkpoint: Path, tmp_path: Path) -> None:
    def drop_member_tensor(tensors: Tensors, metadata: Metadata) -> None:
        del tensors["members.gru_a.classifier.0.weight"]

    def extra_tensor(tensors: Tensors, metadata: Metadata) -> None:
        tensors["members.gru_a.extra"] = torch.zeros(1)

    def stray_tensor(tensors: Tensors, metadata: Metadata) -> None:
        tensors["optimizer.state"] = torch.zeros(1)

    def reshaped(tensors: Tensors, metadata: Metadata) -> None:
        tensors["members.lstm_a.norm.weight"] = torch.ones(3)

    def drop_backbone_tensor(tensors: Tensors, metadata: Metadata) -> None:
        del tensors[next(n for n in tensors if n.startswith("backbone."))]

    def drop_batch_count(tensors: Tensors, metadata: Metadata) -> None:
        del tensors["backbone.features.0.1.num_batches_tracked"]

    def float64(tensors: Tensors, metadata: Metadata) -> None:
        tensors["members.lstm_a.norm.weight"] = tensors["members.lstm_a.norm.weight"].double()

    cases = [
        (drop_member_tensor, r"ensemble.*missing tensors \[gru_a\.classifier\.0\.weight\]"),
        (extra_tensor, r"unexpected tensors \[gru_a\.extra\]"),
        (stray_tensor, r"unexpected tensors optimizer\.state"),
        (reshaped, r"size mismatch for lstm_a\.norm\.weight"),
        (drop_backbone_tensor, r"backbone mobilenet_v3_large.*missing tensors \[features"),
        (drop_batch_count, r"missing tensors \[features\.0\.1\.num_batches_tracked\]"),
        (float64, r"must be float32: members\.lstm_a\.norm\.weight"),
    ]
    for index, (change, message) in enumerate(cases):
        broken = _rewrite(checkpoint, tmp_path / f"broken{index}.safetensors", change)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(broken)


def test_backbone_digest_mismatch(checkpoint: Path, tmp_path: Path) -> None:
    def perturb(tensors: Tensors, metadata: Metadata) -> None:
        name = next(n for n in tensors if n.startswith("backbone.") and n.endswith("weight"))
        tensors[name] = tensors[name] + 1e-3

    tampered = _rewrite(checkpoint, tmp_path / "tampered.safetensors", perturb)
    with pytest.raises(
        CheckpointError, match=r"digest .* does not match the spec's weights_sha256"
    ):
        load_checkpoint(tampered)
