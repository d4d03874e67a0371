"""The decode pool: same frames as in-process decoding, descriptors passed as such, the hard
deadline, crashes, hostile children, the memory budget, limits before allocation, and scaling
for the face stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize

from models.decode_pool import DecodePool, ThreadDecoder
from models.errors import DecodeFailed, DecodeTimeout, LimitExceeded, NotAVideo, NotFound
from models.faces import frame_max_side
from models.pipeline import Detector
from models.spec import DecodeLimits, FaceSpec, SamplingSpec
from models.video import decode_frames, scaled_size
from models.video_budget import MemoryBudget
from tests.checkpoints import make_checkpoint, tiny_spec
from tests.decode_targets import hang_or_crash
from tests.videos import index_frames, make_size_switch_video, make_video, read_index

SAMPLING = SamplingSpec(mode="uniform", num_frames=5)
LIMITS = DecodeLimits()
FRAMES = 60
SIZE = (96, 64)  # width, height
FRAME_BYTES = SIZE[0] * SIZE[1] * 3


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pool")
    make_video(folder / "a.mp4", index_frames(FRAMES, SIZE), gop_size=12)
    make_video(folder / "b.mkv", index_frames(30, SIZE))
    return folder


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    restarts: Counter[str] = Counter()
    decode_pool = DecodePool(
        2,
        MemoryBudget(64 << 20),
        target=hang_or_crash,
        on_restart=lambda reason: restarts.update([reason]),
    )
    decode_pool.restarts = restarts  # type: ignore[attr-defined]
    decode_pool.start()
    yield decode_pool
    decode_pool.close()


def _indices(frames: list[np.ndarray]) -> list[int]:
    return [read_index(frame) for frame in frames]


def test_the_pool_returns_what_in_process_decoding_returns(pool: DecodePool, videos: Path) -> None:
    expected = decode_frames(videos / "a.mp4", SAMPLING, LIMITS, threads=1)
    with pool.decode(videos / "a.mp4", SAMPLING, LIMITS) as video:
        assert _indices(video.frames) == _indices(expected.frames)
        assert all(np.array_equal(a, b) for a, b in zip(video.frames, expected.frames, strict=True))
        assert (video.indices, video.timestamps_s) == (expected.indices, expected.timestamps_s)
        assert (video.width, video.height, video.frames_decoded) == (
            expected.width,
            expected.height,
            expected.frames_decoded,
        )
        assert pool.budget.in_use == len(video.frames) * FRAME_BYTES
    assert pool.budget.in_use == 0


def test_a_descriptor_is_decoded_as_the_inode_it_opened(pool: DecodePool, videos: Path) -> None:
    path = videos / "swapped.mp4"
    make_video(path, index_frames(FRAMES, SIZE))
    fd = os.open(path, os.O_RDONLY)
    try:
        path.unlink()  # and something else put at the path: the child must not look there
        make_video(path, (frame for frame in index_frames(FRAMES + 200, SIZE)), gop_size=5)
        with pool.decode(fd, SamplingSpec(mode="every_nth", every_nth=10), LIMITS) as video:
            assert _indices(video.frames) == list(range(0, FRAMES, 10))
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # the caller's descriptor is left as it was
    finally:
        os.close(fd)


def test_errors_keep_their_codes(pool: DecodePool, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        pool.decode(tmp_path / "missing.mp4", SAMPLING, LIMITS)
    (tmp_path / "text.mp4").write_text("not a video")
    with pytest.raises(NotAVideo):
        pool.decode(tmp_path / "text.mp4", SAMPLING, LIMITS)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(NotFound):  # a descriptor of a FIFO is refused, not read
            pool.decode(fd, SAMPLING, LIMITS)
    finally:
        os.close(fd)
    assert pool.budget.in_use == 0


def test_a_hanging_decode_is_killed_at_its_deadline(pool: DecodePool, tmp_path: Path) -> None:
    before, pids = pool.restarts["timeout"], set(pool.pids)  # type: ignore[attr-defined]
    with pytest.raises(DecodeTimeout) as raised:
        pool.decode(tmp_path / "x.hang", SAMPLING, DecodeLimits(max_wall_s=0.5))
    assert raised.value.code == "TIMEOUT"
    assert pool.restarts["timeout"] == before + 1  # type: ignore[attr-defined]
    assert set(pool.pids) != pids and len(pool.pids) == 2


def test_a_crashing_decoder_is_replaced(pool: DecodePool, tmp_path: Path, videos: Path) -> None:
    before = pool.restarts["crash"]  # type: ignore[attr-defined]
    with pytest.raises(DecodeFailed, match="exited"):
        pool.decode(tmp_path / "x.crash", SAMPLING, LIMITS)
    assert pool.restarts["crash"] == before + 1  # type: ignore[attr-defined]
    for _ in range(3):  # every child still works
        with pool.decode(videos / "a.mp4", SAMPLING, LIMITS) as video:
            assert len(video.frames) == 5


def test_children_killed_mid_decode_fail_only_their_video(
    pool: DecodePool, tmp_path: Path, videos: Path
) -> None:
    def kill_the_children() -> None:  # as the OOM killer would
        while pool.busy == 0:
            time.sleep(0.01)
        time.sleep(0.2)
        for pid in pool.pids:  # the idle one too: it is replaced when next taken
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_children)
    killer.start()
    with pytest.raises(DecodeFailed, match="exited"):
        pool.decode(tmp_path / "x.hang", SAMPLING, DecodeLimits(max_wall_s=60))
    killer.join()
    for _ in range(2):
        with pool.decode(videos / "a.mp4", SAMPLING, LIMITS) as video:
            assert len(video.frames) == 5
    assert len(pool.pids) == 2 and pool.budget.in_use == 0


def test_a_child_that_lies_about_its_frames_is_replaced(pool: DecodePool, tmp_path: Path) -> None:
    before = pool.restarts["crash"]  # type: ignore[attr-defined]
    with pytest.raises(DecodeFailed, match="outside the memory"):
        pool.decode(tmp_path / "x.garbage", SAMPLING, LIMITS)
    assert pool.restarts["crash"] == before + 1  # type: ignore[attr-defined]
    assert pool.budget.in_use == 0


def test_many_concurrent_decodes_each_get_their_own_answer(
    pool: DecodePool, videos: Path, tmp_path: Path
) -> None:
    jobs = [videos / "a.mp4", videos / "b.mkv", tmp_path / "x.crash", tmp_path / "y.hang"] * 3

    def run(path: Path) -> str:
        try:
            with pool.decode(path, SAMPLING, DecodeLimits(max_wall_s=2)) as video:
                return f"ok {_indices(video.frames)[0]}"
        except (DecodeFailed, DecodeTimeout) as exc:
            return exc.code

    with ThreadPoolExecutor(len(jobs)) as executor:
        answers = list(executor.map(run, jobs))
    first = {"a.mp4": f"ok {FRAMES // 10}", "b.mkv": "ok 3", "x.crash": "DECODE_FAILED"}
    assert answers == [first.get(path.name, "TIMEOUT") for path in jobs]
    assert (pool.busy, pool.queued, pool.budget.in_use) == (0, 0, 0)
    assert len(pool.pids) == 2


def test_memory_budget_waits_refuses_and_times_out() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(LimitExceeded):
        budget.acquire(101, time.monotonic() + 10)
    budget.acquire(60, time.monotonic() + 10)
    with pytest.raises(DecodeTimeout):
        budget.acquire(60, time.monotonic() + 0.05)
    acquired = threading.Event()

    def second() -> None:
        budget.acquire(60, time.monotonic() + 30)
        acquired.set()

    waiter = threading.Thread(target=second)
    waiter.start()
    assert not acquired.wait(0.1) and budget.in_use == 60
    budget.release(60)
    waiter.join()
    assert acquired.is_set() and budget.in_use == 60


@pytest.mark.parametrize("kind", ["pool", "threads"])
def test_a_video_over_the_whole_budget_is_refused(kind: str, videos: Path) -> None:
    budget = MemoryBudget(4 * FRAME_BYTES)  # 5 sampled frames do not fit
    decoder = DecodePool(1, budget) if kind == "pool" else ThreadDecoder(1, budget)
    if isinstance(decoder, DecodePool):
        decoder.start()
    try:
        with pytest.raises(LimitExceeded, match="budget"):
            decoder.decode(videos / "a.mp4", SAMPLING, LIMITS)
        assert budget.in_use == 0
        with decoder.decode(videos / "a.mp4", SamplingSpec(num_frames=4), LIMITS) as video:
            assert len(video.frames) == 4 and budget.in_use == budget.total_bytes
    finally:
        decoder.close()


def test_decodes_wait_for_memory_held_by_earlier_videos(videos: Path) -> None:
    budget = MemoryBudget(5 * FRAME_BYTES)
    pool = DecodePool(2, budget)
    pool.start()
    try:
        first = pool.decode(videos / "a.mp4", SAMPLING, LIMITS)
        assert budget.in_use == budget.total_bytes
        second: list[object] = []
        waiter = threading.Thread(
            target=lambda: second.append(pool.decode(videos / "b.mkv", SAMPLING, LIMITS))
        )
        waiter.start()
        waiter.join(0.5)
        assert waiter.is_alive() and pool.busy == 1  # the second child waits for the memory
        first.release()
        waiter.join()
        assert budget.in_use == budget.total_bytes
        second[0].release()  # type: ignore[attr-defined]
        assert budget.in_use == 0
    finally:
        pool.close()


@pytest.fixture(scope="module")
def size_switch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_size_switch_video(tmp_path_factory.mktemp("crafted") / "switch.mkv")


ALL_FRAMES = SamplingSpec(mode="every_nth", every_nth=1, max_frames=1000)


def test_a_stream_larger_than_its_header_is_refused(pool: DecodePool, size_switch: Path) -> None:
    limits = DecodeLimits(max_pixels=1920 * 1080)
    with pytest.raises(LimitExceeded, match="8192x8192"):
        decode_frames(size_switch, ALL_FRAMES, limits, threads=1)
    with pytest.raises(LimitExceeded, match="8192x8192"):
        pool.decode(size_switch, ALL_FRAMES, limits)
    assert pool.budget.in_use == 0


_PEAK = """
import sys
from models.spec import DecodeLimits, SamplingSpec
from models.video import decode_frames
try:
    decode_frames(sys.argv[1], SamplingSpec(mode="every_nth", every_nth=1, max_frames=1000),
                  DecodeLimits(max_pixels=int(sys.argv[2])), threads=1)
