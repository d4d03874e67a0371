"""The local stack: one KRaft Kafka node and one Redis server, all state under one directory."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deploy.local.errors import LocalStackError, StartFailed
from deploy.local.kafka_node import KafkaNode, default_libs_dir
from deploy.local.ports import free_port
from deploy.local.redis_node import RedisNode
from producer.topics import create_topics

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KAFKA_PORT = 19092
DEFAULT_REDIS_PORT = 16379
KAFKA_PORT_ENV = "DFD_LOCAL_KAFKA_PORT"
CONTROLLER_PORT_ENV = "DFD_LOCAL_KAFKA_CONTROLLER_PORT"
REDIS_PORT_ENV = "DFD_LOCAL_REDIS_PORT"
STATE_DIR_ENV = "DFD_LOCAL_STATE_DIR"


def default_state_dir() -> Path:
    """`$DFD_LOCAL_STATE_DIR`, else `<repo>/.dfd/local`."""
    return Path(os.environ.get(STATE_DIR_ENV) or REPO_ROOT / ".dfd" / "local")


@dataclass(frozen=True)
class ServiceStatus:
    """One service: its pid when this stack runs it, and whether it answers."""

    pid: int | None
    ready: bool
    address: str


@dataclass(frozen=True)
class StackStatus:
    kafka: ServiceStatus
    redis: ServiceStatus

    @property
    def ready(self) -> bool:
        """Both services run and answer."""
        return self.kafka.ready and self.redis.ready

    def to_dict(self) -> dict[str, object]:
        return {"ready": self.ready, **asdict(self)}


@dataclass(frozen=True)
class UpResult:
    started: list[str]
    topics_created: list[str]


@dataclass(frozen=True)
class _Ports:
    kafka: int
    controller: int
    redis: int


class LocalStack:
    """Start, stop and inspect the local Kafka + Redis stack kept in `state_dir`.

    Ports: an argument wins, then the env vars `DFD_LOCAL_KAFKA_PORT`,
    `DFD_LOCAL_KAFKA_CONTROLLER_PORT`, `DFD_LOCAL_REDIS_PORT`, then the ports recorded by the last
    `up` in this state dir, then 19092 / Kafka port + 1 / 16379. Port 0 picks a free port.
    """

    def __init__(
        self,
        state_dir: Path | None = None,
        kafka_port: int | None = None,
        controller_port: int | None = None,
        redis_port: int | None = None,
        kafka_libs: Path | None = None,
    ) -> None:
        self.state_dir = state_dir or default_state_dir()
        self._ports_file = self.state_dir / "ports.json"
        ports = self._resolve_ports(kafka_port, controller_port, redis_port)
        libs = kafka_libs or default_libs_dir()
        self.kafka = KafkaNode(self.state_dir / "kafka", ports.kafka, ports.controller, libs)
        self.redis = RedisNode(self.state_dir / "redis", ports.redis)

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def up(self, partitions: int = 4, timeout_s: float = 180.0) -> UpResult:
        """Start whatever is not running, wait until both answer, create the topics (idempotent)."""
        self._check_running_ports()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._ports_file.write_text(
            json.dumps(asdict(_Ports(self.kafka.port, self.kafka.controller_port, self.redis.port)))
        )
        started = [
            name
            for name, start in (("redis", self.start_redis), ("kafka", self.start_kafka))
            if start(timeout_s)
        ]
        self._wait_ready(timeout_s)
        created = create_topics(
            self.kafka_bootstrap, partitions=partitions, timeout_s=30.0, config={"logger": log}
        )
        return UpResult(started=started, topics_created=created)

    def down(self) -> list[str]:
        """Stop what this state dir's `up` started; returns the names of the stopped services."""
        return [
            name
            for name, stop in (("redis", self.stop_redis), ("kafka", self.stop_kafka))
            if stop()
        ]

    def status(self) -> StackStatus:
        """Pids of the services this state dir runs, and whether their ports answer."""
        return StackStatus(
            kafka=ServiceStatus(self.kafka.pid(), self.kafka.is_ready(), self.kafka_bootstrap),
            redis=ServiceStatus(self.redis.pid(), self.redis.is_ready(), self.redis_url),
        )

    def start_kafka(self, timeout_s: float = 120.0) -> bool:
        """Start the broker (same ports, data kept); False when it was already running."""
        return self.kafka.start(timeout_s)

    def stop_kafka(self, kill: bool = False) -> bool:
        """Stop the broker; `kill` simulates a crash (SIGKILL)."""
        return self.kafka.stop(kill=kill)

    def start_redis(self, timeout_s: float = 30.0) -> bool:
        """Start Redis (empty: nothing is persisted); False when it was already running."""
        return self.redis.start(timeout_s)

    def stop_redis(self, kill: bool = False) -> bool:
        """Stop Redis; `kill` simulates a crash (SIGKILL)."""
        return self.redis.stop(kill=kill)

    def _resolve_ports(
        self, kafka_port: int | None, controller_port: int | None, redis_port: int | None
    ) -> _Ports:
        recorded = self._recorded_ports()
        kafka = _pick(kafka_port, KAFKA_PORT_ENV, recorded and recorded.kafka, DEFAULT_KAFKA_PORT)
        controller = _pick(
            controller_port,
            CONTROLLER_PORT_ENV,
            recorded and recorded.controller,
            kafka + 1 if kafka else 0,
        )
        redis = _pick(redis_port, REDIS_PORT_ENV, recorded and recorded.redis, DEFAULT_REDIS_PORT)
        return _Ports(kafka or free_port(), controller or free_port(), redis or free_port())

    def _recorded_ports(self) -> _Ports | None:
        if not self._ports_file.exists():
            return None
        return _Ports(**json.loads(self._ports_file.read_text()))

    def _check_running_ports(self) -> None:
        recorded = self._recorded_ports()
        if recorded is None:
            return
        if self.kafka.pid() is not None and (self.kafka.port, self.kafka.controller_port) != (
            recorded.kafka,
            recorded.controller,
        ):
            raise LocalStackError(
                f"Kafka already runs on port {recorded.kafka} from {self.state_dir}: run down first"
            )
        if self.redis.pid() is not None and self.redis.port != recorded.redis:
            raise LocalStackError(
                f"Redis already runs on port {recorded.redis} from {self.state_dir}: run down first"
            )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not (status := self.status()).ready:
            if time.monotonic() > deadline:
                raise StartFailed(f"the stack did not answer within {timeout_s:.0f}s: {status}")
            time.sleep(0.25)


def _pick(explicit: int | None, env_name: str, recorded: int | None, default: int) -> int:
    if explicit is not None:
        return explicit
    if env_value := os.environ.get(env_name):
        return int(env_value)
    return recorded if recorded is not None else default
