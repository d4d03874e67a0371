"""Decoding out of the serving process: supervised decode processes, a hard deadline, and a
memory budget for the decoded frames.

`DecodePool` keeps `processes` child processes (started with `spawn`: the parent runs torch
threads, which `fork` would copy in a broken state). Each decodes one video at a time with
`models.video.decode_frames` (one codec thread by default), so decoding neither holds the serving
process's GIL nor shares its address space with FFmpeg. A caller thread takes an idle child and
supervises it for the whole job:

- The job goes over a per-child Unix SOCK_SEQPACKET socketpair; an open file descriptor source is
  passed itself (SCM_RIGHTS), so the child decodes the same inode, never a path resolved again.
- Before decoding any frame the child asks for the bytes its sampled frames take (at their output
  size). The caller reserves them in the `MemoryBudget` (waiting while other videos hold it;
  LIMIT_EXCEEDED at once when one video alone is over it) and answers with a `memfd` of that size;
  the child writes the scaled frames there and the caller hands them out as views of that shared
  memory: frames are never pickled or copied through a pipe.
- The deadline (`DecodeLimits.max_wall_s`, from when the child takes the job) holds even inside
  one FFmpeg call: at the deadline the caller SIGKILLs the child, answers `DecodeTimeout` and
  starts a replacement. A child that dies (segfault, OOM kill) answers `DecodeFailed` and is
  replaced too; the pool never dies with a child.
- The child is as untrusted as the video it decodes: its messages are JSON validated by pydantic
  models with bounded sizes, never unpickled, and frame offsets are checked against the memory
  the caller gave it.

`ThreadDecoder` is the same interface decoding in the caller's thread (tiny deployments, tests):
the memory budget holds, but its deadline is only checked between FFmpeg calls.

Both return a `Decoded` lease: its frames count against the budget until it is released.

As with any `spawn` child, a parent run as a script (`python path/to/script.py`) has its main
module imported again in each child; run it as a module (`python -m worker`, a package's
`__main__`) so the children import only this module, PyAV and numpy.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
from models.spec import DecodeLimits, SamplingSpec
from models.video import DecodedVideo, FrameStore, decode_frames
from models.video_budget import MemoryBudget

log = logging.getLogger(__name__)

PoolSource = int | str | os.PathLike[str]
"""An open file descriptor (passed to the child itself) or a path."""

MESSAGE_BYTES = 1 << 20
"""Largest message either side sends (a job, or a result listing up to a few thousand frames)."""
START_TIMEOUT_S = 60.0
"""How long a new child may take to import its modules and say it is ready."""
STOP_TIMEOUT_S = 2.0
"""How long `close` waits for a child to exit before killing it."""
MAX_ERROR_CHARS = 500

_ERRORS: dict[str, type[PipelineError]] = {
    error.code: error
    for error in (
        NotFound,
        TooLarge,
        NotAVideo,
        DecodeFailed,
        NoFrames,
        LimitExceeded,
        DecodeTimeout,
    )
}


class Decoded:
    """A decoded video whose frames count against the decode memory budget until `release`
    (or the end of a `with` block); release it once the frames are no longer needed."""

    def __init__(self, video: DecodedVideo, release: Callable[[], None]) -> None:
        self.video = video
        self._release: Callable[[], None] | None = release

    def release(self) -> None:
        """Give the frames' bytes back to the budget (once; later calls do nothing)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> DecodedVideo:
        return self.video

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.release()


class VideoDecoder(Protocol):
    """Decodes videos for the worker's request threads (thread-safe, blocking)."""

    budget: MemoryBudget

    @property
    def busy(self) -> int:
        """Videos being decoded now."""

    @property
    def queued(self) -> int:
        """Decodes waiting for a free decoder."""

    def decode(
        self, source: PoolSource, sampling: SamplingSpec, limits: DecodeLimits
    ) -> Decoded: ...

    def close(self) -> None: ...


