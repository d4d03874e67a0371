"""The local Kafka + Redis stack: it answers, `up` is idempotent, status/down/restarts work."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.local import LocalStack
from deploy.local.daemons import Daemon, process_start_ticks
from deploy.local.errors import PortInUse
from deploy.local.kafka_node import render_server_properties
from deploy.local.ports import ensure_free, free_port
from producer.contracts import DLQ_TOPIC, REQUESTS_TOPIC, VERDICTS_TOPIC
from producer.topics import create_topics

STANDARD_TOPICS = {REQUESTS_TOPIC, VERDICTS_TOPIC, DLQ_TOPIC}


def produce(bootstrap: str, topic: str, records: dict[bytes, bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in records.items():
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def consume(bootstrap: str, topic: str, count: int, max_polls: int = 120) -> dict[bytes, bytes]:
    """Read `count` records from the start of every partition (no consumer group needed)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False}
    )
    partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    received: dict[bytes, bytes] = {}
    try:
        for _ in range(max_polls):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                received[message.key()] = message.value()
            if len(received) >= count:
                break
    finally:
        consumer.close()
    return received


def topic_partitions(bootstrap: str) -> dict[str, int]:
    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def run_cli(*args: str) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-m", "deploy.local", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A private stack on free ports, so its services can be stopped and restarted freely."""
    stack = LocalStack(
        tmp_path_factory.mktemp("own-stack"), kafka_port=0, controller_port=0, redis_port=0
    )
    try:
        result = stack.up(partitions=2)
        assert result.started == ["redis", "kafka"]
        assert set(result.topics_created) == STANDARD_TOPICS
        yield stack
    finally:
        stack.down()


@pytest.mark.integration
def test_kafka_round_trip(kafka_bootstrap: str, fresh_topics) -> None:
    records = {f"req-{i}".encode(): f"payload-{i}".encode() for i in range(5)}
    produce(kafka_bootstrap, fresh_topics.requests, records)
    assert consume(kafka_bootstrap, fresh_topics.requests, len(records)) == records
    assert topic_partitions(kafka_bootstrap)[fresh_topics.verdicts] == 4


@pytest.mark.integration
def test_redis_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"test:{uuid.uuid4().hex}"
    try:
        assert client.set(key, b"\x00value", ex=60)
        assert client.get(key) == b"\x00value"
    finally:
        client.delete(key)
        client.close()


@pytest.mark.integration
def test_up_creates_standard_topics(own_stack: LocalStack) -> None:
    partitions = topic_partitions(own_stack.kafka_bootstrap)
    assert {name: partitions[name] for name in STANDARD_TOPICS} == dict.fromkeys(STANDARD_TOPICS, 2)


@pytest.mark.integration
def test_up_is_idempotent(own_stack: LocalStack) -> None:
    before = own_stack.status()
    result = own_stack.up(partitions=2)
    assert result.started == []
    assert result.topics_created == []
    after = own_stack.status()
    assert after.ready
    assert (after.kafka.pid, after.redis.pid) == (before.kafka.pid, before.redis.pid)


@pytest.mark.integration
def test_status_cli_reads_the_recorded_ports(own_stack: LocalStack) -> None:
    code, report = run_cli("status", "--state-dir", str(own_stack.state_dir))
    assert code == 0
    assert report["ready"] is True
    assert report["kafka_bootstrap"] == own_stack.kafka_bootstrap
    assert report["redis_url"] == own_stack.redis_url


@pytest.mark.integration
def test_kafka_restart_keeps_data(own_stack: LocalStack) -> None:
    topic = f"restart-{uuid.uuid4().hex[:12]}"
    create_topics(own_stack.kafka_bootstrap, partitions=1, topics=[topic])
    produce(own_stack.kafka_bootstrap, topic, {b"k": b"before restart"})
    old_pid = own_stack.status().kafka.pid

    assert own_stack.stop_kafka(kill=True)
    stopped = own_stack.status()
    assert (stopped.kafka.pid, stopped.kafka.ready, stopped.redis.ready) == (None, False, True)
    assert process_start_ticks(old_pid) is None

    assert own_stack.start_kafka()
    assert own_stack.status().ready
    assert consume(own_stack.kafka_bootstrap, topic, 1) == {b"k": b"before restart"}


@pytest.mark.integration
def test_redis_restart_starts_empty(own_stack: LocalStack) -> None:
    client = redis.Redis.from_url(own_stack.redis_url, retry=Retry(NoBackoff(), 0))
    client.set("survives", b"no")
    assert own_stack.stop_redis()
    assert not own_stack.status().redis.ready
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert own_stack.start_redis()
    assert client.get("survives") is None
    client.close()


