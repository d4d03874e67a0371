"""Small synthetic test videos, written with PyAV (no downloads).

`index_frames` draws each frame's index as a grid of black/white blocks, big enough to survive
lossy compression; `read_index` reads it back, so tests can check *which* frames a decoder returned.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 16
_GRID = 4  # INDEX_BITS laid out as a 4x4 grid, most significant bit first (row-major)

_MILLISECOND = Fraction(1, 1000)
CONTAINER_BY_SUFFIX = {
    ".mp4": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".ts": "mpegts",
}


def index_frame(index: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """One HxWx3 uint8 RGB frame showing `index` (0 <= index < 2**16); size is (width, height)."""
    if not 0 <= index < 1 << INDEX_BITS:
        raise ValueError(f"index {index} does not fit in {INDEX_BITS} bits")
    width, height = size
    if width % _GRID or height % _GRID:
        raise ValueError(f"size {size} must be a multiple of {_GRID} on both sides")
    bits = [(index >> (INDEX_BITS - 1 - b)) & 1 for b in range(INDEX_BITS)]
    grid = np.array(bits, dtype=np.uint8).reshape(_GRID, _GRID) * 255
    blocks = np.kron(grid, np.ones((height // _GRID, width // _GRID), dtype=np.uint8))
    return np.repeat(blocks[:, :, None], 3, axis=2)


def index_frames(n: int, size: tuple[int, int] = (64, 64)) -> Iterator[np.ndarray]:
    """Frames 0..n-1, each showing its own index (see `index_frame`)."""
    for index in range(n):
        yield index_frame(index, size)


def read_index(frame: np.ndarray) -> int:
    """Decode the index drawn by `index_frame` from a (possibly lossily compressed) frame."""
    height, width = frame.shape[:2]
    gray = frame.astype(np.float32).mean(axis=2)
    bh, bw = height // _GRID, width // _GRID
    value = 0
    for row in range(_GRID):
        for col in range(_GRID):
            # the inner half of each block, away from edges blurred by compression
            block = gray[
                row * bh + bh // 4 : (row + 1) * bh - bh // 4,
                col * bw + bw // 4 : (col + 1) * bw - bw // 4,
            ]
            value = (value << 1) | int(block.mean() > 127.5)
    return value


def make_video(
    path: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    fps: float | Fraction = 25,
    codec: str = "libx264",
    *,
    container: str | None = None,
    rotation: int | None = None,
    gop_size: int | None = None,
    times_s: Sequence[float] | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode HxWx3 uint8 RGB `frames` into `path` at a constant `fps` (or at `times_s`).

    The container format follows the suffix (see CONTAINER_BY_SUFFIX) unless `container` is given.
    `rotation` is stored as a display matrix (degrees counterclockwise, FFmpeg's convention: a
    player shows the picture rotated by it). `gop_size` sets the keyframe interval. `times_s`
    gives each frame's display time (variable frame rate, millisecond precision) instead of i/fps.
    """
    path = Path(path)
    fmt = container or CONTAINER_BY_SUFFIX.get(path.suffix.lower())
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", format=fmt, options=container_options or {}) as out:
        stream = None
        for count, array in enumerate(frames):
            if stream is None:
                stream = out.add_stream(codec, rate=rate, options=options or {})
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = pix_fmt
                if gop_size is not None:
                    stream.codec_context.gop_size = gop_size
                if rotation is not None:
                    stream.set_display_rotation(rotation)
                if times_s is not None:
                    stream.codec_context.time_base = _MILLISECOND
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if times_s is not None:
                frame.pts = round(times_s[count] / _MILLISECOND)
                frame.time_base = _MILLISECOND
            out.mux(stream.encode(frame))
        if stream is None:
            raise ValueError("make_video needs at least one frame")
        out.mux(stream.encode(None))
    return path


def make_audio(path: str | os.PathLike[str], seconds: float = 0.5, rate: int = 16000) -> Path:
    """An audio-only file (AAC; container by suffix, e.g. .m4a or .mp4): a 440 Hz tone."""
    path = Path(path)
    fmt = "mp4" if path.suffix.lower() == ".m4a" else CONTAINER_BY_SUFFIX.get(path.suffix.lower())
    samples = np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate).astype(np.float32)
    with av.open(str(path), mode="w", format=fmt) as out:
        stream = out.add_stream("aac", rate=rate, layout="mono")
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, len(samples), frame_size):
            chunk = samples[start : start + frame_size][None, :]
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(chunk), format="fltp", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_size_switch_video(
    path: str | os.PathLike[str],
    small: tuple[int, int] = (64, 64),
    big: tuple[int, int] = (8192, 8192),
    small_frames: int = 400,
) -> Path:
    """An H.264 Matroska file whose header (and first `small_frames` frames) say `small`
    (width, height) and whose last frame, after a new SPS in the bitstream, is `big`: what a file
    crafted to make a decoder allocate far more than its header announces looks like."""
    packets: list[bytes] = []
    extradata = b""
    for (width, height), count in ((small, small_frames), (big, 1)):
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
        codec.time_base, codec.framerate = Fraction(1, 25), Fraction(25)
        codec.options = {"preset": "ultrafast"}
        for index in range(count):
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane in frame.planes:
                plane.update(bytes([128]) * plane.buffer_size)
            frame.pts = index
            packets += [bytes(packet) for packet in codec.encode(frame)]
        packets += [bytes(packet) for packet in codec.encode(None)]
        extradata = extradata or bytes(codec.extradata or b"")
    path = Path(path)
    with av.open(str(path), mode="w", format="matroska") as out:
        stream = out.add_stream("h264", rate=25)
        stream.width, stream.height = small
        stream.pix_fmt = "yuv420p"
        stream.codec_context.extradata = extradata
        for index, data in enumerate(packets):
            packet = av.Packet(data)
            packet.stream = stream
            packet.pts = packet.dts = index
            packet.time_base = Fraction(1, 25)
            packet.is_keyframe = index in (0, small_frames)
            out.mux(packet)
    return path


class _Pipe(io.RawIOBase):
    """A readable stream that cannot seek."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def pipe(data: bytes) -> io.BufferedReader:
    """`data` as a binary stream that cannot seek (like a pipe)."""
    return io.BufferedReader(_Pipe(data))