class DecodeJob(BaseModel):
    """One decode, parent to child (the descriptor, if any, travels beside it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sampling: SamplingSpec
    limits: DecodeLimits
    max_side: int | None
    threads: int
    path: str | None = None


DecodeTarget = Callable[[int | str, DecodeJob, FrameStore], DecodedVideo]
"""What a child runs for a job: (fd or path, job, frame store) -> the decoded video, whose frames
are the arrays the store's `put` returned."""


def decode_job(source: int | str, job: DecodeJob, store: FrameStore) -> DecodedVideo:
    """The pool's default target: `decode_frames` with the job's settings."""
    return decode_frames(
        source,
        job.sampling,
        job.limits,
        threads=job.threads,
        max_side=job.max_side,
        store=store,
    )


NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class _Error(BaseModel):
    code: Annotated[str, Field(max_length=64)]
    message: Annotated[str, Field(max_length=4 * MAX_ERROR_CHARS)]


class _Result(BaseModel):
    """A decoded video as the child describes it: frames are (offset, height, width) in the
    shared memory."""

    frames: list[tuple[NonNegative, Positive, Positive]]
    indices: list[int]
    timestamps_s: list[float]
    fps: float
    duration_s: float
    width: Positive
    height: Positive
    frames_decoded: NonNegative
    packets_skipped: NonNegative


class _Reply(BaseModel):
    """A message from a child: exactly one field is set."""

    model_config = ConfigDict(extra="forbid")

    ready: bool = False
    reserve: NonNegative | None = None
    done: _Result | None = None
    error: _Error | None = None


class _Grant(BaseModel):
    """The parent's answer to a reservation: a memfd travels beside it, or an error."""

    error: _Error | None = None


class ThreadDecoder:
    """`decode_frames` in the caller's thread, at most `concurrency` at once, within a budget."""

    def __init__(
        self,
        concurrency: int,
        budget: MemoryBudget,
        *,
        max_side: int | None = None,
        threads: int = 0,
    ) -> None:
        self.budget = budget
        self._concurrency = concurrency
        self._slots = threading.Semaphore(concurrency)
        self._max_side = max_side
        self._threads = threads
        self._lock = threading.Lock()
        self._waiting_or_busy = 0

    @property
    def busy(self) -> int:
        return min(self._waiting_or_busy, self._concurrency)

    @property
    def queued(self) -> int:
        return max(0, self._waiting_or_busy - self._concurrency)

    def decode(self, source: PoolSource, sampling: SamplingSpec, limits: DecodeLimits) -> Decoded:
        """The sampled frames of `source` (raises a `PipelineError`)."""
        store = _BudgetStore(self.budget, time.monotonic() + limits.max_wall_s)
        with self._lock:
            self._waiting_or_busy += 1
        try:
            return self._decode(source, sampling, limits, store)
        finally:
            with self._lock:
                self._waiting_or_busy -= 1

    def _decode(
        self,
        source: PoolSource,
        sampling: SamplingSpec,
        limits: DecodeLimits,
        store: _BudgetStore,
    ) -> Decoded:
        with self._slots:
            try:
                video = decode_frames(
                    source,
                    sampling,
                    limits,
                    threads=self._threads,
                    max_side=self._max_side,
                    store=store,
                )
            except BaseException:
                store.release()
                raise
        return Decoded(video, store.release)

    def close(self) -> None:
        """Nothing to stop."""


class _BudgetStore(FrameStore):
    """Frames in this process's memory, reserved in a `MemoryBudget` before decoding."""

    def __init__(self, budget: MemoryBudget, deadline: float) -> None:
        self._budget = budget
        self._deadline = deadline
        self._reserved = 0

    def reserve(self, nbytes: int) -> None:
        self._budget.acquire(nbytes, self._deadline)
        self._reserved = nbytes

    def release(self) -> None:
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._budget.release(reserved)


