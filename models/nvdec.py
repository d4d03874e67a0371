"""Decoding on the GPU's NVDEC engine with NVIDIA PyNvVideoCodec (the optional extra `nvdec`).

The sampled frames stay on the GPU: PyNvVideoCodec's `SimpleDecoder` converts them to interleaved
RGB (`OutputColorType.RGB`, H x W x 3 uint8) in device memory and hands them over by DLPack, so the
face detector reads them without a copy through the host. The frames sampled are the ones the CPU
path picks (`models.sampling`, keyframe snapping included), by frame index.

PyAV still reads the container's header (codec, size, timing, the keyframe index) and decodes
one frame on the CPU for its display rotation, which PyAV exposes only on frames. A video NVDEC
does not take raises `NvdecRefused` with a reason; the caller decodes it on the CPU
(`models.decoders.FrameDecoder`).
"""

from __future__ import annotations

import os
from typing import Any

import av
import av.container
import torch

from models.errors import PipelineError, TooLarge
from models.keyframe_reader import keyframe_times
from models.sampling import sample_indices, snap_to_keyframes
from models.spec import DecodeLimits, SamplingSpec
from models.video import ALLOWED_DEMUXERS, DecodedVideo, Source
from models.video_budget import DecodeBudget
from models.video_reader import StreamInfo, probe_stream

NVDEC_SIZES: dict[str, tuple[int, int, int, int]] = {
    "h264": (48, 16, 4096, 4096),
    "hevc": (144, 144, 8192, 8192),
    "vp9": (128, 128, 8192, 8192),
    "av1": (128, 128, 8192, 8192),
}
"""Codecs NVDEC decodes on current GPUs (Turing and later), with the smallest and largest coded
width and height it takes (NVIDIA Video Codec SDK, NVDEC support matrix)."""
NVDEC_PIXEL_FORMATS = ("yuv420p", "yuvj420p", "nv12")
"""8-bit 4:2:0, the chroma format every NVDEC generation decodes for all four codecs."""


class NvdecRefused(Exception):
    """NVDEC does not take this video; `reason` (codec, size, format, source, error) labels the
    CPU fallback."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def nvdec_refusal(codec: str, width: int, height: int, pix_fmt: str | None) -> str | None:
    """Why NVDEC would not decode a stream of this codec, coded size and pixel format, or None."""
    if codec not in NVDEC_SIZES:
        return "codec"
    min_w, min_h, max_w, max_h = NVDEC_SIZES[codec]
    if not (min_w <= width <= max_w and min_h <= height <= max_h):
        return "size"
    if pix_fmt not in NVDEC_PIXEL_FORMATS:
        return "format"
    return None


def source_path(source: Source | int) -> str:
    """The path PyNvVideoCodec opens for a path or an open descriptor (`/proc/self/fd/N`: the same
    file, not the name again); `NvdecRefused("source")` for file objects."""
    if isinstance(source, int):
        return f"/proc/self/fd/{source}"
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    raise NvdecRefused("source", "NVDEC decodes files, not file objects")


class NvdecDecoder:
    """Sampled frames of one video, decoded on NVDEC of CUDA device `gpu_id` (thread-safe: each
    call has its own `SimpleDecoder`)."""

    def __init__(self, gpu_id: int = 0) -> None:
        import PyNvVideoCodec as nvc  # the optional extra: imported only when NVDEC is chosen

        self._nvc: Any = nvc
        self.gpu_id = gpu_id
        self.device = torch.device("cuda", gpu_id)

    def decode(
        self, source: Source | int, sampling: SamplingSpec, limits: DecodeLimits
    ) -> DecodedVideo:
        """The frames `sampling` picks, as H x W x 3 uint8 RGB tensors on the GPU (display
        orientation). Raises `NvdecRefused` for videos NVDEC does not take, and the CPU path's
        `PipelineError`s for videos over the limits."""
        path = source_path(source)
        budget = DecodeBudget(limits)
        if os.stat(path).st_size > limits.max_bytes:
            raise TooLarge(f"{os.stat(path).st_size} bytes is over the limit of {limits.max_bytes}")
        info, indices, quarter_turns = self._plan(path, sampling, budget)
        try:
            decoder = self._nvc.SimpleDecoder(
                path,
                gpu_id=self.gpu_id,
                use_device_memory=True,
                output_color_type=self._nvc.OutputColorType.RGB,
            )
            surfaces = decoder.get_batch_frames_by_index(indices)
            # clone: the decoder reuses its surfaces once it is dropped
            frames = [torch.from_dlpack(surface).clone() for surface in surfaces]
        except Exception as exc:  # PyNvVideoCodec raises plain RuntimeError/ValueError
            raise NvdecRefused("error", f"NVDEC failed: {exc}") from exc
        if len(frames) != len(indices):
            raise NvdecRefused("error", f"NVDEC returned {len(frames)} of {len(indices)} frames")
        if quarter_turns:
            frames = [torch.rot90(frame, quarter_turns, dims=(0, 1)) for frame in frames]
        height, width = frames[0].shape[:2]
        return DecodedVideo(
            frames=frames,
            indices=indices,
            timestamps_s=[index / info.fps for index in indices],
            fps=info.fps,
            duration_s=info.duration_s,
            width=width,
            height=height,
            frames_decoded=len(frames),
        )

    def _plan(
        self, path: str, sampling: SamplingSpec, budget: DecodeBudget
    ) -> tuple[StreamInfo, list[int], int]:
        """Stream timing, the frame indices to sample and the display rotation (quarter turns),
        from the container (PyAV); `NvdecRefused` for streams NVDEC does not take."""
        try:
            with av.open(path, options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)}) as box:
                if not box.streams.video:
                    raise NvdecRefused("format", "no video stream")
                stream = box.streams.video[0]
                context = stream.codec_context
                reason = nvdec_refusal(context.name, context.width, context.height, context.pix_fmt)
                if reason is not None:
                    raise NvdecRefused(reason, f"NVDEC does not take {context.name} {reason}")
                budget.check_pixels(context.width, context.height)
                info = probe_stream(box, stream, budget)
                budget.check_duration(info.duration_s)
                indices = self._indices(box, stream, info, sampling)
                quarter_turns = _quarter_turns(box, stream)
        except (PipelineError, NvdecRefused):
            raise
        except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
            raise NvdecRefused("error", f"cannot read the container: {exc}") from exc
        if not indices:
            raise NvdecRefused("error", "no frames to sample")
        return info, indices, quarter_turns

    @staticmethod
    def _indices(
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        info: StreamInfo,
        sampling: SamplingSpec,
    ) -> list[int]:
        indices = sample_indices(info.frame_count, sampling)
        if sampling.keyframes is None:
            return indices
        keyframes_s = keyframe_times(container, stream, info)
        if not keyframes_s:
            return indices
        targets_s = [info.start_s + index / info.fps for index in indices]
        plan = snap_to_keyframes(targets_s, keyframes_s, sampling.keyframes.tolerance_s)
        snapped = [round((sample.time_s - info.start_s) * info.fps) for sample in plan]
        return sorted({min(max(index, 0), info.frame_count - 1) for index in snapped})


def _quarter_turns(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> int:
    """The display rotation in quarter turns, read from the first frame (PyAV exposes the display
    matrix only on decoded frames); rewinds the container."""
    stream.codec_context.thread_count = 1
    first = next(container.decode(stream), None)
    container.seek(stream.start_time or 0, stream=stream, backward=True)
    return 0 if first is None else round(first.rotation / 90) % 4
