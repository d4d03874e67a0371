"""`python -m deploy.demo` (or `make demo`): the whole system on this machine, end to end.

Brings up the local Kafka + Redis stack, builds the demo checkpoint if it is missing
(`python -m training demo`), starts one worker, submits a handful of unseen synthetic clips (real
and fake) plus one broken file, prints their verdicts and says where the metrics are. Nothing is
faked: every verdict comes from the worker over Kafka.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from deploy.local import LocalStack
from producer.client import RequestPublisher, VerdictReader, await_verdicts, make_request
from producer.contracts import Verdict, utcnow

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / ".dfd" / "demo"


def _run(command: Sequence[str], log: Path | None = None) -> None:
    print(f"$ {' '.join(command)}", flush=True)
    if log is None:
        subprocess.run(command, check=True)
        return
    with log.open("ab") as handle:
        subprocess.run(command, check=True, stdout=handle, stderr=subprocess.STDOUT)


def ensure_checkpoint(work: Path) -> Path:
    """The demo checkpoint, trained by `python -m training demo` when it does not exist yet."""
    checkpoint = work / "model" / "demo.ckpt"
    if not checkpoint.exists():
        print("building the demo checkpoint (synth + extract + train + export)...", flush=True)
        _run([sys.executable, "-m", "training", "demo", "--out", str(work / "model")])
    return checkpoint


def make_clips(work: Path, videos: int, seed: int) -> list[tuple[Path, str]]:
    """Fresh synthetic clips the model never saw (another seed), plus one broken file."""
    clips = work / "clips"
    labels = clips / "labels.csv"
    if not labels.exists():
        _run(
            [
                sys.executable,
                "-m",
                "training",
                "synth",
                "--out",
                str(clips),
                "--videos",
                str(videos),
                "--seed",
                str(seed),
            ],
            log=work / "synth.log",
        )
    with labels.open() as handle:
        rows = [(clips / row["path"], row["label"]) for row in csv.DictReader(handle)]
    broken = clips / "broken.mp4"
    broken.write_bytes(rows[0][0].read_bytes()[:2048])  # truncated: cut before its index
    return [*rows, (broken, "broken")]


def wait_ready(port: int, worker: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited with {worker.returncode}; see its log")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"the worker was not ready within {timeout_s:g}s")


def describe(path: Path, expected: str, verdict: Verdict) -> str:
    if verdict.status == "ok":
        outcome = f"{verdict.label:<4}  p(fake)={verdict.fake_probability:.3f}"
        frames = verdict.frames
        detail = f"frames {frames.with_face}/{frames.sampled} with a face" if frames else ""
    else:
        assert verdict.error is not None
        outcome, detail = f"error {verdict.error.code}", verdict.error.message[:60]
    return f"{path.name:<28} expected {expected:<6}  {outcome:<26} cache={verdict.cache}  {detail}"


def model_warning(verdict: Verdict) -> str:
    """What the demo model is good for, from the verdict's `model` block, said plainly."""
    trained_on = verdict.model.trained_on if verdict.model else None
    what = f"{trained_on.kind} data ({trained_on.name})" if trained_on else "unrecorded data"
    return (
        f"WARNING: the demo model was trained on {what}: it only shows that the pipeline runs. "
        "Its verdicts on real videos mean nothing; README.md ('Real use') says what to bring."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="work directory")
    parser.add_argument("--videos", type=int, default=6, help="synthetic clips to submit")
    parser.add_argument("--seed", type=int, default=20261125, help="seed of the demo clips")
    parser.add_argument("--metrics-port", type=int, default=9100)
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the worker running (Ctrl-C stops it) to browse its metrics",
    )
    args = parser.parse_args(argv)
    work: Path = args.dir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    stack = LocalStack()
    stack.up()
    print(f"Kafka {stack.kafka_bootstrap}, Redis {stack.redis_url}", flush=True)
    checkpoint = ensure_checkpoint(work)
    clips = make_clips(work, args.videos, args.seed)

    log_path = work / "worker.log"
    env = {**os.environ, "DFD_LOG_FORMAT": "json"}
    command = [
        sys.executable,
        "-m",
        "worker",
        "--bootstrap-servers",
        stack.kafka_bootstrap,
        "--group-id",
        "dfd-demo",
        "--checkpoint",
        str(checkpoint),
        "--redis-url",
        stack.redis_url,
        "--allowed-roots",
        str(work / "clips"),
        "--metrics-host",
        "127.0.0.1",
        "--metrics-port",
        str(args.metrics_port),
    ]
    print(f"starting the worker (log: {log_path})", flush=True)
    with log_path.open("ab") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_ready(args.metrics_port, worker, timeout_s=180)
        started = utcnow()
        requests = [make_request(str(path), metadata={"expected": label}) for path, label in clips]
        with RequestPublisher(stack.kafka_bootstrap) as publisher:
            publisher.submit(requests)
        print(f"submitted {len(requests)} requests; waiting for verdicts...", flush=True)
        with VerdictReader(stack.kafka_bootstrap, start=started) as reader:
            verdicts = await_verdicts(reader, [r.request_id for r in requests], timeout_s=300)
        for request, (path, label) in zip(requests, clips, strict=True):
            print(describe(path, label, verdicts[request.request_id]))
        print(json.dumps(verdicts[requests[0].request_id].model_dump(mode="json"))[:400] + " ...")
        metrics = f"http://127.0.0.1:{args.metrics_port}/metrics"
        with urllib.request.urlopen(metrics, timeout=5) as reply:
            counters = [
                line
                for line in reply.read().decode().splitlines()
                if line.startswith(("dfd_requests_total", "dfd_cache_")) and "_created" not in line
            ]
        print("\n".join(counters))
        print(f"metrics: {metrics}  health: /healthz  readiness: /readyz")
        print(model_warning(verdicts[requests[0].request_id]))
        if args.keep_running:
            print("the worker keeps running; Ctrl-C stops it", flush=True)
            worker.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
    print("the local stack is still up: `python -m deploy.local down` stops it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