class DecodePool:
    """Supervised decode processes; see the module docstring. `start` before `decode`.

    `on_restart(reason)` is called when a child is replaced ("timeout" or "crash"). `target` is
    what the children run (default `decode_job`; a module-level function, imported by the child).
    """

    def __init__(
        self,
        processes: int,
        budget: MemoryBudget,
        *,
        max_side: int | None = None,
        threads: int = 1,
        target: DecodeTarget = decode_job,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"a decode pool needs at least one process, got {processes}")
        self.budget = budget
        self._max_side = max_side
        self._threads = threads
        self._target = target
        self._on_restart = on_restart or (lambda _reason: None)
        self._context = multiprocessing.get_context("spawn")
        self._children = [_Child(index) for index in range(processes)]
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = 0
        self._queued = 0
        self._closed = False

    @property
    def busy(self) -> int:
        """Children decoding now."""
        return self._busy

    @property
    def queued(self) -> int:
        """Callers waiting for an idle child."""
        return self._queued

    @property
    def pids(self) -> list[int]:
        """Process ids of the running children."""
        return [child.pid for child in self._children if child.pid is not None]

    def start(self) -> None:
        """Start every child and wait until each is ready (raises `RuntimeError` if one fails)."""
        for child in self._children:
            child.launch(self._context, self._target)
        for child in self._children:
            child.wait_ready()
            self._idle.put(child)
        log.info("decode pool started", extra={"processes": len(self._children)})

    def close(self) -> None:
        """Stop the children (idle ones exit; the others are killed after STOP_TIMEOUT_S)."""
        self._closed = True
        for child in self._children:
            child.stop()

    def decode(self, source: PoolSource, sampling: SamplingSpec, limits: DecodeLimits) -> Decoded:
        """The sampled frames of `source`, decoded by a child (raises a `PipelineError`)."""
        if self._closed:
            raise RuntimeError("the decode pool is closed")
        job = DecodeJob(
            sampling=sampling,
            limits=limits,
            max_side=self._max_side,
            threads=self._threads,
            path=None if isinstance(source, int) else os.fspath(source),
        )
        fds = [source] if isinstance(source, int) else []
        child = self._take()
        try:
            return self._run(child, job, fds)
        finally:
            self._give_back(child)

    def _take(self) -> _Child:
        with self._lock:
            self._queued += 1
        try:
            child = self._idle.get()
        finally:
            with self._lock:
                self._queued -= 1
                self._busy += 1
        return child

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            self._busy -= 1
        self._idle.put(child)

    def _run(self, child: _Child, job: DecodeJob, fds: list[int]) -> Decoded:
        deadline = time.monotonic() + job.limits.max_wall_s
        shared: _Shared | None = None
        try:
            if not child.alive:
                self._replace(child, "crash")
            child.send(job.model_dump_json().encode(), fds)
            while True:
                reply = child.receive(deadline)
                if reply.reserve is not None:
                    if shared is not None:
                        raise _Broken("reserved twice")
                    shared = self._grant(child, reply.reserve, deadline)
                elif reply.done is not None:
                    video = _video(reply.done, shared)
                    return Decoded(video, shared.release if shared else lambda: None)
                elif reply.error is not None:
                    error = _ERRORS.get(reply.error.code, DecodeFailed)
                    raise error(reply.error.message[:MAX_ERROR_CHARS])
                else:
                    raise _Broken("an empty message")
        except _Timeout:
            self._replace(child, "timeout")
            _release(shared)
            raise DecodeTimeout(f"decoding took longer than {job.limits.max_wall_s:g} s") from None
        except _Broken as exc:
            self._replace(child, "crash")
            _release(shared)
            raise DecodeFailed(f"the decoder process failed: {exc}") from None
        except BaseException:
            _release(shared)
            raise

    def _grant(self, child: _Child, nbytes: int, deadline: float) -> _Shared | None:
        """Reserve the child's frames in the budget and hand it shared memory of that size."""
        try:
            self.budget.acquire(nbytes, deadline)
        except DecodeTimeout:  # waited for memory until the deadline: the child waits too
            raise _Timeout() from None
        except LimitExceeded as exc:
            child.send(_Grant(error=_Error(code=exc.code, message=exc.message)).model_dump_json())
            return None
        shared = _Shared(self.budget, nbytes)
        try:
            child.send(_Grant().model_dump_json(), [shared.fd])
        except BaseException:
            shared.release()
            raise
        finally:
            shared.close_fd()
        return shared

    def _replace(self, child: _Child, reason: str) -> None:
        log.warning("replacing a decode process", extra={"reason": reason, "pid": child.pid})
        self._on_restart(reason)
        child.kill()
        if not self._closed:
            child.start(self._context, self._target)


