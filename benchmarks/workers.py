"""`python -m worker` subprocesses driven by `DFD_*` environment variables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.measure import peak_rss_mib
from benchmarks.services import Topics
from deploy.local.ports import free_port

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300.0


class WorkerFailed(RuntimeError):
    """A worker process exited or did not become ready."""


def worker_env(
    bootstrap: str,
    topics: Topics,
    group: str,
    checkpoint: Path,
    roots: Iterable[Path],
    redis_url: str | None,
    **extra: str,
) -> dict[str, str]:
    """The `DFD_*` settings of a benchmark worker (fast group membership, JSON logs)."""
    env = {
        "DFD_BOOTSTRAP_SERVERS": bootstrap,
        "DFD_REQUESTS_TOPIC": topics.requests,
        "DFD_VERDICTS_TOPIC": topics.verdicts,
        "DFD_DLQ_TOPIC": topics.dlq,
        "DFD_GROUP_ID": group,
        "DFD_CHECKPOINT": str(checkpoint),
        "DFD_ALLOWED_ROOTS": ",".join(str(root) for root in roots),
        "DFD_LOG_FORMAT": "json",
        "DFD_LOG_LEVEL": "WARNING",
        "DFD_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "DFD_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
    }
    if redis_url:
        env["DFD_REDIS_URL"] = redis_url
    env.update({f"DFD_{key.upper()}": value for key, value in extra.items()})
    return env


class WorkerProcess:
    """One worker subprocess with its own metrics port and log file."""

    def __init__(
        self, name: str, log_dir: Path, env: dict[str, str], *, torch_threads: int | None = None
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log_path = log_dir / f"{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        threads = {"OMP_NUM_THREADS": str(torch_threads)} if torch_threads else {}
        full_env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            **threads,
            "DFD_WORKER_ID": name,
            "DFD_METRICS_HOST": "127.0.0.1",
            "DFD_METRICS_PORT": str(self.port),
            **env,
        }
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "worker"],
                cwd=REPO,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics keyed by sample name (labels summed)."""
        _, body = self._get("/metrics")
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def assigned_partitions(self) -> int:
        try:
            return int(self.metrics().get("dfd_assigned_partitions", 0))
        except OSError:
            return 0

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        wait_until(self._ready, timeout_s, f"worker {self.name} ready")

    def _ready(self) -> bool:
        if self.popen.poll() is not None:
            raise WorkerFailed(f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
        try:
            return self._get("/readyz")[0] == 200
        except OSError:
            return False

    def peak_rss_mib(self) -> float | None:
        return peak_rss_mib(self.pid)

    def terminate(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """SIGTERM and wait; the exit status."""
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL (a crash) and reap."""
        self.popen.kill()
        self.popen.wait(START_TIMEOUT_S)

    def stop(self) -> None:
        """Terminate when still running (clean-up)."""
        if self.popen.poll() is None:
            try:
                self.terminate(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` until it holds; raise `WorkerFailed` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise WorkerFailed(f"timed out waiting for: {what}")
        time.sleep(0.2)


def wait_assigned(workers: list[WorkerProcess], partitions: int, timeout_s: float = 120.0) -> None:
    """Until every worker owns at least one partition and together they own all of them."""

    def balanced() -> bool:
        owned = [w.assigned_partitions() for w in workers]
        return min(owned) > 0 and sum(owned) == partitions

    wait_until(balanced, timeout_s, f"{partitions} partitions assigned over {len(workers)} workers")
