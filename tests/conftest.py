"""Shared fixtures: real Kafka + Redis for integration tests, unique topics, and CI's no-skip rule.

Where the services come from, first match wins:
1. env `DFD_TEST_KAFKA_BOOTSTRAP` and `DFD_TEST_REDIS_URL` (.ci/run exports them);
2. testcontainers (Kafka, Redis) when a Docker engine answers;
3. the local stack of the default state dir when it is already up (never stopped by the tests);
4. a private local stack in a temporary dir on free ports, started here and stopped at the end.

Tests that use these fixtures are marked `integration` automatically (and should say so).
Under `CI=true` a skipped integration test fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.local import LocalStack
from deploy.local.topics import TopicSet, private_topics
from producer.topics import create_topics

pytest_plugins = ("pytester",)

KAFKA_ENV = "DFD_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "DFD_TEST_REDIS_URL"
SERVICE_FIXTURES = frozenset(
    {"services", "kafka_bootstrap", "redis_url", "topic_factory", "fresh_topics"}
)


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    redis_url: str


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # no SDK, no socket, no daemon: all mean "no Docker here"
        return False
    return True


@contextmanager
def _container_services() -> Iterator[Services]:
    from testcontainers.community.kafka import KafkaContainer
    from testcontainers.community.redis import RedisContainer

    with KafkaContainer().with_kraft() as kafka, RedisContainer() as redis:
        host, port = redis.get_container_host_ip(), redis.get_exposed_port(6379)
        yield Services(kafka.get_bootstrap_server(), f"redis://{host}:{port}/0")


@contextmanager
def _local_stack_services(state_dir: Path) -> Iterator[Services]:
    shared = LocalStack()
    if shared.status().ready:
        yield Services(shared.kafka_bootstrap, shared.redis_url)
        return
    stack = LocalStack(state_dir, kafka_port=0, controller_port=0, redis_port=0)
    try:
        stack.up()
        yield Services(stack.kafka_bootstrap, stack.redis_url)
    finally:
        stack.down()


@contextmanager
def _open_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    kafka, redis_url = os.environ.get(KAFKA_ENV), os.environ.get(REDIS_ENV)
    if bool(kafka) != bool(redis_url):
        pytest.fail(f"set both {KAFKA_ENV} and {REDIS_ENV}, or neither")
    if kafka and redis_url:
        yield Services(kafka, redis_url)
    elif _docker_answers():
        with _container_services() as found:
            yield found
    else:
        with _local_stack_services(tmp_path_factory.mktemp("local-stack")) as found:
            yield found


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A live Kafka broker and Redis server, with the standard topics created."""
    with _open_services(tmp_path_factory) as found:
        create_topics(found.kafka_bootstrap)
        yield found


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> str:
    return services.kafka_bootstrap


@pytest.fixture(scope="session")
def redis_url(services: Services) -> str:
    return services.redis_url


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[Callable[..., TopicSet]]:
    """`make(partitions=4)` creates a fresh TopicSet; all are deleted after the test."""
    with ExitStack() as made:

        def make(partitions: int = 4) -> TopicSet:
            return made.enter_context(private_topics(kafka_bootstrap, partitions))

        yield make


@pytest.fixture
def fresh_topics(topic_factory: Callable[..., TopicSet]) -> TopicSet:
    """Request/verdict/DLQ topics with a unique suffix and 4 partitions, private to this test."""
    return topic_factory()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if (
        report.skipped
        and _in_ci()
        and item.get_closest_marker("integration") is not None
        and not hasattr(report, "wasxfail")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration test skipped under CI=true, which forbids it: {reason}"
    return report


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped and _in_ci() and "integration" in Path(report.nodeid).parts:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"integration module skipped under CI=true, which forbids it: {reason}"
