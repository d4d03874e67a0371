"""The producer CLI and library against the real broker, plus interop with kcat."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from producer.client import VerdictReader, await_verdicts
from producer.contracts import Verdict, parse_request, utcnow
from producer.topics import create_topics

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "schemas" / "examples"


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = f"test-producer-{uuid.uuid4().hex[:12]}"
    create_topics(kafka_bootstrap, partitions=2, topics=[name])
    return name


def read_all(bootstrap: str, topic: str, count: int, timeout: float = 30) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    messages = []
    try:
        for _ in range(int(timeout * 2)):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                messages.append(message)
            if len(messages) >= count:
                break
    finally:
        consumer.close()
    return messages


def make_verdict(request_id: str, probability: float = 0.75) -> Verdict:
    return Verdict(
        request_id=request_id,
        video_uri=f"file:///v/{request_id}.mp4",
        status="ok",
        label="fake" if probability >= 0.5 else "real",
        fake_probability=probability,
        threshold=0.5,
        worker_id="test",
        completed_at=utcnow(),
    )


def produce_verdicts(bootstrap: str, topic: str, verdicts: list[Verdict]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for verdict in verdicts:
        producer.produce(topic, key=verdict.request_id.encode(), value=verdict.to_bytes())
    assert producer.flush(30) == 0


def test_submit_publishes_valid_requests_keyed_by_id(kafka_bootstrap, topic, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not really a video, the producer does not care")
    result = run_cli(
        "submit",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
        "--sha256",
        "--metadata",
        "uploader=tests",
        "k=v",
        "--",
        str(video),
        "https://cdn.example/a.mp4",
    )
    # --sha256 refuses remote URIs: nothing is published for a half-valid batch
    assert result.returncode == 2 and "needs a local file" in result.stderr

    result = run_cli(
        "submit",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
        "--sha256",
        "--metadata",
        "uploader=tests",
        "--",
        str(video),
    )
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["video_uri"] == video.resolve().as_uri()
    assert line["topic"] == topic and line["offset"] >= 0

    [message] = read_all(kafka_bootstrap, topic, 1)
    request = parse_request(message.value())
    assert message.key().decode() == request.request_id == line["request_id"]
    assert request.metadata == {"uploader": "tests"}
    assert request.sha256 is not None and len(request.sha256) == 64
    assert (message.partition(), message.offset()) == (line["partition"], line["offset"])


def test_results_waits_for_the_named_ids(kafka_bootstrap, topic):
    produce_verdicts(kafka_bootstrap, topic, [make_verdict("a"), make_verdict("b", 0.1)])
    result = run_cli(
        "results",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
        "--from-beginning",
        "--request-id",
        "a",
        "b",
        "--timeout",
        "30",
    )
    assert result.returncode == 0, result.stderr
    ids = sorted(json.loads(line)["request_id"] for line in result.stdout.splitlines())
    assert ids == ["a", "b"]


def test_results_names_missing_ids_on_timeout(kafka_bootstrap, topic):
    produce_verdicts(kafka_bootstrap, topic, [make_verdict("present")])
    result = run_cli(
        "results",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
        "--from-beginning",
        "--request-id",
        "present",
        "absent",
        "--timeout",
        "3",
    )
    assert result.returncode != 0
    assert "absent" in result.stderr and "present" not in result.stderr
    assert json.loads(result.stdout)["request_id"] == "present"


def test_library_reader_sees_verdicts_produced_after_it_started(kafka_bootstrap, topic):
    started = utcnow()
    produce_verdicts(kafka_bootstrap, topic, [make_verdict("late")])
    with VerdictReader(kafka_bootstrap, topic=topic, start=started) as reader:
        found = await_verdicts(reader, ["late"], timeout_s=30)
    assert found["late"].fake_probability == 0.75


def test_unreachable_broker_fails_fast_with_a_clear_message(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"x")
    result = run_cli(
        "submit", "--bootstrap-servers", "127.0.0.1:9", "--timeout", "3", str(video), timeout=60
    )
    assert result.returncode == 1
    assert "did not answer within 3s" in result.stderr


def test_topics_command_is_idempotent(kafka_bootstrap):
    first = run_cli("topics", "--bootstrap-servers", kafka_bootstrap, "--partitions", "4")
    second = run_cli("topics", "--bootstrap-servers", kafka_bootstrap)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads(second.stdout) == {"created": []}


KCAT = shutil.which("kcat") or shutil.which("kafkacat")


@pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat)")
def test_kcat_request_is_accepted_and_kcat_reads_our_verdict(kafka_bootstrap, topic):
    example = (EXAMPLE / "video-request.json").read_text().strip()
    subprocess.run(
        [KCAT, "-b", kafka_bootstrap, "-t", topic, "-P", "-k", "kcat-example-0001"],
        input=example,
        text=True,
        check=True,
        timeout=30,
    )
    [message] = read_all(kafka_bootstrap, topic, 1)
    assert parse_request(message.value()).request_id == "kcat-example-0001"

    verdict_topic = f"{topic}-verdicts"
    create_topics(kafka_bootstrap, partitions=1, topics=[verdict_topic])
    verdict = make_verdict("kcat-example-0001")
    produce_verdicts(kafka_bootstrap, verdict_topic, [verdict])
    out = subprocess.run(
        [
            KCAT,
            "-b",
            kafka_bootstrap,
            "-t",
            verdict_topic,
            "-C",
            "-o",
            "beginning",
            "-e",
            "-c",
            "1",
            "-f",
            "%k\t%s\n",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    key, value = out.stdout.rstrip("\n").split("\t", 1)
    assert key == "kcat-example-0001"
    assert Verdict.model_validate_json(value) == verdict


def test_topic_partitions_are_as_requested(kafka_bootstrap, topic):
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    finally:
        consumer.close()
    assert len(partitions) == 2 and low == high == 0