@pytest.mark.integration
def test_down_then_up(own_stack: LocalStack) -> None:
    pids = own_stack.status()
    assert own_stack.down() == ["redis", "kafka"]
    assert process_start_ticks(pids.kafka.pid) is None
    assert process_start_ticks(pids.redis.pid) is None
    assert own_stack.down() == []
    code, report = run_cli("status", "--state-dir", str(own_stack.state_dir))
    assert (code, report["ready"]) == (1, False)

    code, report = run_cli("up", "--state-dir", str(own_stack.state_dir), "--partitions", "2")
    assert code == 0
    assert (report["started"], report["topics_created"]) == (["redis", "kafka"], [])
    assert own_stack.status().ready


def test_ports_resolve_argument_then_env_then_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DFD_LOCAL_KAFKA_PORT", raising=False)
    monkeypatch.delenv("DFD_LOCAL_KAFKA_CONTROLLER_PORT", raising=False)
    monkeypatch.setenv("DFD_LOCAL_REDIS_PORT", "26379")
    stack = LocalStack(tmp_path, kafka_libs=tmp_path)
    assert (stack.kafka.port, stack.kafka.controller_port, stack.redis.port) == (
        19092,
        19093,
        26379,
    )

    (tmp_path / "ports.json").write_text(
        json.dumps({"kafka": 29092, "controller": 29093, "redis": 29379})
    )
    recorded = LocalStack(tmp_path, kafka_libs=tmp_path)
    assert (recorded.kafka_bootstrap, recorded.redis_url) == (
        "127.0.0.1:29092",
        "redis://127.0.0.1:26379/0",
    )
    explicit = LocalStack(tmp_path, kafka_port=39092, redis_port=39379, kafka_libs=tmp_path)
    assert (explicit.kafka.port, explicit.kafka.controller_port, explicit.redis.port) == (
        39092,
        29093,
        39379,
    )


def test_free_ports_are_picked_for_zero(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path, kafka_port=0, controller_port=0, redis_port=0, kafka_libs=tmp_path)
    ports = {stack.kafka.port, stack.kafka.controller_port, stack.redis.port}
    assert 0 not in ports
    for port in ports:
        ensure_free(port, "test")


def test_ensure_free_rejects_a_bound_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen()
        with pytest.raises(PortInUse) as raised:
            ensure_free(sock.getsockname()[1], "test")
    assert raised.value.code == "PORT_IN_USE"


def test_stale_pid_file_is_ignored_and_removed(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    daemon = Daemon("x", pid_file, tmp_path / "x.log")
    own_ticks = process_start_ticks(1)
    assert own_ticks is not None
    pid_file.write_text(json.dumps({"pid": 1, "start_ticks": own_ticks + 1}))
    assert daemon.pid() is None
    assert not pid_file.exists()
    assert daemon.stop() is False


def test_daemon_start_and_stop(tmp_path: Path) -> None:
    daemon = Daemon("sleeper", tmp_path / "s.pid", tmp_path / "s.log")
    pid = daemon.start(["sleep", "60"], cwd=tmp_path)
    assert daemon.pid() == pid
    assert Daemon("sleeper", tmp_path / "s.pid", tmp_path / "s.log").pid() == pid
    assert daemon.stop(timeout_s=10)
    assert process_start_ticks(pid) is None
    assert daemon.pid() is None


def test_server_properties_are_single_node(tmp_path: Path) -> None:
    text = render_server_properties(19092, 19093, tmp_path / "data")
    settings = dict(line.split("=", 1) for line in text.splitlines())
    assert settings["process.roles"] == "broker,controller"
    assert settings["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert settings["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert settings["offsets.topic.replication.factor"] == "1"
    assert settings["transaction.state.log.replication.factor"] == "1"
    assert settings["transaction.state.log.min.isr"] == "1"
    assert settings["group.initial.rebalance.delay.ms"] == "0"
    assert settings["log.dirs"] == str(tmp_path / "data")


SKIPPING_TESTS = """
import pytest

@pytest.mark.integration
def test_needs_broker():
    pytest.skip("no broker")

def test_unit():
    pytest.skip("optional dependency missing")
"""


def run_with_our_conftest(pytester: pytest.Pytester) -> pytest.RunResult:
    """Run SKIPPING_TESTS under a copy of tests/conftest.py in a scratch dir."""
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    integration: needs services\n")
    pytester.makepyfile(test_skips=SKIPPING_TESTS)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


def test_skipped_integration_test_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = run_with_our_conftest(pytester)
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*integration test skipped under CI=true*no broker*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_skipped_integration_test_is_a_skip_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = run_with_our_conftest(pytester)
    result.assert_outcomes(skipped=2)
    assert result.ret == pytest.ExitCode.OK
