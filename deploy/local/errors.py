"""Typed errors of the local stack, each with a stable `code`."""

from __future__ import annotations


class LocalStackError(Exception):
    """Base class: the local Kafka + Redis stack could not be managed."""

    code = "LOCAL_STACK"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MissingTool(LocalStackError):
    """A required program (java, mvn, redis-server) is not installed."""

    code = "MISSING_TOOL"


class PortInUse(LocalStackError):
    """A port the stack wants to listen on is taken by another process."""

    code = "PORT_IN_USE"


class StartFailed(LocalStackError):
    """A service process exited or never answered while starting."""

    code = "START_FAILED"


class FetchFailed(LocalStackError):
    """Maven could not copy the Kafka jars."""

    code = "FETCH_FAILED"


class WorkerFailed(LocalStackError):
    """A worker subprocess exited, did not become ready, or a wait for it timed out."""

    code = "WORKER_FAILED"
