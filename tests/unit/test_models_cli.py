"""`python -m models predict|info`: one JSON line per video, errors as lines, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.checkpoint import spec_of
from models.cli import main
from tests.checkpoints import make_checkpoint
from tests.videos import make_video


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("cli") / "tiny.safetensors", seed=2)


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_prints_one_line_per_video_and_exits_0(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(0)
    good = make_video(
        tmp_path / "good.mp4", [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
    )
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 not a video" * 50)
    missing = tmp_path / "missing.mp4"

    status = main(
        ["predict", "--checkpoint", str(checkpoint), str(good), str(broken), str(missing)]
    )

    assert status == 0
    ok, bad, absent = _lines(capsys.readouterr().out)
    assert ok["video"] == str(good) and ok["status"] == "ok"
    assert ok["label"] in ("fake", "real")
    assert 0.0 <= ok["fake_probability"] <= 1.0
    assert ok["model"] == {
        "name": "test-ensemble",
        "version": "test",
        "spec_hash": spec_of(checkpoint).spec_hash,
    }
    assert set(ok["members"]) == {"lstm_a", "lstm_b", "gru_a"}
    frames = ok["frames"]
    assert frames["sampled"] == frames["with_face"] == 4
    assert len(frames["timestamps_s"]) == len(frames["attention"]) == 4
    assert bad == {
        "video": str(broken),
        "status": "error",
        "error": {"code": "NOT_A_VIDEO", "message": bad["error"]["message"]},
    }
    assert absent["error"]["code"] == "NOT_FOUND"


def test_unloadable_checkpoint_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    assert main(["predict", "--checkpoint", str(corrupt), str(tmp_path / "v.mp4")]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "not a safetensors file" in json.loads(captured.err.splitlines()[-1])["error"]["message"]
    assert main(["info", str(tmp_path / "absent.safetensors")]) == 1


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["predict", "video.mp4"], ["predict", "--checkpoint", "c"], ["frobnicate"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--checkpoint", "c", "--device", "warp-drive", "v.mp4"])
    assert exited.value.code == 2


def test_info_through_python_dash_m(checkpoint: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "models", "info", str(checkpoint)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    (header,) = _lines(result.stdout)
    spec = spec_of(checkpoint)
    assert header["spec_hash"] == spec.spec_hash
    assert header["spec"] == json.loads(spec.model_dump_json())
    assert header["format_version"] == "1"
    assert header["trained_on"] == spec.trained_on.model_dump() == header["spec"]["trained_on"]
