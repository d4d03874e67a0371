"""The running cost of decoding one video, checked against its `DecodeLimits`."""

from __future__ import annotations

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
