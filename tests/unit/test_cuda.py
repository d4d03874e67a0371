"""The CUDA paths against the CPU: pinned uploads, face crops kept on the card, whole predictions,
bfloat16 autocast. Skipped where torch sees no CUDA device (CI has none; run them on a GPU box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from models.faces import FaceCropper
from models.mtcnn import area_resize_windows
from models.pipeline import Detector
from models.spec import FaceSpec
from models.transfer import to_device
from tests.checkpoints import make_checkpoint, tiny_spec
from tests.videos import make_video

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """Four frames with the astronaut's face, two of noise."""
    astronaut = (resize(skdata.astronaut(), (256, 256), anti_aliasing=True) * 255).astype(np.uint8)
    noise = np.random.default_rng(3).integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    return [np.roll(astronaut, shift, axis=1) for shift in range(0, 8, 2)] + list(noise)


def test_to_device_uploads_through_pinned_memory() -> None:
    host = torch.arange(1000, dtype=torch.int32)
    on_card = to_device(host, CUDA)
    assert on_card.device.type == "cuda"
    assert torch.equal(on_card.cpu(), host)
    assert to_device(host, torch.device("cpu")) is host


def test_face_crops_stay_on_the_card_and_match_the_cpu(frames: list[np.ndarray]) -> None:
    face = FaceSpec(min_face_size=20, box_smoothing_s=0.2)
    stamps = [index / 10 for index in range(len(frames))]
    on_cpu = FaceCropper(face, 96, "cpu").crop(frames, stamps)
    on_card = FaceCropper(face, 96, CUDA).crop(frames, stamps)
    assert on_card.crops.device.type == "cuda"
    assert on_card.has_face == on_cpu.has_face == [True] * 4 + [False] * 2
    for gpu_box, cpu_box in zip(on_card.boxes[:4], on_cpu.boxes[:4], strict=True):
        assert gpu_box == pytest.approx(cpu_box, abs=2.0)
    difference = (on_card.crops.cpu().float() - on_cpu.crops.float()).abs().mean()
    assert difference < 4.0, f"mean crop difference {difference:.2f} grey levels"


def test_window_resize_on_the_card_matches_the_cpu() -> None:
    frames = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 3, 90, 70), np.uint8))
    index = torch.tensor([0, 2, 2, 1])
    windows = torch.tensor([[0, 90, 0, 70], [10, 50, 5, 45], [3, 4, 60, 70], [20, 89, 0, 31]])
    on_cpu = area_resize_windows(frames, index, windows, 48)
    on_card = area_resize_windows(frames.to(CUDA), index.to(CUDA), windows, 48)
    assert on_card.device.type == "cuda"
    torch.testing.assert_close(on_card.cpu(), on_cpu, atol=1e-4, rtol=0)


def test_predictions_on_cuda_match_the_cpu(tmp_path: Path, frames: list[np.ndarray]) -> None:
    video = make_video(tmp_path / "faces.mp4", frames, fps=4)
    spec = tiny_spec(
        arch="resnet50", detector="mtcnn", no_face="full_frame", input_size=96, num_frames=6
    )
    checkpoint = make_checkpoint(tmp_path / "r50.safetensors", spec=spec)
    on_cpu = Detector.load(checkpoint).predict_file(video)
    on_card = Detector.load(checkpoint, CUDA).predict_file(video)
    assert on_card.with_face == on_cpu.with_face == 4
    assert on_card.fake_probability == pytest.approx(on_cpu.fake_probability, abs=5e-3)
    for name, probability in on_cpu.members.items():
        assert on_card.members[name] == pytest.approx(probability, abs=5e-3)
    assert on_card.attention == pytest.approx(on_cpu.attention, abs=5e-3)


def test_bfloat16_autocast_on_cuda_keeps_the_features(
    tmp_path: Path, frames: list[np.ndarray]
) -> None:
    float32 = tiny_spec(arch="resnet50", input_size=96)
    bfloat16 = tiny_spec(arch="resnet50", input_size=96, dtype="bfloat16")
    crops = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
    exact = Detector.load(make_checkpoint(tmp_path / "f32.safetensors", spec=float32), CUDA)
    fast = Detector.load(make_checkpoint(tmp_path / "bf16.safetensors", spec=bfloat16), CUDA)
    reference, features = exact.embed(crops), fast.embed(crops)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    similarity = torch.nn.functional.cosine_similarity(features, reference)
    assert similarity.min() > 0.99, similarity