class _Timeout(Exception):
    """The job's deadline passed."""


class _Broken(Exception):
    """The child died or broke the protocol."""


@dataclass
class _Shared:
    """A memfd of `nbytes` reserved in the budget, mapped in this process."""

    budget: MemoryBudget
    nbytes: int
    fd: int = -1
    memory: mmap.mmap | None = None
    _released: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.fd = os.memfd_create("dfd-decoded-frames", os.MFD_CLOEXEC)
        if self.nbytes:
            os.ftruncate(self.fd, self.nbytes)
            self.memory = mmap.mmap(self.fd, self.nbytes)

    def close_fd(self) -> None:
        """The mapping keeps the memory; the descriptor is only needed to pass it on."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        """Give the bytes back to the budget (the mapping goes when its last view does)."""
        if not self._released:
            self._released = True
            self.close_fd()
            self.budget.release(self.nbytes)


def _release(shared: _Shared | None) -> None:
    if shared is not None:
        shared.release()


def _video(result: _Result, shared: _Shared | None) -> DecodedVideo:
    """The child's result as a `DecodedVideo` whose frames view the shared memory."""
    count = len(result.frames)
    if len(result.indices) != count or len(result.timestamps_s) != count:
        raise _Broken("frames, indices and timestamps differ in number")
    frames = []
    for offset, height, width in result.frames:
        size = height * width * 3
        if shared is None or shared.memory is None or offset + size > shared.nbytes:
            raise _Broken("a frame lies outside the memory it was given")
        array = np.frombuffer(shared.memory, dtype=np.uint8, count=size, offset=offset)
        frames.append(array.reshape(height, width, 3))
    return DecodedVideo(frames=frames, **result.model_dump(exclude={"frames"}))


