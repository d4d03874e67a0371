"""Every benchmark at `--size smoke`, so none rots: real Kafka and Redis from the fixtures (the
drills start their own stack, since they restart the broker and Redis).

These check that each benchmark runs and reports its figures; the drills also check the one
correctness rule (zero lost requests, every duplicate explained). No timing is asserted.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import BENCHMARKS, main

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_benchmark_smoke(name: str, kafka_bootstrap: str, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    status = main(
        [
            name,
            "--size",
            "smoke",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
            "--kafka",
            kafka_bootstrap,
            "--redis",
            redis_url,
        ]
    )
    report = json.loads(out.read_text())
    assert report["name"] == name
    assert report["machine"]["cpu_model"]
    assert report["results"], "a benchmark must report results"
    for target in report["targets"]:
        assert target["value"] is not None, f"{target['target']} was not measured"
    if name == "drills":
        stream = report["results"]["stream"]
        assert stream["lost"] == 0
        assert stream["unexplained_duplicates"] == 0
        assert stream["requests"] > 0 and stream["dlq_messages"] >= stream["poison_messages"]
    assert report["failures"] == []
    assert status == 0