except Exception as exc:
    print(type(exc).__name__)
with open("/proc/self/status") as status:  # VmHWM: this program's peak, not its forker's
    print(next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM")))
"""


def _peak(path: Path, max_pixels: int) -> tuple[str, int]:
    run = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path), str(max_pixels)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    error, peak = run.stdout.split()
    return error, int(peak)


def test_the_big_frame_is_never_allocated(size_switch: Path) -> None:
    """FFmpeg's max_pixels refuses the 8192x8192 picture before allocating it: the refused
    decode peaks at least one such frame (96 MiB of YUV) below the one that allows it."""
    refused, refused_peak = _peak(size_switch, 1920 * 1080)
    allowed, allowed_peak = _peak(size_switch, 8192 * 8192)
    assert refused == "LimitExceeded"
    assert allowed == "LimitExceeded"  # over the 64x64 the header announced, after decoding it
    assert refused_peak + 8192 * 8192 * 3 // 2 < allowed_peak


def test_codecs_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    path = make_video(tmp_path / "ffv1.mkv", index_frames(5, SIZE), codec="ffv1")
    with pytest.raises(NotAVideo, match="ffv1"):
        decode_frames(path, SAMPLING, LIMITS)


def test_frames_are_scaled_down_keeping_their_aspect(pool: DecodePool, videos: Path) -> None:
    assert scaled_size(1920, 1080, 2757) == (1920, 1080)
    assert scaled_size(3840, 2160, 2757) == (2757, 1551)
    assert scaled_size(1080, 1920, 960) == (540, 960)
    scaled = DecodePool(1, MemoryBudget(1 << 20), max_side=48)
    scaled.start()
    try:
        with scaled.decode(videos / "a.mp4", SAMPLING, LIMITS) as video:
            assert video.frames[0].shape == (32, 48, 3) and (video.width, video.height) == (48, 32)
            assert scaled.budget.in_use == 5 * 48 * 32 * 3
            in_threads = ThreadDecoder(1, MemoryBudget(1 << 20), max_side=48)
            with in_threads.decode(videos / "a.mp4", SAMPLING, LIMITS) as same:
                assert all(
                    np.array_equal(a, b) for a, b in zip(video.frames, same.frames, strict=True)
                )
    finally:
        scaled.close()


def test_frame_max_side_keeps_detection_and_crop_sizes() -> None:
    face = FaceSpec()
    assert frame_max_side(face, 224) == 2757  # 640 * 224 / (40 * 1.3), rounded up
    assert frame_max_side(face, 48) == 640  # never below the detection size
    assert frame_max_side(FaceSpec(detector="none"), 224) == 224


def test_scaled_frames_give_the_same_faces_and_prediction(tmp_path: Path) -> None:
    """Frames scaled to `frame_max_side` right after decoding: the same faces found (boxes
    within a pixel of the detection image), crops and prediction within tolerance."""
    torch.set_num_threads(1)
    astronaut = (resize(skdata.astronaut(), (384, 384), anti_aliasing=True) * 255).astype(np.uint8)
    video = make_video(
        tmp_path / "astronaut.mp4", [np.roll(astronaut, s, axis=1) for s in range(0, 16, 4)], fps=4
    )
    spec = tiny_spec(detector="mtcnn", input_size=48).model_copy(
        update={"face": FaceSpec(min_face_size=20, detect_max_side=128)}
    )
    detector = Detector.load(make_checkpoint(tmp_path / "tiny.safetensors", spec=spec))
    side = frame_max_side(spec.face, 48)
    assert side == 237
    full = decode_frames(video, spec.sampling, spec.decode)
    small = decode_frames(video, spec.sampling, spec.decode, max_side=side)
    assert small.frames[0].shape == (side, side, 3)

    full_faces = detector.crop_faces(full.frames, full.timestamps_s)
    small_faces = detector.crop_faces(small.frames, small.timestamps_s)
    assert full_faces.has_face == small_faces.has_face == [True] * 4
    detection_pixel = 384 / 128
    for big, scaled in zip(full_faces.boxes, small_faces.boxes, strict=True):
        assert np.allclose(np.array(big), np.array(scaled) * 384 / side, atol=1.5 * detection_pixel)
    full_embeddings = detector.embed(full_faces.crops)
    small_embeddings = detector.embed(small_faces.crops)
    similarity = torch.nn.functional.cosine_similarity(full_embeddings, small_embeddings)
    assert similarity.min() > 0.9
    [a, b] = detector.classify(
        [
            detector.assembled(full_faces.has_face, full.timestamps_s, full_embeddings),
            detector.assembled(small_faces.has_face, small.timestamps_s, small_embeddings),
        ]
    )
    assert a.fake_probability == pytest.approx(b.fake_probability, abs=0.02)
