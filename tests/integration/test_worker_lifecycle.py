"""Worker lifecycle against the real broker: fail-fast startup, SIGTERM drain, SIGKILL recovery."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks.hostile import set_max_message_bytes
from deploy.local.ports import free_port
from deploy.local.worker_process import REPO, WorkerProcess, wait_until
from producer.contracts import parse_verdict
from tests.checkpoints import make_checkpoint
from tests.integration.workers import (
    VerdictLog,
    committed_offsets,
    publish,
    read_topic,
    requests_for,
    unique,
    worker_env,
    write_clips,
)
from worker.loop.delivery import DLQ_DELIVERY_ERROR, DLQ_INTENDED_TOPIC

EXIT_STARTUP = 2


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    base = tmp_path_factory.mktemp("lifecycle")
    root = base / "videos"
    return make_checkpoint(base / "tiny.pt"), root, write_clips(root, 8, salt=7)


def run_worker(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker"],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "DFD_METRICS_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_missing_checkpoint_fails_fast(tmp_path: Path) -> None:
    result = run_worker(
        {"DFD_CHECKPOINT": str(tmp_path / "absent.pt"), "DFD_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    )
    assert result.returncode == EXIT_STARTUP
    assert "checkpoint not found" in result.stderr


def test_incompatible_checkpoint_fails_fast(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"definitely not a checkpoint" * 100)
    result = run_worker({"DFD_CHECKPOINT": str(broken), "DFD_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == EXIT_STARTUP
    assert "cannot load checkpoint" in result.stderr


def test_unreachable_broker_fails_fast_and_is_never_ready(
    tmp_path: Path, assets: tuple[Path, Path, list[Path]]
) -> None:
    checkpoint, _root, _clips = assets
    env = {
        "DFD_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
        "DFD_CHECKPOINT": str(checkpoint),
        "DFD_STARTUP_TIMEOUT_S": "5",
    }
    worker = WorkerProcess("unreachable", tmp_path, env)
    answers: list[int] = []

    def exited() -> bool:
        with contextlib.suppress(OSError):
            answers.append(worker.get("/readyz")[0])
        return worker.popen.poll() is not None

    wait_until(exited, 300, "the worker to give up")
    assert worker.popen.returncode == EXIT_STARTUP
    assert 503 in answers
    assert 200 not in answers
    assert "Kafka broker unreachable" in worker.log()


def test_sigterm_drains_commits_and_nothing_is_redelivered(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Any],
    assets: tuple[Path, Path, list[Path]],
    tmp_path: Path,
) -> None:
    checkpoint, root, clips = assets
    topics = topic_factory(partitions=1)
    group = unique("group")
    env = worker_env(kafka_bootstrap, topics, group, checkpoint, [root], max_inflight="4")
    requests = requests_for(clips * 3, unique("term"))
    ids = [r.request_id for r in requests]
    verdicts = VerdictLog(kafka_bootstrap, topics.verdicts)
    try:
        first = WorkerProcess("first", tmp_path, env)
        first.wait_ready()
        publish(kafka_bootstrap, topics.requests, requests)
        verdicts.wait_count(1)
        assert first.terminate() == 0, first.log()
        stopped = [r for r in first.log_records() if r.get("msg") == "stopped"]
        assert stopped and stopped[0]["abandoned"] == 0

        [committed] = committed_offsets(kafka_bootstrap, group, topics.requests, 1)
        assert 1 <= committed <= len(ids)
        verdicts.wait_for(ids[:committed])
        verdicts.read(3.0)
        assert set(verdicts.by_id) == set(ids[:committed])

        second = WorkerProcess("second", tmp_path, {**env, "DFD_MAX_INFLIGHT": "1"})
        second.wait_ready()
        sentinel = requests_for(clips[:1], unique("sentinel"))
        publish(kafka_bootstrap, topics.requests, sentinel)
        verdicts.wait_for([*ids, sentinel[0].request_id])
        assert all(len(verdicts.by_id[i]) == 1 for i in ids), {
            i: len(verdicts.by_id[i]) for i in ids
        }
        assert second.terminate() == 0
    finally:
        verdicts.close()


def test_sigkill_mid_stream_then_restart_answers_everything(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Any],
    assets: tuple[Path, Path, list[Path]],
    tmp_path: Path,
) -> None:
    checkpoint, root, clips = assets
    topics = topic_factory(partitions=2)
    env = worker_env(kafka_bootstrap, topics, unique("group"), checkpoint, [root], max_inflight="2")
    requests = requests_for(clips * 5, unique("kill"))
    ids = [r.request_id for r in requests]
    verdicts = VerdictLog(kafka_bootstrap, topics.verdicts)
    try:
        victim = WorkerProcess("victim", tmp_path, env)
        victim.wait_ready()
        publish(kafka_bootstrap, topics.requests, requests)
        verdicts.wait_count(3)
        victim.kill()
        assert len(verdicts.by_id) < len(ids), "the worker finished before it could be killed"

        survivor = WorkerProcess("survivor", tmp_path, env)
        survivor.wait_ready()
        answers = verdicts.wait_for(ids)
        assert set(answers) == set(ids)
        assert all(v.status == "ok" for v in answers.values())
        assert survivor.terminate() == 0
    finally:
        verdicts.close()


def test_a_missing_dead_letter_topic_refuses_to_start(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Any],
    assets: tuple[Path, Path, list[Path]],
    tmp_path: Path,
) -> None:
    checkpoint, root, _clips = assets
    topics = topic_factory(partitions=1)
    env = worker_env(kafka_bootstrap, topics, unique("group"), checkpoint, [root])
    missing = unique("no-such-dlq")
    worker = WorkerProcess("no-dlq", tmp_path, {**env, "DFD_DLQ_TOPIC": missing})
    assert worker.popen.wait(300) == EXIT_STARTUP
    [failed] = [r for r in worker.log_records() if r.get("msg") == "startup failed"]
    assert missing in str(failed["reason"]) and "do not exist" in str(failed["reason"])


def test_verdicts_the_topic_refuses_reach_the_dlq_and_the_worker_keeps_going(
    kafka_bootstrap: str,
    topic_factory: Callable[..., Any],
    assets: tuple[Path, Path, list[Path]],
    tmp_path: Path,
) -> None:
    checkpoint, root, clips = assets
    topics = topic_factory(partitions=1)
    set_max_message_bytes(kafka_bootstrap, topics.verdicts, 64)
    env = worker_env(kafka_bootstrap, topics, unique("group"), checkpoint, [root])
    worker = WorkerProcess("tiny-verdicts", tmp_path, env)
    try:
        worker.wait_ready()
        requests = requests_for(clips[:2], unique("tiny"))
        publish(kafka_bootstrap, topics.requests, requests)
        copies = read_topic(kafka_bootstrap, topics.dlq, 2)
        rescued = {parse_verdict(m.value()).request_id: dict(m.headers()) for m in copies}
        assert set(rescued) == {r.request_id for r in requests}
        for headers in rescued.values():
            assert headers[DLQ_INTENDED_TOPIC] == topics.verdicts.encode()
            assert headers[DLQ_DELIVERY_ERROR] == b"MSG_SIZE_TOO_LARGE"
        failures = worker.metric(
            "dfd_delivery_failures_total", topic=topics.verdicts, reason="MSG_SIZE_TOO_LARGE"
        )
        assert failures == 2
        assert worker.popen.poll() is None and worker.get("/healthz")[0] == 200
    finally:
        assert worker.terminate() == 0
