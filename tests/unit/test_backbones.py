"""Frame backbones: headless torchvision models, weight sources, digests and the embedder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from facenet_pytorch.models.mtcnn import ONet
from safetensors.torch import save_file
from torchvision import models as tv

from models.backbones import ComputeDtypeError, FrameEmbedder, build_backbone, weights_digest
from models.errors import WeightsError
from models.faces import mtcnn_weights
from models.spec import FEATURE_DIMS, ONET_INPUT_SIZE, BackboneSpec

SMALL = 64
LIGHT_ARCH = "mobilenet_v3_large"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def spec_for(arch: str = LIGHT_ARCH, **changes: object) -> BackboneSpec:
    size = ONET_INPUT_SIZE if arch == "mtcnn_onet" else SMALL
    return BackboneSpec(arch=arch, weights="none", input_size=size).model_copy(update=changes)


def crops(n: int = 2, side: int = SMALL, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("arch", sorted(FEATURE_DIMS))
def test_each_arch_gives_features_of_its_dimension(arch: str) -> None:
    spec = spec_for(arch)
    module = build_backbone(spec)
    assert not module.training
    features = FrameEmbedder(spec, module).embed(crops(2))
    assert features.shape == (2, FEATURE_DIMS[arch]) == (2, spec.feature_dim)
    assert features.dtype == torch.float32
    assert features.device.type == "cpu"
    assert bool(torch.isfinite(features).all())


def test_onet_trunk_with_facenet_weights_computes_mtcnn_onet() -> None:
    spec = BackboneSpec(arch="mtcnn_onet", weights="facenet", input_size=ONET_INPUT_SIZE)
    batch = crops(4, side=ONET_INPUT_SIZE)
    features = FrameEmbedder(spec, build_backbone(spec)).embed(batch)
    onet = ONet(pretrained=False)
    onet.load_state_dict(mtcnn_weights("onet.pt"))
    with torch.inference_mode():
        x = (batch.float() - 127.5) * 0.0078125  # O-net's own input scaling
        for name in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2", "conv3", "prelu3"):
            x = getattr(onet, name)(x)
        x = onet.prelu4(onet.conv4(onet.pool3(x)))
        expected = onet.prelu5(onet.dense5(x.permute(0, 3, 2, 1).reshape(4, -1)))
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)


def test_onet_reads_48_px_crops_and_takes_the_facenet_weights() -> None:
    with pytest.raises(ValueError, match="48 px"):
        BackboneSpec(arch="mtcnn_onet", input_size=64)
    with pytest.raises(WeightsError, match="'facenet'"):
        build_backbone(BackboneSpec(arch="mtcnn_onet", weights="imagenet", input_size=48))
    with pytest.raises(WeightsError, match="'imagenet'"):
        build_backbone(spec_for(weights="facenet"))


def test_random_init_is_deterministic_per_seed() -> None:
    spec = spec_for()
    assert weights_digest(build_backbone(spec, seed=5)) == weights_digest(
        build_backbone(spec, seed=5)
    )
    assert weights_digest(build_backbone(spec, seed=5)) != weights_digest(
        build_backbone(spec, seed=6)
    )


def test_building_does_not_touch_the_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_backbone(spec_for())
    assert torch.equal(torch.rand(3), expected)


def test_embedding_is_bit_identical_across_calls() -> None:
    spec = spec_for("resnet50")
    embedder = FrameEmbedder(spec, build_backbone(spec))
    batch = crops(3)
    assert torch.equal(embedder.embed(batch), embedder.embed(batch))


def test_crops_are_resized_to_the_input_size() -> None:
    spec = spec_for()
    embedder = FrameEmbedder(spec, build_backbone(spec))
    assert embedder.embed(crops(2, side=96)).shape == (2, spec.feature_dim)


def test_batches_are_split_by_max_batch() -> None:
    spec = spec_for()
    module = build_backbone(spec)
    batch = crops(5)
    whole = FrameEmbedder(spec, module).embed(batch)
    split = FrameEmbedder(spec, module, max_batch=2).embed(batch)
    assert torch.allclose(whole, split, rtol=1e-4, atol=1e-5)


def test_channels_last_does_not_change_features() -> None:
    spec = spec_for("resnet50")
    module = build_backbone(spec)
    batch = crops(2)
    with_cl = FrameEmbedder(spec, module).embed(batch)
    without = FrameEmbedder(spec.model_copy(update={"channels_last": False}), module).embed(batch)
    assert torch.allclose(with_cl, without, rtol=1e-4, atol=1e-4)


def test_normalisation_uses_the_spec_mean_and_std() -> None:
    spec = spec_for("resnet50")
    module = build_backbone(spec)
    batch = crops(2)
    imagenet = FrameEmbedder(spec, module).embed(batch)
    plain = spec.model_copy(update={"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    assert not torch.allclose(imagenet, FrameEmbedder(plain, module).embed(batch))


def test_empty_batch_and_bad_input() -> None:
    spec = spec_for()
    embedder = FrameEmbedder(spec, build_backbone(spec))
    assert embedder.embed(crops(0)).shape == (0, spec.feature_dim)
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(crops(1).float())


def test_imagenet_without_cache_raises_weights_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for arch in sorted(set(FEATURE_DIMS) - {"mtcnn_onet"}):  # O-net's weights ship in a wheel
        with pytest.raises(WeightsError, match="torch hub cache") as error:
            build_backbone(BackboneSpec(arch=arch, weights="imagenet"))
        assert str(tmp_path / "hub" / "checkpoints") in str(error.value)
    assert list(tmp_path.rglob("*.pth")) == []


def test_imagenet_weights_load_from_the_hub_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file in the cache goes through torchvision's loader (here: a full-model state dict)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = tv.MobileNet_V3_Large_Weights.IMAGENET1K_V2.url
    torch.manual_seed(9)
    full = tv.mobilenet_v3_large(weights=None)
    torch.save(full.state_dict(), checkpoints / url.rsplit("/", 1)[1])
    module = build_backbone(BackboneSpec(arch=LIGHT_ARCH, weights="imagenet"))
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, full.state_dict()[name])


def test_safetensors_file_round_trip(tmp_path: Path) -> None:
    spec = spec_for()
    source = build_backbone(spec, seed=1)
    path = tmp_path / "backbone.safetensors"
    save_file(source.state_dict(), path)
    loaded = build_backbone(spec, weights_file=path)
    assert weights_digest(loaded) == weights_digest(source)
    assert weights_digest(loaded) != weights_digest(build_backbone(spec))


def test_torch_file_named_in_the_spec(tmp_path: Path) -> None:
    source = build_backbone(spec_for(), seed=2)
    path = tmp_path / "backbone.pt"
    torch.save(source.state_dict(), path)
    loaded = build_backbone(spec_for(weights=f"file:{path}"))
    assert weights_digest(loaded) == weights_digest(source)


def test_full_model_state_dict_drops_the_classifier_head() -> None:
    torch.manual_seed(4)
    full = tv.mobilenet_v3_large(weights=None).state_dict()
    assert any(name.startswith("classifier.") for name in full)
    module = build_backbone(spec_for(), state_dict=full)
    assert torch.equal(module.state_dict()["features.0.0.weight"], full["features.0.0.weight"])


def test_state_dict_restore_gives_identical_features() -> None:
    spec = spec_for("resnet50")
    original = build_backbone(spec, seed=3)
    restored = build_backbone(spec, state_dict=original.state_dict())
    batch = crops(2)
    expected = FrameEmbedder(spec, original).embed(batch)
    assert torch.equal(FrameEmbedder(spec, restored).embed(batch), expected)


def test_bad_weight_sources_raise_weights_error(tmp_path: Path) -> None:
    spec = spec_for()
    with pytest.raises(WeightsError, match="not found"):
        build_backbone(spec, weights_file=tmp_path / "missing.safetensors")
    with pytest.raises(WeightsError, match="not found"):
        build_backbone(spec_for(weights=f"file:{tmp_path / 'missing.pt'}"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        build_backbone(spec, weights_file=garbage)
    other_arch = build_backbone(spec_for("efficientnet_b0")).state_dict()
    with pytest.raises(WeightsError, match="do not fit"):
        build_backbone(spec, state_dict=other_arch)
    with pytest.raises(WeightsError, match="unknown mobilenet_v3_large weights"):
        build_backbone(spec_for(weights="hub:somewhere"))


def test_weights_sha256_is_checked() -> None:
    digest = weights_digest(build_backbone(spec_for(), seed=7))
    assert weights_digest(build_backbone(spec_for(weights_sha256=digest), seed=7)) == digest
    with pytest.raises(WeightsError, match="digest"):
        build_backbone(spec_for(weights_sha256=digest), seed=8)


def test_weights_digest_sees_every_value() -> None:
    module = build_backbone(spec_for())
    before = weights_digest(module)
    with torch.no_grad():
        module.features[0][0].weight[0, 0, 0, 0] += 1.0
    assert weights_digest(module) != before


def test_float16_needs_cuda() -> None:
    spec = spec_for(dtype="float16")
    with pytest.raises(ComputeDtypeError, match="CUDA"):
        FrameEmbedder(spec, build_backbone(spec), "cpu")


@pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="CPU without bfloat16 support"
)
def test_bfloat16_is_close_to_float32() -> None:
    spec = spec_for("resnet50")
    module = build_backbone(spec)
    batch = crops(2)
    reference = FrameEmbedder(spec, module).embed(batch)
    bf16 = FrameEmbedder(spec.model_copy(update={"dtype": "bfloat16"}), module).embed(batch)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, reference)
    similarity = torch.nn.functional.cosine_similarity(bf16, reference)
    assert bool((similarity > 0.99).all())


def test_compiled_backbone_matches_eager_for_every_batch_size() -> None:
    spec = spec_for("resnet50")
    module = build_backbone(spec)
    eager = FrameEmbedder(spec, module)
    compiled = FrameEmbedder(spec, build_backbone(spec), compile=True)
    compiled.warm_up()
    for n in (1, 3, 5):
        batch = crops(n, seed=n)
        reference, features = eager.embed(batch), compiled.embed(batch)
        assert features.shape == reference.shape == (n, spec.feature_dim)
        assert features.dtype == torch.float32
        torch.testing.assert_close(features, reference, rtol=1e-3, atol=1e-3)
