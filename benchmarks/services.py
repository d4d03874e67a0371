"""Kafka + Redis for the end-to-end benchmarks: given ones, or a private local stack."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local import LocalStack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    """A live broker and Redis; `stack` is set when this run started them (drills need it)."""

    kafka_bootstrap: str
    redis_url: str
    stack: LocalStack | None = None


@contextmanager
def open_services(
    workdir: Path, kafka: str | None, redis_url: str | None, *, own: bool = False
) -> Iterator[Services]:
    """The given services, or (when none are given or `own` is set) a private local stack on
    free ports under `workdir`, stopped at the end."""
    if kafka and redis_url and not own:
        yield Services(kafka, redis_url)
        return
    stack = LocalStack(workdir / "stack", kafka_port=0, controller_port=0, redis_port=0)
    log.info("starting a private local stack in %s", stack.state_dir)
    try:
        stack.up()
        yield Services(stack.kafka_bootstrap, stack.redis_url, stack)
    finally:
        stack.down()
