"""PyAV decoding: exactly the sampled frames (checked by content), rotation, bad inputs, limits."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import (
    DecodeFailed,
    DecodeTimeout,
    LimitExceeded,
    NoFrames,
    NotAVideo,
    NotFound,
    PipelineError,
    TooLarge,
)
from models.mp4_index import lacks_index
from models.sampling import sample_indices
from models.spec import DecodeLimits, SamplingSpec
from models.video import TRUNCATED_MP4, DecodedVideo, decode_frames
from tests.videos import index_frame, index_frames, make_audio, make_video, pipe, read_index

LIMITS = DecodeLimits()
FPS = 25
LONG = 300  # frames in the long videos: 12 s at 25 fps, a keyframe every 25 frames
SHORT = 60
X264_FIXED_GOP = {"sc_threshold": "0"}  # no extra keyframes at scene cuts: every frame is one

SPARSE = SamplingSpec(mode="uniform", num_frames=5)
DENSE = SamplingSpec(mode="every_nth", every_nth=2, max_frames=1000)


def decode(source: object, sampling: SamplingSpec = SPARSE, **limits: float) -> DecodedVideo:
    return decode_frames(source, sampling, DecodeLimits(**limits), threads=1)  # type: ignore[arg-type]


def content_indices(video: DecodedVideo) -> list[int]:
    return [read_index(frame) for frame in video.frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


def _long_video(path: Path, codec: str = "libx264") -> Path:
    options = X264_FIXED_GOP if codec == "libx264" else None
    return make_video(path, index_frames(LONG), FPS, codec, gop_size=25, options=options)


LONG_VIDEOS = {  # file name -> codec
    "h264.mp4": "libx264",
    "h264.ts": "libx264",
    "vp9.webm": "libvpx-vp9",
    "mpeg4.avi": "mpeg4",
    "mpeg4.mkv": "mpeg4",
}


@pytest.fixture(scope="module", params=sorted(LONG_VIDEOS))
def long_video(request: pytest.FixtureRequest, videos: Path) -> Path:
    return _long_video(videos / request.param, LONG_VIDEOS[request.param])


@pytest.fixture(scope="module")
def mp4(videos: Path) -> Path:
    return make_video(videos / "short.mp4", index_frames(SHORT), fps=FPS, gop_size=10)


@pytest.mark.parametrize(
    "sampling",
    [
        SPARSE,
        DENSE,
        SamplingSpec(mode="every_nth", every_nth=1, max_frames=LONG),
        SamplingSpec(mode="every_nth", every_nth=60, max_frames=64),
        SamplingSpec(mode="uniform", num_frames=16, max_frames=7),
    ],
    ids=["sparse", "dense", "all", "every-60", "uniform-capped"],
)
def test_returns_exactly_the_sampled_frames(long_video: Path, sampling: SamplingSpec) -> None:
    video = decode(long_video, sampling)

    expected = sample_indices(LONG, sampling)
    assert video.indices == expected
    assert content_indices(video) == expected
    assert video.timestamps_s == pytest.approx([index / FPS for index in expected], abs=1e-3)
    assert (video.fps, video.width, video.height) == (FPS, 64, 64)
    assert video.duration_s == pytest.approx(LONG / FPS, abs=0.05)
    assert all(frame.shape == (64, 64, 3) and frame.dtype == np.uint8 for frame in video.frames)


def test_sparse_sampling_seeks_instead_of_decoding_everything(long_video: Path) -> None:
    sparse = decode(long_video, SamplingSpec(mode="uniform", num_frames=3))
    assert sparse.frames_decoded < LONG // 2


def test_dense_sampling_decodes_each_frame_once(long_video: Path) -> None:
    dense = decode(long_video, DENSE)
    assert dense.frames_decoded <= LONG


def test_decoder_threads_do_not_change_the_result(videos: Path) -> None:
    path = _long_video(videos / "threads.mp4")
    threaded = decode_frames(path, SPARSE, LIMITS, threads=2)
    assert content_indices(threaded) == sample_indices(LONG, SPARSE)


def test_variable_frame_rate_is_sampled_by_time(videos: Path) -> None:
    # a burst of 3 frames 20 ms apart every 100 ms...
    times = [round(0.1 * (i // 3) + 0.02 * (i % 3), 3) for i in range(90)]
    path = make_video(videos / "vfr.mkv", index_frames(len(times)), fps=25, times_s=times)
    sampling = SamplingSpec(mode="every_nth", every_nth=4, max_frames=100)

    video = decode(path, sampling)

    tolerance = 0.5 / video.fps
    targets = [index / video.fps for index in sample_indices(round(3.0 * video.fps), sampling)]
    expected: list[int] = []
    for target in targets:  # the first frame shown at or after each target, each frame once
        first = next((i for i, t in enumerate(times) if t >= target - tolerance), None)
        if first is not None and first not in expected:
            expected.append(first)
    assert content_indices(video) == expected
    assert video.timestamps_s == pytest.approx([times[i] for i in expected], abs=1e-3)


def test_a_stream_without_duration_is_measured_by_its_packets(videos: Path) -> None:
    path = make_video(
        videos / "live.webm",
        index_frames(SHORT),
        fps=FPS,
        codec="libvpx-vp9",
        container_options={"live": "1"},
    )
    video = decode(path, SamplingSpec(mode="uniform", num_frames=4))
    assert content_indices(video) == [7, 22, 37, 52]
    assert video.duration_s == pytest.approx(SHORT / FPS, abs=0.05)
    with pytest.raises(LimitExceeded, match="duration"):
        decode(path, max_duration_s=1.0)


def test_reads_from_file_objects(mp4: Path) -> None:
    expected = sample_indices(SHORT, SPARSE)
    assert content_indices(decode(io.BytesIO(mp4.read_bytes()))) == expected
    with mp4.open("rb") as handle:
        assert content_indices(decode(handle)) == expected


def test_reads_from_a_descriptor_without_moving_its_offset(mp4: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.mp4"
    shutil.copy(mp4, copy)
    fd = os.open(copy, os.O_RDONLY)
    try:
        os.lseek(fd, 1000, os.SEEK_SET)
        assert content_indices(decode(fd)) == sample_indices(SHORT, SPARSE)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 1000
        (tmp_path / "other").write_bytes(b"not a video")
        os.replace(tmp_path / "other", copy)  # the name now points elsewhere; the fd does not
        assert content_indices(decode(fd)) == sample_indices(SHORT, SPARSE)
    finally:
        os.close(fd)


def test_a_descriptor_must_be_an_open_regular_file(mp4: Path) -> None:
    reader, writer = os.pipe()
    try:
        with pytest.raises(NotFound, match="not a regular file"):
            decode(reader)
    finally:
        os.close(reader)
        os.close(writer)
    with pytest.raises(NotFound):
        decode(reader)  # closed now
    fd = os.open(mp4.parent, os.O_RDONLY)
    try:
        with pytest.raises(NotFound):
            decode(fd)
    finally:
        os.close(fd)


def test_a_pipe_is_decoded_forward(videos: Path) -> None:
    path = make_video(videos / "pipe.webm", index_frames(SHORT), fps=FPS, codec="libvpx-vp9")
    video = decode(pipe(path.read_bytes()), SPARSE)
    assert content_indices(video) == sample_indices(SHORT, SPARSE)


# -- rotation ------------------------------------------------------------------------------------

ROTATED_INDICES = [0x1234 + i for i in range(3)]  # patterns that no rotation maps onto themselves


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(videos: Path, rotation: int) -> None:
    originals = [index_frame(index, (128, 64)) for index in ROTATED_INDICES]
    path = make_video(videos / f"rotated{rotation}.mp4", originals, fps=FPS, rotation=rotation)

    video = decode(path, SamplingSpec(mode="every_nth", every_nth=1))

    turns = rotation // 90
    expected_shape = (128, 64, 3) if rotation % 180 else (64, 128, 3)
    assert (video.height, video.width, 3) == expected_shape
    for decoded, original in zip(video.frames, originals, strict=True):
        assert decoded.shape == expected_shape
        assert _difference(decoded, np.rot90(original, turns)) < 8
        assert _difference(decoded, np.rot90(original, turns + 2)) > 60


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")
def test_rotation_matches_what_ffmpeg_displays(videos: Path) -> None:
    original = index_frame(ROTATED_INDICES[0], (128, 64))
    path = make_video(videos / "rotated-ffmpeg.mp4", [original] * 2, fps=FPS, rotation=90)
    command = ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo"]
    displayed = subprocess.run(
        [*command, "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    shown = np.frombuffer(displayed, dtype=np.uint8).reshape(128, 64, 3)
    assert _difference(decode(path).frames[0], shown) < 8


# -- bad inputs ----------------------------------------------------------------------------------


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as caught:
        decode(tmp_path / "missing.mp4")
    assert caught.value.code == "NOT_FOUND"


def test_a_directory_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        decode(tmp_path)


def test_empty_file_is_not_a_video(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(NotAVideo) as caught:
        decode(empty)
    assert caught.value.code == "NOT_A_VIDEO"
    with pytest.raises(NotAVideo):
        decode(io.BytesIO())


def test_audio_only_file_is_not_a_video(tmp_path: Path) -> None:
    with pytest.raises(NotAVideo, match="no video stream"):
        decode(make_audio(tmp_path / "tone.m4a"))


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("notes.txt", b"hello, this is text and not a video at all\n" * 40),
        ("noise.mp4", np.random.default_rng(7).integers(0, 256, 4096, np.uint8).tobytes()),
    ],
)
def test_other_files_are_not_videos(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(NotAVideo):
        decode(path)


def test_images_are_not_videos(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "still.png"
    Image.fromarray(index_frame(5)).save(path)
    with pytest.raises(NotAVideo):
        decode(path)


def test_playlists_that_open_other_files_are_refused(tmp_path: Path, mp4: Path) -> None:
    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:2.4,\n{mp4}\n#EXT-X-ENDLIST\n")
    with pytest.raises(NotAVideo):
        decode(playlist)


def test_truncated_video_returns_the_frames_before_the_cut(tmp_path: Path, videos: Path) -> None:
    whole = make_video(videos / "cut.mkv", index_frames(LONG), fps=FPS, gop_size=25)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) * 6 // 10])

    video = decode(cut, SamplingSpec(mode="every_nth", every_nth=10, max_frames=LONG))

    assert 0 < len(video.frames) < LONG // 10
    assert content_indices(video) == list(range(0, 10 * len(video.frames), 10))
    assert content_indices(video) == video.indices


def test_truncated_mp4_without_its_index_is_not_a_video(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", index_frames(SHORT), fps=FPS)  # index at the end
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(NotAVideo):
        decode(cut)


def test_a_header_without_frames_fails_cleanly(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mkv", index_frames(SHORT), fps=FPS)
    cut = tmp_path / "head.mkv"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises((DecodeFailed, NoFrames, NotAVideo)):
        decode(cut)


def _faststart_mp4(path: Path) -> Path:
    return make_video(
        path,
        index_frames(LONG),
        fps=FPS,
        gop_size=25,
        options=X264_FIXED_GOP,
        container_options={"movflags": "+faststart"},
    )


def _scramble(data: bytes, start: int, end: int) -> bytes:
    return data[:start] + np.random.default_rng(3).bytes(end - start) + data[end:]


def _packet_span(path: Path, first: int, last: int) -> tuple[int, int]:
    """Byte range of the packets of frames first..last (display order)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        spans = [
            (packet.pos, packet.pos + packet.size)
            for packet in container.demux(stream)
            if packet.size and first <= round(packet.pts * stream.time_base * FPS) <= last
        ]
    return min(start for start, _ in spans), max(end for _, end in spans)