class _Child:
    """One decode process and the parent's end of its socket."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: multiprocessing.process.BaseProcess | None = None
        self.sock: socket.socket | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self, context: multiprocessing.context.BaseContext, target: DecodeTarget) -> None:
        self.launch(context, target)
        self.wait_ready()

    def launch(self, context: multiprocessing.context.BaseContext, target: DecodeTarget) -> None:
        """Start the process (`wait_ready` waits until it can take jobs)."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        process = context.Process(  # type: ignore[attr-defined]
            target=_child_main,
            args=(child, target),
            name=f"dfd-decode-{self.index}",
            daemon=True,
        )
        process.start()
        child.close()
        self.process, self.sock = process, parent

    def wait_ready(self) -> None:
        try:
            reply = self.receive(time.monotonic() + START_TIMEOUT_S)
        except (_Timeout, _Broken) as exc:
            self.kill()
            raise RuntimeError(f"decode process {self.index} did not start: {exc}") from exc
        if not reply.ready:
            self.kill()
            raise RuntimeError(f"decode process {self.index} sent {reply!r} instead of ready")

    def send(self, message: str | bytes, fds: list[int] | None = None) -> None:
        data = message.encode() if isinstance(message, str) else message
        assert self.sock is not None
        try:
            socket.send_fds(self.sock, [data], fds or [])
        except OSError as exc:
            raise _Broken(f"cannot send to it: {exc}") from exc

    def receive(self, deadline: float) -> _Reply:
        """The child's next message; `_Timeout` at the deadline, `_Broken` if it died."""
        assert self.sock is not None and self.process is not None
        ready = multiprocessing.connection.wait(
            [self.sock, self.process.sentinel], max(0.0, deadline - time.monotonic())
        )
        if not ready:
            raise _Timeout()
        try:
            data, fds, flags, _ = socket.recv_fds(self.sock, MESSAGE_BYTES, 1)
        except OSError as exc:
            raise _Broken(f"cannot read from it: {exc}") from exc
        for fd in fds:
            os.close(fd)
        if not data:
            self.process.join(STOP_TIMEOUT_S)
            raise _Broken(f"it exited (status {self.process.exitcode})")
        if flags & socket.MSG_TRUNC or fds:
            raise _Broken("it sent a malformed message")
        try:
            return _Reply.model_validate_json(data)
        except ValidationError as exc:
            raise _Broken(f"it sent an invalid message ({exc.error_count()} errors)") from None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.join()
        self._close_socket()

    def stop(self) -> None:
        """Close the socket (an idle child exits on its end of file), then kill stragglers."""
        self._close_socket()
        if self.process is not None:
            self.process.join(STOP_TIMEOUT_S)
            if self.process.is_alive():
                self.kill()

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _SharedStore(FrameStore):
    """The child's frame store: asks the parent for shared memory, writes frames into it."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.memory: mmap.mmap | None = None
        self.frames: list[tuple[int, int, int]] = []
        self._offset = 0

    def reserve(self, nbytes: int) -> None:
        _send(self._sock, _Reply(reserve=nbytes))
        data, fds, _flags, _ = socket.recv_fds(self._sock, MESSAGE_BYTES, 1)
        if not data:
            raise SystemExit(0)  # the parent went away
        grant = _Grant.model_validate_json(data)
        if grant.error is not None:
            raise _ERRORS.get(grant.error.code, DecodeFailed)(grant.error.message)
        [fd] = fds
        try:
            if nbytes:
                self.memory = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)

    def put(self, frame: np.ndarray) -> np.ndarray:
        assert self.memory is not None
        height, width = frame.shape[:2]
        view = np.frombuffer(
            self.memory, dtype=np.uint8, count=frame.size, offset=self._offset
        ).reshape(frame.shape)
        view[...] = frame
        self.frames.append((self._offset, height, width))
        self._offset += frame.size
        return view

    def close(self) -> None:
        if self.memory is not None:
            # a view that still lives (in a traceback) keeps the mapping until it goes
            with contextlib.suppress(BufferError):
                self.memory.close()
            self.memory = None


def _send(sock: socket.socket, reply: _Reply) -> None:
    sock.send(reply.model_dump_json(exclude_defaults=True).encode())


def _child_main(sock: socket.socket, target: DecodeTarget) -> None:
    """A decode process: one job at a time until the parent closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when children stop
    _send(sock, _Reply(ready=True))
    while True:
        data, fds, _flags, _ = socket.recv_fds(sock, MESSAGE_BYTES, 1)
        if not data:
            return
        job = DecodeJob.model_validate_json(data)
        store = _SharedStore(sock)
        try:
            reply = _result(target(fds[0] if fds else job.path or "", job, store), store)
        except PipelineError as exc:
            reply = _Reply(error=_Error(code=exc.code, message=exc.message[:MAX_ERROR_CHARS]))
        except Exception as exc:  # anything else is this video's failure, not the process's
            message = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            reply = _Reply(error=_Error(code=DecodeFailed.code, message=message))
        finally:
            for fd in fds:
                os.close(fd)
        store.close()
        _send(sock, reply)


def _result(video: DecodedVideo, store: _SharedStore) -> _Reply:
    if len(video.frames) != len(store.frames):
        raise DecodeFailed("the decoder returned frames it did not store")
    return _Reply(
        done=_Result(
            frames=store.frames,
            indices=video.indices,
            timestamps_s=video.timestamps_s,
            fps=video.fps,
            duration_s=video.duration_s,
            width=video.width,
            height=video.height,
            frames_decoded=video.frames_decoded,
            packets_skipped=video.packets_skipped,
        )
    )
