"""Broker-neutral views of the messages the worker reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Inbound:
    """One consumed message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    defect: str | None = None
    """Why part of the message could not be read (it then goes to the DLQ), or None."""


@dataclass(frozen=True)
class Outbound:
    """One message to produce; the inbound offset is done once all its outbounds are delivered."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)
