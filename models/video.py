"""Decode only the sampled frames of one video with PyAV, within safety limits.

Memory does not grow with the video's length: frames are selected by presentation time while
decoding, and sparse samples are reached by seeking to the keyframe before them.

Limits hold before allocation: FFmpeg's own `max_pixels` is set on the probing and the decoding
codec contexts, so a stream whose header says 64x64 and whose bitstream later says 8192x8192 is
refused (LIMIT_EXCEEDED) without the big frame being allocated; only the decoders of
ALLOWED_DECODERS run. The bytes the sampled frames will take (at their output size) are announced
to a `FrameStore` before the first frame is decoded, so a caller can hold a memory budget, and
frames may be scaled down right after decoding (`max_side`).
"""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import av
import av.container
import av.video.stream
import numpy as np

from models.errors import (
    DecodeFailed,
    LimitExceeded,
    NoFrames,
    NotAVideo,
    NotFound,
    PipelineError,
    TooLarge,
)
from models.keyframe_reader import KeyframeReader, keyframe_times
from models.mp4_index import lacks_index
from models.sampling import sample_indices
from models.spec import DecodeLimits, KeyframeSnap, SamplingSpec
from models.video_budget import DecodeBudget
from models.video_reader import FrameReader, StreamInfo, probe_stream

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Source = str | os.PathLike[str] | BinaryIO | int
"""A path, a binary file object or an open file descriptor (decoded through /proc/self/fd: the
same inode, never a path resolved again)."""

ALLOWED_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "ogg",
    "asf",
)
"""Container formats a video may come in. Demuxers that open other files or URLs (playlists,
concat lists) or read images and text are refused."""

TRUNCATED_MP4 = (
    "the file looks truncated: an MP4 that ends before its index (the 'moov' box) is whole, "
    "as when an upload or copy stops part-way"
)

ALLOWED_DECODERS = (
    "h264",
    "hevc",
    "vp8",
    "vp9",
    "libdav1d",
    "av1",
    "mpeg4",
    "mpeg2video",
    "mjpeg",
)
"""FFmpeg decoders a video stream may be decoded with (by decoder name: AV1 has two). These cover
what phones, browsers and editors upload (H.264, HEVC, VP8/9, AV1, MPEG-4 Part 2, MPEG-2, Motion
JPEG); the long tail of rarely used, less exercised decoders is refused as NOT_A_VIDEO."""

SCALE_INTERPOLATION = "BILINEAR"
"""swscale's filter for scaling frames down after decoding (its bilinear filter widens with the
scale factor, like torchvision's antialiased resize the face stage uses)."""


@dataclass(frozen=True)
class DecodedVideo:
    """The sampled frames of a video (display orientation, HxWx3 uint8 RGB: numpy arrays from the
    CPU, CUDA tensors from NVDEC) and its timing.

    `timestamps_s` are the frames' display times from the stream start and `indices` their frame
    numbers (time x fps: nominal for variable-rate video). A frame missing from the file (corrupt,
    truncated) is replaced by the next one shown, or left out at the end. `width`/`height` are
    those of the returned (rotated) frames.
    """

    frames: list[np.ndarray] | list[torch.Tensor]
    indices: list[int]
    timestamps_s: list[float]
    fps: float
    duration_s: float
    width: int
    height: int
    frames_decoded: int
    packets_skipped: int = 0


class FrameStore:
    """Where the sampled frames go; this one keeps them in this process's memory.

    `reserve` is told the bytes all sampled frames will take before the first is decoded (it may
    block or raise a `PipelineError`, e.g. `LimitExceeded`); `put` stores one frame and returns
    the array the `DecodedVideo` holds.
    """

    def reserve(self, nbytes: int) -> None:
        """Called once per video, before any frame is decoded."""

    def put(self, frame: np.ndarray) -> np.ndarray:
        return frame


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most `max_side` (aspect kept)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_frames(
    source: Source,
    sampling: SamplingSpec,
    limits: DecodeLimits,
    *,
    threads: int = 0,
    max_side: int | None = None,
    store: FrameStore | None = None,
) -> DecodedVideo:
    """Decode the frames `sampling` picks from `source` (a path, binary file object or fd).

    A descriptor must be a regular file; it is read from its start through `/proc/self/fd/<fd>`
    (the same inode, whatever its name is now; the descriptor's own offset does not move).
    `threads` is the decoder's thread count (0: FFmpeg chooses). Frames are scaled down right
    after decoding so their longer side is at most `max_side` (None: as decoded). `store` is told
    the frames' bytes before decoding and keeps them (default: a plain `FrameStore`). A file
    object that cannot seek is decoded forward only and its size is not checked. Raises a
    `PipelineError` subclass: NotFound, TooLarge, NotAVideo, DecodeFailed, NoFrames,
    LimitExceeded, DecodeTimeout.
    """
    budget = DecodeBudget(limits)
    size = _source_size(source)
    if size == 0:
        raise NotAVideo("the file is empty")
    if size is not None and size > limits.max_bytes:
        raise TooLarge(f"{size} bytes is over the limit of {limits.max_bytes}")
    output = _Output(store or FrameStore(), max_side)
    try:
        with _open(source, limits) as container:
            return _decode(container, sampling, budget, output, threads, seekable=size is not None)
    except PipelineError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise DecodeFailed(f"decoding failed: {exc}") from exc


