"""One worker against the real broker and Redis: verdicts, error codes, cache, DLQ, metrics."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from deploy import check
from deploy.local.topics import TopicSet, private_topics
from deploy.local.worker_process import WorkerProcess
from models.errors import PipelineError
from models.pipeline import Detector
from producer.contracts import ErrorCode, VideoRequest
from tests.checkpoints import make_checkpoint
from tests.integration.workers import (
    VerdictLog,
    publish,
    publish_raw,
    read_topic,
    requests_for,
    unique,
    worker_env,
    write_clips,
)

pytestmark = pytest.mark.integration

torch.set_num_threads(1)

FAMILIES = (
    "dfd_requests_total",
    "dfd_dlq_messages_total",
    "dfd_frames_decoded_total",
    "dfd_frames_sampled_total",
    "dfd_faces_found_total",
    "dfd_cache_hits_total",
    "dfd_cache_misses_total",
    "dfd_cache_errors_total",
    "dfd_stage_seconds_bucket",
    "dfd_request_seconds_bucket",
    "dfd_batch_size_bucket",
    "dfd_inflight_requests",
    "dfd_paused_partitions",
    "dfd_consumer_lag",
    "dfd_assigned_partitions",
    "dfd_model_info",
)


@dataclass
class Served:
    worker: WorkerProcess
    topics: TopicSet
    bootstrap: str
    clips: list[Path]
    root: Path
    detector: Detector
    verdicts: VerdictLog


@pytest.fixture(scope="module")
def served(
    kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("worker")
    checkpoint = make_checkpoint(base / "tiny.pt")
    root = base / "videos"
    clips = write_clips(root, 12, salt=uuid.uuid4().int % 10_000)
    with private_topics(kafka_bootstrap, partitions=2) as topics:
        env = worker_env(
            kafka_bootstrap, topics, unique("group"), checkpoint, [root], redis_url=redis_url
        )
        worker = WorkerProcess("solo", base / "logs", env)
        verdicts = VerdictLog(kafka_bootstrap, topics.verdicts)
        try:
            worker.wait_ready()
            yield Served(
                worker, topics, kafka_bootstrap, clips, root, Detector.load(checkpoint), verdicts
            )
        finally:
            verdicts.close()
            if worker.popen.poll() is None:
                worker.kill()


def expected_code(detector: Detector, path: Path) -> str:
    try:
        detector.predict_file(path)
    except PipelineError as exc:
        return exc.code
    raise AssertionError(f"{path} unexpectedly decodes")


def test_thirty_requests_get_exactly_thirty_verdicts(served: Served) -> None:
    root = served.root
    (root / "notes.txt").write_text("this is not a video\n" * 50)
    truncated = root / "truncated.mp4"
    truncated.write_bytes(served.clips[0].read_bytes()[: served.clips[0].stat().st_size // 3])
    good = requests_for(served.clips + served.clips, "good")  # 24, each clip twice
    bad = {
        "missing": ((root / "missing.mp4").as_uri(), ErrorCode.NOT_FOUND),
        "outside": ("file:///etc/hostname", ErrorCode.URI_NOT_ALLOWED),
        "text": ((root / "notes.txt").as_uri(), ErrorCode.NOT_A_VIDEO),
        "truncated": (truncated.as_uri(), ErrorCode(expected_code(served.detector, truncated))),
        "http": ("https://example.com/video.mp4", ErrorCode.URI_NOT_ALLOWED),
    }
    bad_requests = [
        VideoRequest(request_id=f"bad-{name}", video_uri=uri) for name, (uri, _) in bad.items()
    ]
    publish(served.bootstrap, served.topics.requests, good + bad_requests)
    unsupported = {"schema_version": 1, "request_id": "bad-scheme", "video_uri": "ftp://h/x.mp4"}
    publish_raw(served.bootstrap, served.topics.requests, [json.dumps(unsupported).encode()])

    ids = [r.request_id for r in good + bad_requests] + ["bad-scheme"]
    assert len(ids) == 30
    answers = served.verdicts.wait_for(ids)
    assert set(answers) == set(ids)

    expected = {path: served.detector.predict_file(path) for path in served.clips}
    for request in good:
        verdict = answers[request.request_id]
        prediction = expected[Path(request.video_uri.removeprefix("file://"))]
        assert verdict.status == "ok", verdict.error
        assert verdict.fake_probability == pytest.approx(prediction.fake_probability, abs=1e-4)
        assert verdict.members == pytest.approx(prediction.members, abs=1e-4)
        assert verdict.label == prediction.label
        assert verdict.metadata == request.metadata
        assert verdict.worker_id == "solo"
        assert verdict.cache in ("miss", "hit")
    for name, (_uri, code) in bad.items():
        verdict = answers[f"bad-{name}"]
        assert verdict.status == "error"
        assert verdict.error is not None and verdict.error.code is code, (name, verdict.error)
    scheme = answers["bad-scheme"]
    assert scheme.error is not None and scheme.error.code is ErrorCode.UNSUPPORTED_SCHEME


def test_same_videos_again_hit_the_cache(served: Served) -> None:
    first = requests_for(served.clips, unique("first"))
    publish(served.bootstrap, served.topics.requests, first)
    before = served.verdicts.wait_for(r.request_id for r in first)
    hits, misses = (
        served.worker.metric("dfd_cache_hits_total"),
        served.worker.metric("dfd_cache_misses_total"),
    )
    again = requests_for(served.clips, unique("again"))
    publish(served.bootstrap, served.topics.requests, again)
    after = served.verdicts.wait_for(r.request_id for r in again)
    for old, new in zip(first, again, strict=True):
        hit, earlier = after[new.request_id], before[old.request_id]
        assert hit.cache == "hit"
        assert "classify" not in hit.timings_ms  # the prediction itself came from the cache
        assert hit.fake_probability == earlier.fake_probability  # exactly
        assert (hit.members, hit.frames, hit.label) == (
            earlier.members,
            earlier.frames,
            earlier.label,
        )
    assert served.worker.metric("dfd_cache_hits_total") == hits + len(again)
    assert served.worker.metric("dfd_cache_misses_total") == misses


def test_poison_messages_go_to_the_dlq_and_the_worker_keeps_going(served: Served) -> None:
    wrong_schema = json.dumps({"schema_version": 1, "request_id": "poison-1", "video_uri": 7})
    poison = [
        b"this is not json",
        wrong_schema.encode(),
        b'{"schema_version": 1, "request_id": "' + b"x" * 70_000 + b'"}',
        bytes(range(256)) * 4,
        b'{"a":' * 5000,  # these three used to kill every worker of the group
        b"[" * 2000,
        b"9" * 5000,
    ]
    publish_raw(served.bootstrap, served.topics.requests, poison)
    after = requests_for(served.clips[:1], unique("after-poison"))
    publish(served.bootstrap, served.topics.requests, after)

    answers = served.verdicts.wait_for(["poison-1", after[0].request_id])
    assert answers[after[0].request_id].status == "ok"
    assert answers["poison-1"].error is not None
    assert answers["poison-1"].error.code is ErrorCode.INVALID_REQUEST

    dead = read_topic(served.bootstrap, served.topics.dlq, len(poison) + 1)
    bodies = {message.value(): dict(message.headers()) for message in dead}
    for raw in poison:
        headers = bodies[raw]
        assert headers["dfd-error-code"] == b"INVALID_REQUEST"
        assert headers["dfd-error-message"]
        assert headers["dfd-original-topic"] == served.topics.requests.encode()
        assert int(headers["dfd-original-partition"]) in (0, 1)
        assert int(headers["dfd-original-offset"]) >= 0
        assert headers["source"] == b"test"
    assert served.worker.popen.poll() is None


def test_metrics_and_probes(served: Served) -> None:
    samples = served.worker.metrics()
    names = {key.split("{", 1)[0] for key in samples}
    assert set(FAMILIES) <= names, set(FAMILIES) - names
    assert served.worker.metric("dfd_assigned_partitions") == 2
    assert served.worker.metric("dfd_ready") == 1
    assert served.worker.get("/healthz")[0] == 200
    assert served.worker.get("/readyz")[0] == 200
    spec = served.detector.spec
    assert (
        served.worker.metric(
            "dfd_model_info", name=spec.name, version=spec.version, spec_hash=spec.spec_hash
        )
        == 1
    )


def test_alerts_and_dashboards_read_only_what_a_live_worker_exports(served: Served) -> None:
    status, exposition = served.worker.get("/metrics")
    assert status == 200
    assert check.unknown_metrics(check.exposed_names(exposition)) == {}