def test_corrupt_packets_are_skipped_and_counted(tmp_path: Path) -> None:
    whole = _faststart_mp4(tmp_path / "whole.mp4")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(_scramble(whole.read_bytes(), *_packet_span(whole, 160, 165)))
    sampling = SamplingSpec(mode="every_nth", every_nth=1, max_frames=LONG)

    video = decode(broken, sampling)

    assert video.packets_skipped > 0
    assert video.indices == sorted(set(video.indices))
    damaged_gop = range(150, 175)  # up to the next keyframe; what shows there is the decoder's
    intact = [i for i in range(LONG) if i not in damaged_gop]
    kept = [(i, frame) for i, frame in zip(video.indices, video.frames, strict=True)]
    assert [i for i, _ in kept if i not in damaged_gop] == intact
    assert [read_index(frame) for i, frame in kept if i not in damaged_gop] == intact


def test_nothing_decodable_is_no_frames_or_decode_failed(tmp_path: Path) -> None:
    whole = _faststart_mp4(tmp_path / "whole.mp4")
    data = whole.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(_scramble(data, *_packet_span(whole, 0, LONG)))
    with pytest.raises((NoFrames, DecodeFailed)) as caught:
        decode(broken)
    assert caught.value.code in {"NO_FRAMES", "DECODE_FAILED"}


