"""Keyframe-aware frame selection: sample times near a keyframe take that keyframe, decoded alone;
the others decode only the GOP prefix up to them (from the keyframe before).

A keyframe decoded alone costs one intra-coded frame, where decoding to a sample time costs every
frame before it in its GOP; with long GOPs and sparse samples that is most of the decoding work.
It needs the container's full index (MP4, MOV, AVI); `keyframe_times` returns None otherwise and
the caller uses the plain `FrameReader`.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator

import av
import av.container
import av.video.stream

from models.sampling import SampleTime, snap_to_keyframes
from models.video_budget import DecodeBudget
from models.video_reader import FrameReader, StreamInfo

logger = logging.getLogger(__name__)


def keyframe_times(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    info: StreamInfo,
) -> list[float] | None:
    """Presentation times (seconds, stream time) of the stream's keyframes from the container's
    index, or None when the index does not list every frame.

    MP4 indexes decode times: with B-frames a keyframe is shown a fixed delay after it is decoded,
    which the first packet's pts - dts gives. Reads that packet and rewinds.
    """
    entries = stream.index_entries
    if not len(entries) or len(entries) < info.frame_count:
        return None
    first = next((packet for packet in container.demux(stream) if packet.size), None)
    container.seek(stream.start_time or 0, stream=stream, backward=True)
    if first is None:
        return None
    delay = (first.pts - first.dts) if first.pts is not None and first.dts is not None else 0
    return sorted(
        float((entry.timestamp + delay) * stream.time_base)
        for entry in entries
        if entry.is_keyframe
    )


class KeyframeReader(FrameReader):
    """A `FrameReader` that snaps sample times to the stream's keyframes (see the module)."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        info: StreamInfo,
        budget: DecodeBudget,
        keyframes_s: list[float],
        snap_tolerance_s: float,
    ) -> None:
        super().__init__(container, stream, info, budget, seekable=True)
        self.keyframes_s = keyframes_s
        self.snap_tolerance_s = snap_tolerance_s

    def frames_at(self, targets_s: list[float]) -> Iterator[tuple[float, av.VideoFrame]]:
        """Yield (time, frame) for each planned sample (see `snap_to_keyframes`), once per frame;
        time is seconds from the stream start. `targets_s` must be sorted (stream time)."""
        plan = snap_to_keyframes(targets_s, self.keyframes_s, self.snap_tolerance_s)
        forward: Iterator[av.VideoFrame] | None = None
        now_s = float("-inf")
        shown_s = float("-inf")
        for sample in plan:
            if shown_s >= sample.time_s - self.tolerance_s:
                continue  # the frame shown last stands for this sample too
            found = None
            if sample.on_keyframe:
                forward = None  # the keyframe's seek moves the demuxer: a prefix seeks again
                found = self._keyframe(sample)
            if found is None:
                if forward is None or self._keyframe_before(sample.time_s) > now_s:
                    forward = self._seek_before(sample.time_s)
                found = self._forward_to(forward, sample.time_s)
            if found is None:
                return
            now_s, frame = found
            shown_s = now_s
            yield now_s - self.info.start_s, frame

    def _keyframe_before(self, time_s: float) -> float:
        position = bisect.bisect_right(self.keyframes_s, time_s + self.tolerance_s)
        return self.keyframes_s[position - 1] if position else self.info.start_s

    def _forward_to(
        self, frames: Iterator[av.VideoFrame], target_s: float
    ) -> tuple[float, av.VideoFrame] | None:
        now_s = self.info.start_s
        for frame in frames:
            now_s = self._frame_time(frame, now_s)
            if now_s >= target_s - self.tolerance_s:
                return now_s, frame
        return None

    def _keyframe(self, sample: SampleTime) -> tuple[float, av.VideoFrame] | None:
        """The keyframe shown at `sample.time_s`, decoded from its packet alone (the decoder is
        drained and reset after it), or None when the packet there is not that keyframe."""
        self.container.seek(
            round(sample.time_s / self.stream.time_base), stream=self.stream, backward=True
        )
        packet = next((p for p in self.container.demux(self.stream) if p.size), None)
        if packet is None or not packet.is_keyframe or packet.is_corrupt or packet.pts is None:
            return None
        if abs(float(packet.pts * self.stream.time_base) - sample.time_s) > self.tolerance_s:
            return None
        self.budget.check_time()
        codec = self.stream.codec_context
        try:
            frames = [*codec.decode(packet), *codec.decode(None)]
        except av.error.FFmpegError as exc:
            self.budget.packets_skipped += 1
            logger.debug("skipped an undecodable keyframe: %s", exc)
            return None
        finally:
            codec.flush_buffers()
        for frame in frames:  # drained frames carry no time base: the stream's applies
            pts = frame.pts
            time_s = sample.time_s if pts is None else float(pts * self.stream.time_base)
            self.budget.count_frame(frame.width, frame.height, time_s - self.info.start_s)
            if not frame.is_corrupt:
                return time_s, frame
        return None
