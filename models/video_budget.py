"""The running cost of decoding one video, checked against its `DecodeLimits`, and the memory
budget all the videos a process decodes share."""

from __future__ import annotations

import threading
import time

from models.errors import DecodeTimeout, LimitExceeded
from models.spec import DecodeLimits


class DecodeBudget:
    """Counts decoded frames and skipped packets; raises a typed error when a limit is passed.

    The wall-time budget starts when the object is created.
    """

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_wall_s
        self.frames_decoded = 0
        self.packets_skipped = 0
        self.read_errors = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise DecodeTimeout(f"decoding took longer than {self.limits.max_wall_s:g} s")

    def check_pixels(self, width: int, height: int) -> None:
        if width * height > self.limits.max_pixels:
            raise LimitExceeded(
                f"frame size {width}x{height} is over the limit of {self.limits.max_pixels} pixels"
            )

    def check_duration(self, duration_s: float) -> None:
        if duration_s > self.limits.max_duration_s:
            raise LimitExceeded(
                f"duration {duration_s:.3f} s is over the limit of {self.limits.max_duration_s:g} s"
            )

    def count_frame(self, width: int, height: int, elapsed_s: float) -> None:
        """Account for one decoded frame of `width`x`height` shown `elapsed_s` after the start."""
        self.frames_decoded += 1
        if self.frames_decoded > self.limits.max_decoded_frames:
            raise LimitExceeded(
                f"more than {self.limits.max_decoded_frames} frames had to be decoded"
            )
        self.check_pixels(width, height)
        self.check_duration(elapsed_s)
        self.check_time()


class MemoryBudget:
    """Bytes of decoded frames held at once by all the videos of one process (thread-safe).

    A video reserves its frames' bytes before they are decoded and releases them when its frames
    are no longer needed. A reservation waits while others hold the budget; one larger than the
    whole budget is refused at once.
    """

    def __init__(self, total_bytes: int) -> None:
        if total_bytes < 1:
            raise ValueError(f"a memory budget needs at least one byte, got {total_bytes}")
        self.total_bytes = total_bytes
        self._in_use = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        """Bytes reserved now."""
        return self._in_use

    def acquire(self, nbytes: int, deadline: float) -> None:
        """Reserve `nbytes`, waiting until `deadline` (time.monotonic()) for others to release.

        Raises `LimitExceeded` when `nbytes` is over the whole budget and `DecodeTimeout` when the
        deadline passes first.
        """
        if nbytes > self.total_bytes:
            raise LimitExceeded(
                f"the sampled frames take {nbytes} bytes, over the decode memory budget of "
                f"{self.total_bytes}"
            )
        with self._changed:
            while self._in_use + nbytes > self.total_bytes:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DecodeTimeout("timed out waiting for decode memory")
                self._changed.wait(remaining)
            self._in_use += nbytes

    def release(self, nbytes: int) -> None:
        """Give back bytes an `acquire` reserved."""
        with self._changed:
            self._in_use -= nbytes
            self._changed.notify_all()
