"""Decoder selection (auto|cpu|nvdec) and the per-video CPU fallback, on CPU with fake GPU
decoders; NVDEC itself against the CPU where a CUDA device and PyNvVideoCodec are present."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from models.decode_pool import ThreadDecoder
from models.decoders import (
    FrameDecoder,
    GpuFirstDecoder,
    NvdecUnavailable,
    build_frame_decoder,
    choose_decoder,
    nvdec_importable,
)
from models.faces import FaceCropper
from models.nvdec import NvdecRefused, nvdec_refusal, source_path
from models.spec import DecodeLimits, FaceSpec, KeyframeSnap, SamplingSpec
from models.video import DecodedVideo, Source
from models.video_budget import MemoryBudget
from tests.checkpoints import make_checkpoint
from tests.videos import index_frames, make_video, read_index
from worker.app import StartupError, load_detector
from worker.metrics import Metrics
from worker.settings import WorkerSettings

SAMPLING = SamplingSpec(mode="uniform", num_frames=4)
LIMITS = DecodeLimits()
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def never() -> bool:
    raise AssertionError("the import must not be tried")


@pytest.mark.parametrize(
    ("choice", "device", "importable", "expected"),
    [
        ("cpu", CUDA, never, "cpu"),
        ("auto", CPU, never, "cpu"),
        ("auto", CUDA, lambda: False, "cpu"),
        ("auto", CUDA, lambda: True, "nvdec"),
        ("nvdec", CUDA, lambda: True, "nvdec"),
    ],
)
def test_a_setting_chooses_a_decoder(
    choice: str, device: torch.device, importable: object, expected: str
) -> None:
    assert choose_decoder(choice, device, importable) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("device", "importable"), [(CPU, never), (CUDA, lambda: False)])
def test_nvdec_where_it_cannot_run_is_refused_at_startup(
    device: torch.device, importable: object
) -> None:
    with pytest.raises(NvdecUnavailable, match="CUDA device and PyNvVideoCodec"):
        choose_decoder("nvdec", device, importable)  # type: ignore[arg-type]


def test_auto_on_a_cpu_device_decodes_on_the_cpu() -> None:
    assert build_frame_decoder("auto", "cpu").kind == "cpu"


class FakeGpu:
    """Stands in for `NvdecDecoder` at the selection boundary."""

    def __init__(self, result: DecodedVideo | NvdecRefused) -> None:
        self.result = result
        self.calls: list[Source | int] = []

    def decode(
        self, source: Source | int, sampling: SamplingSpec, limits: DecodeLimits
    ) -> DecodedVideo:
        self.calls.append(source)
        if isinstance(self.result, NvdecRefused):
            raise self.result
        return self.result


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", index_frames(40), fps=20)


def test_a_video_nvdec_refuses_is_decoded_on_the_cpu_and_counted(clip: Path) -> None:
    reasons: list[str] = []
    gpu = FakeGpu(NvdecRefused("codec", "NVDEC does not take vp8"))
    decoder = FrameDecoder(gpu, reasons.append)
    video = decoder.decode(clip, SAMPLING, LIMITS, threads=1)
    assert gpu.calls == [clip]
    assert reasons == ["codec"]
    assert [read_index(frame) for frame in video.frames] == [5, 15, 25, 35]


def test_a_video_nvdec_takes_is_not_decoded_again(tmp_path: Path) -> None:
    decoded = DecodedVideo([], [], [], 25.0, 1.0, 64, 64, 0)
    reasons: list[str] = []
    decoder = FrameDecoder(FakeGpu(decoded), reasons.append)
    # the path does not exist: a CPU decode would raise NotFound
    assert decoder.decode(tmp_path / "absent.mp4", SAMPLING, LIMITS) is decoded
    assert reasons == []


def test_the_worker_decodes_on_nvdec_first_and_in_its_cpu_decoder_otherwise(clip: Path) -> None:
    budget = MemoryBudget(64 << 20)
    cpu = ThreadDecoder(1, budget)
    taken = DecodedVideo([], [], [], 25.0, 1.0, 64, 64, 0)
    on_gpu = GpuFirstDecoder(FrameDecoder(FakeGpu(taken)), cpu)
    with on_gpu.decode(clip, SAMPLING, LIMITS) as video:
        assert video is taken
    assert budget.in_use == 0  # NVDEC's frames are on the GPU, outside the CPU budget
    reasons: list[str] = []
    refused = FakeGpu(NvdecRefused("codec", "NVDEC does not take vp8"))
    fallback = GpuFirstDecoder(FrameDecoder(refused, reasons.append), cpu)
    assert fallback.budget is budget
    with fallback.decode(clip, SAMPLING, LIMITS) as video:
        assert [read_index(frame) for frame in video.frames] == [5, 15, 25, 35]
        assert budget.in_use > 0  # the CPU decoder's frames count against its budget
    assert reasons == ["codec"]
    assert budget.in_use == 0


def test_the_worker_counts_fallbacks_in_its_metric(tmp_path: Path, clip: Path) -> None:
    metrics = Metrics()
    counter = metrics.decode_fallbacks
    decoder = FrameDecoder(
        FakeGpu(NvdecRefused("size", "too small")),
        lambda reason: counter.labels(reason=reason).inc(),
    )
    decoder.decode(clip, SAMPLING, LIMITS)
    sample = metrics.registry.get_sample_value("dfd_decode_fallbacks_total", {"reason": "size"})
    assert sample == 1.0


def test_the_worker_refuses_to_start_with_nvdec_on_a_cpu(tmp_path: Path) -> None:
    settings = WorkerSettings(
        checkpoint=make_checkpoint(tmp_path / "model.safetensors"),
        device="cpu",
        decoder="nvdec",
        redis_url=None,
        allowed_roots=[tmp_path],
    )
    with pytest.raises(StartupError, match="PyNvVideoCodec"):
        load_detector(settings, Metrics())
    detector = load_detector(settings.model_copy(update={"decoder": "auto"}), Metrics())
    assert detector.frame_decoder.kind == "cpu"


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        (("h264", 1920, 1080, "yuv420p"), None),
        (("hevc", 3840, 2160, "yuvj420p"), None),
        (("vp8", 640, 360, "yuv420p"), "codec"),
        (("mpeg4", 640, 360, "yuv420p"), "codec"),
        (("h264", 32, 32, "yuv420p"), "size"),
        (("h264", 7680, 4320, "yuv420p"), "size"),
        (("av1", 96, 96, "yuv420p"), "size"),
        (("h264", 1280, 720, "yuv444p"), "format"),
        (("hevc", 1280, 720, None), "format"),
    ],
)
def test_nvdec_takes_common_codecs_sizes_and_formats(
    stream: tuple[str, int, int, str | None], reason: str | None
) -> None:
    assert nvdec_refusal(*stream) == reason


def test_nvdec_reads_files_and_descriptors_not_file_objects(tmp_path: Path) -> None:
    assert source_path(tmp_path / "a.mp4") == str(tmp_path / "a.mp4")
    assert source_path(7) == "/proc/self/fd/7"
    with pytest.raises(NvdecRefused) as refused:
        source_path(io.BytesIO(b"x"))
    assert refused.value.reason == "source"


def test_faces_are_found_alike_in_arrays_and_tensors() -> None:
    frame = np.ascontiguousarray(skdata.astronaut()[:256, 96:352])
    cropper = FaceCropper(FaceSpec(), 64)
    from_array = cropper.detect([frame, frame[::-1].copy()])
    from_tensor = cropper.detect([torch.from_numpy(frame), torch.from_numpy(frame[::-1].copy())])
    assert [d.box for d in from_tensor] == [d.box for d in from_array]
    assert from_array[0].box is not None


needs_nvdec = pytest.mark.skipif(
    not (torch.cuda.is_available() and nvdec_importable()),
    reason="needs a CUDA device and PyNvVideoCodec (the nvdec extra)",
)


@needs_nvdec
@pytest.mark.parametrize(
    "sampling",
    [SAMPLING, SamplingSpec(mode="every_nth", every_nth=10, keyframes=KeyframeSnap())],
)
def test_nvdec_samples_the_frames_the_cpu_samples(tmp_path: Path, sampling: SamplingSpec) -> None:
    path = make_video(
        tmp_path / "gop.mp4",
        index_frames(100, (256, 256)),
        fps=25,
        gop_size=10,
        options={"x264-params": "keyint=10:min-keyint=10:scenecut=0"},
    )
    cpu = build_frame_decoder("cpu", "cpu").decode(path, sampling, LIMITS)
    gpu = build_frame_decoder("nvdec", "cuda").decode(path, sampling, LIMITS)
    assert all(frame.device.type == "cuda" for frame in gpu.frames)
    assert [read_index(f.cpu().numpy()) for f in gpu.frames] == [read_index(f) for f in cpu.frames]
    assert gpu.timestamps_s == pytest.approx(cpu.timestamps_s)
