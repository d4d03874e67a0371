"""`python -m worker` subprocesses for tests and benchmarks, configured by `DFD_*` variables.

Each worker is a real process (so SIGTERM and SIGKILL are real) with its own metrics port and log
file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from deploy.local.errors import WorkerFailed
from deploy.local.ports import HOST, free_port
from deploy.local.topics import TopicSet

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 300.0  # upper bound for a worker to start or stop on a loaded 2-core machine
LOG_TAIL_CHARS = 20_000


def worker_env(
    bootstrap: str,
    topics: TopicSet,
    group: str,
    checkpoint: Path,
    roots: Iterable[Path],
    redis_url: str | None = None,
    **settings: str,
) -> dict[str, str]:
    """The `DFD_*` environment of a worker with fast group membership and JSON logs, using Redis
    when `redis_url` is given; each of `settings` becomes `DFD_<NAME>` (`max_inflight="2"` ->
    `DFD_MAX_INFLIGHT=2`)."""
    redis = {"DFD_REDIS_URL": redis_url} if redis_url else {}
    return {
        "DFD_BOOTSTRAP_SERVERS": bootstrap,
        "DFD_REQUESTS_TOPIC": topics.requests,
        "DFD_VERDICTS_TOPIC": topics.verdicts,
        "DFD_DLQ_TOPIC": topics.dlq,
        "DFD_GROUP_ID": group,
        "DFD_CHECKPOINT": str(checkpoint),
        "DFD_ALLOWED_ROOTS": ",".join(str(root) for root in roots),
        "DFD_LOG_FORMAT": "json",
        "DFD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DFD_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        **redis,
        **{f"DFD_{key.upper()}": value for key, value in settings.items()},
    }


def sample_key(name: str, labels: dict[str, str]) -> str:
    """`name{k="v",...}` with labels sorted: the key of one sample in `WorkerProcess.metrics`."""
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return f"{name}{{{pairs}}}"


class WorkerProcess:
    """One `python -m worker` subprocess with its own metrics port and log file.

    `torch_threads` sets `OMP_NUM_THREADS` (None leaves the default); `env` wins over everything.
    `cpus` pins the process and all its threads to those CPU cores (`taskset`, Linux).
    """

    def __init__(
        self,
        name: str,
        log_dir: Path,
        env: dict[str, str],
        *,
        torch_threads: int | None = 1,
        cpus: Sequence[int] = (),
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        threads = {"OMP_NUM_THREADS": str(torch_threads)} if torch_threads else {}
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            **threads,
            "DFD_WORKER_ID": name,
            "DFD_METRICS_HOST": HOST,
            "DFD_METRICS_PORT": str(self.port),
            **env,
        }
        with self.log_path.open("ab") as log:
            pinned = ["taskset", "--cpu-list", ",".join(map(str, cpus))] if cpus else []
            self.popen = subprocess.Popen(
                [*pinned, sys.executable, "-m", "worker"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def get(self, path: str) -> tuple[int, str]:
        """Status and body of GET http://127.0.0.1:<port><path>."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed by `sample_key` (name and sorted labels)."""
        status, body = self.get("/metrics")
        if status != 200:
            raise WorkerFailed(f"{self.name} answered /metrics with HTTP {status}")
        return {
            sample_key(sample.name, sample.labels): sample.value
            for family in text_string_to_metric_families(body)
            for sample in family.samples
        }

    def metric(self, sample: str, /, **labels: str) -> float:
        """The value of one sample with exactly these labels (0 when absent)."""
        return self.metrics().get(sample_key(sample, labels), 0.0)

    def assigned_partitions(self) -> int:
        """Partitions this worker owns now (0 while its metrics port does not answer)."""
        try:
            return int(self.metric("dfd_assigned_partitions"))
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = WAIT_S) -> None:
        wait_until(self._ready, timeout_s, f"{self.name} ready")

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            raise WorkerFailed(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
        try:
            return self.get("/readyz")[0] == 200
        except OSError:
            return False

    def terminate(self, timeout_s: float = WAIT_S) -> int:
        """SIGTERM and wait; the exit status."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        self.popen.kill()
        self.popen.wait(WAIT_S)

    def stop(self) -> None:
        """Terminate when still running, killing it when that takes over a minute (clean-up)."""
        if self.popen.poll() is None:
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        """The tail of the worker's output."""
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def log_records(self) -> list[dict[str, object]]:
        """Every JSON log line of the worker, parsed."""
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; raise `WorkerFailed` naming `what` after `timeout_s` (a
    bound, not a measurement)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise WorkerFailed(f"timed out waiting for: {what}")
        time.sleep(0.2)


def wait_assigned(workers: list[WorkerProcess], partitions: int, timeout_s: float = 120.0) -> None:
    """Until every worker owns at least one partition and together they own all of them."""

    def balanced() -> bool:
        owned = [worker.assigned_partitions() for worker in workers]
        return min(owned) > 0 and sum(owned) == partitions

    wait_until(balanced, timeout_s, f"{partitions} partitions assigned over {len(workers)} workers")