# -- limits --------------------------------------------------------------------------------------


def test_too_many_bytes(mp4: Path) -> None:
    size = mp4.stat().st_size
    assert decode(mp4, max_bytes=size).frames
    with pytest.raises(TooLarge) as caught:
        decode(mp4, max_bytes=size - 1)
    assert caught.value.code == "TOO_LARGE"
    with pytest.raises(TooLarge):
        decode(io.BytesIO(mp4.read_bytes()), max_bytes=size - 1)


def test_too_long(mp4: Path) -> None:
    assert decode(mp4, max_duration_s=SHORT / FPS + 0.1).frames
    with pytest.raises(LimitExceeded) as caught:
        decode(mp4, max_duration_s=SHORT / FPS - 0.5)
    assert caught.value.code == "LIMIT_EXCEEDED"


def test_too_many_pixels(mp4: Path) -> None:
    assert decode(mp4, max_pixels=64 * 64).frames
    with pytest.raises(LimitExceeded, match="pixels"):
        decode(mp4, max_pixels=64 * 64 - 1)


def test_too_many_decoded_frames(mp4: Path) -> None:
    everything = SamplingSpec(mode="every_nth", every_nth=1, max_frames=SHORT)
    assert len(decode(mp4, everything, max_decoded_frames=SHORT).frames) == SHORT
    with pytest.raises(LimitExceeded, match="frames"):
        decode(mp4, everything, max_decoded_frames=SHORT - 1)


