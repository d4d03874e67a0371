"""Decode only the sampled frames of one video with PyAV, within safety limits.

Memory does not grow with the video's length: frames are selected by presentation time while
decoding, and sparse samples are reached by seeking to the keyframe before them.
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

from models.errors import DecodeFailed, NoFrames, NotAVideo, NotFound, PipelineError, TooLarge
from models.keyframe_reader import KeyframeReader, keyframe_times
from models.sampling import sample_indices
from models.spec import DecodeLimits, KeyframeSnap, SamplingSpec
from models.video_budget import DecodeBudget
from models.video_reader import FrameReader, StreamInfo, probe_stream

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Source = str | os.PathLike[str] | BinaryIO

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


def decode_frames(
    source: Source,
    sampling: SamplingSpec,
    limits: DecodeLimits,
    *,
    threads: int = 0,
) -> DecodedVideo:
    """Decode the frames `sampling` picks from `source` (a path or a binary file object).

    `threads` is the decoder's thread count (0: FFmpeg chooses). A file object that cannot seek
    is decoded forward only and its size is not checked. Raises a `PipelineError`
    subclass: NotFound, TooLarge, NotAVideo, DecodeFailed, NoFrames, LimitExceeded, DecodeTimeout.
    """
    budget = DecodeBudget(limits)
    size = _source_size(source)
    if size == 0:
        raise NotAVideo("the file is empty")
    if size is not None and size > limits.max_bytes:
        raise TooLarge(f"{size} bytes is over the limit of {limits.max_bytes}")
    try:
        with _open(source) as container:
            return _decode(container, sampling, budget, threads, seekable=size is not None)
    except PipelineError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        raise DecodeFailed(f"decoding failed: {exc}") from exc


def _source_size(source: Source) -> int | None:
    """Bytes left to read, or None for a file object that cannot seek (a pipe)."""
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


def _open(source: Source) -> av.container.InputContainer:
    target = os.fspath(source) if isinstance(source, str | os.PathLike) else source
    try:
        return av.open(target, mode="r", options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)})
    except av.error.FileNotFoundError as exc:
        raise NotFound(f"no such file: {exc}") from exc
    except (av.error.InvalidDataError, av.error.ArgumentError) as exc:
        raise NotAVideo(f"not a supported video file: {exc}") from exc


def _decode(
    container: av.container.InputContainer,
    sampling: SamplingSpec,
    budget: DecodeBudget,
    threads: int,
    *,
    seekable: bool,
) -> DecodedVideo:
    if not container.streams.video:
        raise NotAVideo("the file has no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    budget.check_pixels(stream.codec_context.width, stream.codec_context.height)
    info = probe_stream(container, stream, budget)
    budget.check_duration(info.duration_s)
    indices = sample_indices(info.frame_count, sampling)
    targets_s = [info.start_s + index / info.fps for index in indices]

    reader = _reader(container, stream, info, budget, sampling.keyframes, seekable=seekable)
    frames: list[np.ndarray] = []
    times: list[float] = []
    for time_s, frame in reader.frames_at(targets_s):
        frames.append(to_display_rgb(frame))
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


def to_display_rgb(frame: av.VideoFrame) -> np.ndarray:
    """HxWx3 uint8 RGB array of `frame`, rotated as its display matrix asks."""
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = round(frame.rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb
