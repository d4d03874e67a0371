"""Frame selection by presentation time on one PyAV video stream, seeking when that saves work."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import av
import av.container
import av.video.stream

from models.errors import DecodeFailed
from models.sampling import estimate_frame_count
from models.video_budget import DecodeBudget

logger = logging.getLogger(__name__)

SEEK_GAP_S = 2.0
"""Without a keyframe index, seek only when the next target is further ahead than this."""
SEEK_BACKOFF_S = 1.0
"""How far before the target to seek again when a seek lands past it (then 4x further each time)."""


@dataclass(frozen=True)
class StreamInfo:
    """What the container says (or a packet scan found) about a video stream's timing."""

    fps: float
    duration_s: float
    frame_count: int
    start_s: float


def probe_stream(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    budget: DecodeBudget,
) -> StreamInfo:
    """Frame rate, duration and frame count from the headers; a packet scan when they lack them."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise DecodeFailed("the video stream has no frame rate")
    fps = float(rate)
    start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if stream.duration:
        duration_s = float(stream.duration * stream.time_base)
    elif container.duration:
        duration_s = container.duration / av.time_base
    else:
        duration_s = 0.0
    frame_count = stream.frames or estimate_frame_count(duration_s, fps)
    if not frame_count:
        frame_count, duration_s = _scan_packets(container, stream, budget, start_s, fps)
    return StreamInfo(
        fps=fps,
        duration_s=duration_s or frame_count / fps,
        frame_count=frame_count,
        start_s=start_s,
    )


def _scan_packets(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    budget: DecodeBudget,
    start_s: float,
    fps: float,
) -> tuple[int, float]:
    """Count the stream's packets without decoding them (one per frame), then rewind."""
    count, last_s = 0, start_s
    for packet in container.demux(stream):
        budget.check_time()
        if packet.size:
            count += 1
        if packet.pts is not None:
            last_s = max(last_s, float(packet.pts * stream.time_base))
            budget.check_duration(last_s - start_s)
    container.seek(stream.start_time or 0, stream=stream, backward=True)
    return count, (last_s - start_s + 1 / fps) if count else 0.0


class FrameReader:
    """Decodes the frames of one stream nearest to target times, within a `DecodeBudget`.

    With `seekable=False` (a pipe) it only decodes forward.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        info: StreamInfo,
        budget: DecodeBudget,
        *,
        seekable: bool = True,
    ) -> None:
        self.container = container
        self.stream = stream
        self.info = info
        self.budget = budget
        self.tolerance_s = 0.5 / info.fps
        # an index of every frame (MP4, AVI) tells exactly where a seek lands; sparser ones
        # (Matroska cues) or those built while reading (MPEG-TS) do not
        self.indexed = len(stream.index_entries) >= info.frame_count
        self.seekable = seekable

    def frames_at(self, targets_s: list[float]) -> Iterator[tuple[float, av.VideoFrame]]:
        """Yield (time, frame) for the first frame shown at or after each target, once per frame
        (a frame past several targets stands for all of them); time is seconds from the stream
        start. `targets_s` must be sorted (stream time, seconds); targets past the end are left out.
        """
        position = 0
        now_s = self.info.start_s
        frames = self._decode_onwards()
        while position < len(targets_s):
            if self._should_seek(targets_s[position], now_s):
                frames = self._seek_before(targets_s[position])
            for frame in frames:
                now_s = self._frame_time(frame, now_s)
                if now_s < targets_s[position] - self.tolerance_s:
                    continue
                yield now_s - self.info.start_s, frame
                while position < len(targets_s) and targets_s[position] - self.tolerance_s <= now_s:
                    position += 1
                if position == len(targets_s) or self._should_seek(targets_s[position], now_s):
                    break
            else:
                return

    def _frame_time(self, frame: av.VideoFrame, previous_s: float) -> float:
        time_s = frame.time
        return previous_s + 1 / self.info.fps if time_s is None else float(time_s)

    def _should_seek(self, target_s: float, now_s: float) -> bool:
        """Seek for a target more than SEEK_GAP_S ahead, unless a full index shows that the
        keyframe a seek lands on is not ahead of the decoder's position (decoding on is cheaper)."""
        if not self.seekable or target_s - now_s <= SEEK_GAP_S:
            return False
        if not self.indexed:
            return True
        entries = self.stream.index_entries
        found = entries.search_timestamp(round(target_s / self.stream.time_base), backward=True)
        if found < 0:
            return False
        keyframe_s = float(entries[found].timestamp * self.stream.time_base)
        return keyframe_s > now_s + self.tolerance_s

    def _seek_before(self, target_s: float) -> Iterator[av.VideoFrame]:
        """Seek to a keyframe before the target and decode from there.

        When the first frame after the seek is already past the target (demuxers that seek by
        bytes or decode times), seek further back, down to the stream start.
        """
        back_s = 0.0
        while True:
            seek_s = max(self.info.start_s, target_s - self.tolerance_s - back_s)
            self.container.seek(
                round(seek_s / self.stream.time_base), stream=self.stream, backward=True
            )
            frames = self._decode_onwards()
            first = next(frames, None)
            if first is None:
                return iter(())
            if self._frame_time(first, seek_s) <= target_s + self.tolerance_s or (
                seek_s <= self.info.start_s
            ):
                return itertools.chain([first], frames)
            back_s = max(4 * back_s, SEEK_BACKOFF_S)

    def _decode_onwards(self) -> Iterator[av.VideoFrame]:
        """Decode from the current position; corrupt packets and frames are skipped and counted."""
        packets = self.container.demux(self.stream)
        while True:
            self.budget.check_time()
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.budget.read_errors += 1
                logger.warning("stopped reading the video: %s", exc)
                return
            if packet.is_corrupt:
                self.budget.packets_skipped += 1
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                # FFmpeg refuses a frame over its max_pixels before allocating it, but the codec
                # context already shows the size the bitstream asked for
                codec = self.stream.codec_context
                self.budget.check_pixels(codec.width, codec.height)
                self.budget.packets_skipped += 1
                logger.debug("skipped an undecodable packet: %s", exc)
                continue
            for frame in decoded:
                elapsed_s = self._frame_time(frame, self.info.start_s) - self.info.start_s
                self.budget.count_frame(frame.width, frame.height, elapsed_s)
                if frame.is_corrupt:
                    self.budget.packets_skipped += 1
                    continue
                yield frame