def test_out_of_time(mp4: Path) -> None:
    with pytest.raises(DecodeTimeout) as caught:
        decode(mp4, max_wall_s=1e-9)
    assert caught.value.code == "TIMEOUT"


def test_every_error_is_a_pipeline_error(tmp_path: Path) -> None:
    for content in (b"\x00" * 10, b"\x1a\x45\xdf\xa3" + b"\xff" * 100, b"RIFF" + b"\x00" * 60):
        path = tmp_path / "odd.bin"
        path.write_bytes(content)
        with pytest.raises(PipelineError):
            decode(path)


def test_mp4_cut_before_its_index_is_reported_as_truncated(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", index_frames(50))  # moov written last
    assert not lacks_index(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert lacks_index(cut)
    for source in (cut, io.BytesIO(cut.read_bytes())):
        with pytest.raises(NotAVideo) as caught:
            decode(source)
        assert caught.value.code == "NOT_A_VIDEO"
        assert caught.value.message == TRUNCATED_MP4


def test_an_mp4_ending_inside_its_leading_index_lacks_it(tmp_path: Path) -> None:
    options = {"movflags": "faststart"}  # moov before the media data
    whole = make_video(tmp_path / "fast.mp4", index_frames(50), container_options=options)
    data = whole.read_bytes()
    assert data.index(b"moov") < data.index(b"mdat") and not lacks_index(whole)
    assert lacks_index(io.BytesIO(data[: data.index(b"moov") + 64]))
    assert not lacks_index(io.BytesIO(data[: data.index(b"mdat") - 4]))  # moov whole, no media


def test_garbage_is_not_mistaken_for_a_truncated_mp4(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x08free" + b"not a video at all" * 100)
    with pytest.raises(NotAVideo) as caught:
        decode(garbage)
    assert caught.value.message.startswith("not a supported video file")


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=256))
def test_box_walk_never_fails_on_hostile_bytes(data: bytes) -> None:
    assert lacks_index(io.BytesIO(b"\x00\x00\x00\x10ftypisom" + data)) in (True, False)