def _source_size(source: Source) -> int | None:
    """Bytes left to read, or None for a file object that cannot seek (a pipe)."""
    if isinstance(source, int):
        try:
            status = os.fstat(source)
        except OSError as exc:
            raise NotFound(f"cannot access descriptor {source}: {exc.strerror}") from exc
        if not stat.S_ISREG(status.st_mode):
            raise NotFound(f"descriptor {source} is not a regular file")
        return status.st_size
    if isinstance(source, str | os.PathLike):
        try:
            status = os.stat(source)
        except FileNotFoundError as exc:
            raise NotFound(f"no such file: {os.fspath(source)}") from exc
        except OSError as exc:
            raise NotFound(f"cannot access {os.fspath(source)}: {exc.strerror}") from exc
        if not stat.S_ISREG(status.st_mode):
            raise NotFound(f"not a regular file: {os.fspath(source)}")
        return status.st_size
    try:
        if not source.seekable():
            return None
        position = source.tell()
        end = source.seek(0, io.SEEK_END)
        source.seek(position)
    except (OSError, ValueError) as exc:
        raise DecodeFailed(f"cannot read the video: {exc}") from exc
    return end - position


def _open(source: Source, limits: DecodeLimits) -> av.container.InputContainer:
    if isinstance(source, int):
        target: str | BinaryIO = f"/proc/self/fd/{source}"
    else:
        target = os.fspath(source) if isinstance(source, str | os.PathLike) else source
    options = {
        "format_whitelist": ",".join(ALLOWED_DEMUXERS),
        "codec_whitelist": ",".join(ALLOWED_DECODERS),
    }
    try:
        return av.open(
            target,
            mode="r",
            options=options,
            stream_options=[{"max_pixels": str(limits.max_pixels)}],
        )
    except av.error.FileNotFoundError as exc:
        raise NotFound(f"no such file: {exc}") from exc
    except (av.error.InvalidDataError, av.error.ArgumentError) as exc:
        if lacks_index(source):
            raise NotAVideo(TRUNCATED_MP4) from exc
        raise NotAVideo(f"not a supported video file: {exc}") from exc


class _Output:
    """Scales decoded frames to their output size and keeps them in a `FrameStore`, within the
    bytes reserved from the stream header's size."""

    def __init__(self, store: FrameStore, max_side: int | None) -> None:
        self.store = store
        self.max_side = max_side
        self.reserved = 0
        self.used = 0

    def reserve(self, count: int, width: int, height: int) -> None:
        out_width, out_height = scaled_size(width, height, self.max_side)
        self.reserved = count * out_width * out_height * 3
        self.store.reserve(self.reserved)

    def put(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = scaled_size(frame.width, frame.height, self.max_side)
        self.used += width * height * 3
        if self.used > self.reserved:
            raise LimitExceeded(
                f"a {frame.width}x{frame.height} frame is larger than the stream header says"
            )
        return self.store.put(to_display_rgb(frame, width, height))


def _decode(
    container: av.container.InputContainer,
    sampling: SamplingSpec,
    budget: DecodeBudget,
    output: _Output,
    threads: int,
    *,
    seekable: bool,
) -> DecodedVideo:
    if not container.streams.video:
        raise NotAVideo("the file has no video stream")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec.name not in ALLOWED_DECODERS:
        raise NotAVideo(f"the {codec.name} codec is not supported")
    stream.thread_type = "AUTO"
    codec.thread_count = threads
    codec.options = {**codec.options, "max_pixels": str(budget.limits.max_pixels)}
    budget.check_pixels(codec.width, codec.height)
    info = probe_stream(container, stream, budget)
    budget.check_duration(info.duration_s)
    indices = sample_indices(info.frame_count, sampling)
    targets_s = [info.start_s + index / info.fps for index in indices]
    output.reserve(len(indices), codec.width, codec.height)

    reader = _reader(container, stream, info, budget, sampling.keyframes, seekable=seekable)
    frames: list[np.ndarray] = []
    times: list[float] = []
    for time_s, frame in reader.frames_at(targets_s):
        frames.append(output.put(frame))
        times.append(time_s)
    if not frames:
        if budget.packets_skipped or budget.read_errors:
            raise DecodeFailed(
                f"no sampled frame could be decoded ({budget.packets_skipped} corrupt packets, "
                f"{budget.read_errors} read errors)"
            )
        raise NoFrames("the video has no decodable frames")
    if len(frames) < len(indices):
        logger.info("decoded %d of %d sampled frames", len(frames), len(indices))
    height, width = frames[0].shape[:2]
    return DecodedVideo(
        frames=frames,
        indices=[round(time_s * info.fps) for time_s in times],
        timestamps_s=times,
        fps=info.fps,
        duration_s=info.duration_s,
        width=width,
        height=height,
        frames_decoded=budget.frames_decoded,
        packets_skipped=budget.packets_skipped,
    )


def _reader(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    info: StreamInfo,
    budget: DecodeBudget,
    keyframes: KeyframeSnap | None,
    *,
    seekable: bool,
) -> FrameReader:
    """A `KeyframeReader` when the spec asks for keyframes and the container indexes every
    frame; otherwise the plain `FrameReader` (every sample decoded in stream order)."""
    if keyframes is not None and seekable:
        keyframes_s = keyframe_times(container, stream, info)
        if keyframes_s:
            return KeyframeReader(
                container, stream, info, budget, keyframes_s, keyframes.tolerance_s
            )
    return FrameReader(container, stream, info, budget, seekable=seekable)


def to_display_rgb(
    frame: av.VideoFrame, width: int | None = None, height: int | None = None
) -> np.ndarray:
    """HxWx3 uint8 RGB array of `frame` (scaled to `width`x`height` when given, before the
    rotation), rotated as its display matrix asks."""
    if (width, height) in ((None, None), (frame.width, frame.height)):
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rgb = frame.to_ndarray(
            format="rgb24", width=width, height=height, interpolation=SCALE_INTERPOLATION
        )
    quarter_turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb
