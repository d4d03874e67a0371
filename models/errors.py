"""Typed errors of the ML core. Each carries a stable `code` (the verdict contract's codes)."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a video could not be turned into a prediction."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(PipelineError):
    code = "NOT_FOUND"


class TooLarge(PipelineError):
    code = "TOO_LARGE"


class NotAVideo(PipelineError):
    code = "NOT_A_VIDEO"


class DecodeFailed(PipelineError):
    code = "DECODE_FAILED"


class NoFrames(PipelineError):
    code = "NO_FRAMES"


class NoFace(PipelineError):
    code = "NO_FACE"


class LimitExceeded(PipelineError):
    code = "LIMIT_EXCEEDED"


class DecodeTimeout(PipelineError):
    code = "TIMEOUT"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupted, of an unknown version or inconsistent."""


class WeightsError(Exception):
    """Pretrained weights were asked for but cannot be found or loaded."""
