"""Which decoder turns a video into its sampled frames: PyAV on the CPU, or NVDEC on the GPU.

`auto` takes NVDEC when the model runs on a CUDA device and PyNvVideoCodec imports, else the CPU.
With NVDEC, a video it does not take (codec, size, pixel format, a file object, a decoder error)
is decoded on the CPU instead, and `on_fallback(reason)` counts it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal, Protocol

import torch

from models.decode_pool import Decoded, PoolSource, VideoDecoder
from models.nvdec import NvdecDecoder, NvdecRefused
from models.spec import DecodeLimits, SamplingSpec
from models.video import DecodedVideo, Source, decode_frames
from models.video_budget import MemoryBudget

logger = logging.getLogger(__name__)

DecoderChoice = Literal["auto", "cpu", "nvdec"]
DecoderKind = Literal["cpu", "nvdec"]


class NvdecUnavailable(RuntimeError):
    """`nvdec` was asked for, but the device is not CUDA or PyNvVideoCodec does not import."""


class GpuDecoder(Protocol):
    def decode(
        self, source: Source | int, sampling: SamplingSpec, limits: DecodeLimits
    ) -> DecodedVideo: ...


def nvdec_importable() -> bool:
    """Whether PyNvVideoCodec (the `nvdec` extra) imports here: its wheel loads the CUDA driver
    and NVDEC libraries, so this fails without them."""
    try:
        import PyNvVideoCodec  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def choose_decoder(
    choice: DecoderChoice,
    device: torch.device,
    importable: Callable[[], bool] = nvdec_importable,
) -> DecoderKind:
    """The decoder a setting means on `device`; `NvdecUnavailable` when `nvdec` cannot run."""
    if choice == "cpu":
        return "cpu"
    usable = device.type == "cuda" and importable()
    if choice == "nvdec" and not usable:
        raise NvdecUnavailable(
            f"decoder nvdec needs a CUDA device and PyNvVideoCodec (the nvdec extra); "
            f"device is {device}"
        )
    return "nvdec" if usable else "cpu"


class FrameDecoder:
    """Decodes a video's samples: on `gpu` when given and it takes the video, else on the CPU."""

    def __init__(
        self,
        gpu: GpuDecoder | None = None,
        on_fallback: Callable[[str], None] | None = None,
    ) -> None:
        self.gpu = gpu
        self.on_fallback = on_fallback or (lambda _reason: None)

    @property
    def kind(self) -> DecoderKind:
        return "cpu" if self.gpu is None else "nvdec"

    def decode(
        self,
        source: Source | int,
        sampling: SamplingSpec,
        limits: DecodeLimits,
        *,
        threads: int = 0,
    ) -> DecodedVideo:
        """The sampled frames (numpy arrays from the CPU, CUDA tensors from NVDEC); raises the
        CPU path's `PipelineError`s."""
        video = self.try_gpu(source, sampling, limits)
        if video is not None:
            return video
        return decode_frames(source, sampling, limits, threads=threads)  # type: ignore[arg-type]

    def try_gpu(
        self, source: Source | int, sampling: SamplingSpec, limits: DecodeLimits
    ) -> DecodedVideo | None:
        """The video decoded on `gpu`, or None (no GPU decoder, or it refused the video: the
        refusal is logged and counted)."""
        if self.gpu is None:
            return None
        try:
            return self.gpu.decode(source, sampling, limits)
        except NvdecRefused as refused:
            logger.info(
                "decoding on the CPU instead of NVDEC",
                extra={"reason": refused.reason, "detail": str(refused)},
            )
            self.on_fallback(refused.reason)
        return None


class GpuFirstDecoder:
    """The worker's `VideoDecoder` with NVDEC: the videos NVDEC takes are decoded in the request
    thread (their frames stay on the GPU, so they cannot travel through the pool's shared memory);
    the others go to `cpu` (the decode pool, or request threads), within its budget."""

    def __init__(self, frames: FrameDecoder, cpu: VideoDecoder) -> None:
        self._frames = frames
        self._cpu = cpu
        self.budget: MemoryBudget = cpu.budget

    @property
    def busy(self) -> int:
        return self._cpu.busy

    @property
    def queued(self) -> int:
        return self._cpu.queued

    def decode(self, source: PoolSource, sampling: SamplingSpec, limits: DecodeLimits) -> Decoded:
        """NVDEC's frames when it takes the video, else the CPU decoder's (a `PipelineError`
        from either is raised)."""
        video = self._frames.try_gpu(source, sampling, limits)
        if video is not None:
            return Decoded(video, lambda: None)
        return self._cpu.decode(source, sampling, limits)

    def close(self) -> None:
        self._cpu.close()


def build_frame_decoder(
    choice: DecoderChoice,
    device: torch.device | str,
    on_fallback: Callable[[str], None] | None = None,
) -> FrameDecoder:
    """The `FrameDecoder` of a decoder setting on `device` (see `choose_decoder`)."""
    device = torch.device(device)
    if choose_decoder(choice, device) == "cpu":
        return FrameDecoder(on_fallback=on_fallback)
    return FrameDecoder(NvdecDecoder(device.index or 0), on_fallback)
