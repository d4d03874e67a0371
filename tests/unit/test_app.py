"""Readiness before the model is loaded: `/readyz` and `dfd_ready` say not ready."""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.pipeline import Detector
from models.spec import SYNTHETIC_USE, PipelineSpec, TrainingData
from worker.app import WorkerApp, log_loaded_model, warm_up
from worker.consumer import StartupError
from worker.settings import WorkerSettings


def test_not_ready_before_the_model_loads(tmp_path: Path) -> None:
    app = WorkerApp(WorkerSettings(checkpoint=tmp_path / "model.ckpt", metrics_port=0))
    assert app.ready() == (False, "starting")
    assert app.alive() == (True, "starting")
    exposition = app._metrics.render().decode()
    [ready] = [f for f in text_string_to_metric_families(exposition) if f.name == "dfd_ready"]
    assert [sample.value for sample in ready.samples] == [0.0]
    port = app._health.start()
    try:
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert answer.value.code == 503
        assert b"starting" in answer.value.read()
    finally:
        app._health.stop()


def test_a_failed_warm_up_stops_the_start_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(_detector: Detector) -> None:
        raise RuntimeError("no compiler found")

    monkeypatch.setattr(Detector, "warm_up", fail)
    detector = Detector.__new__(Detector)
    with pytest.raises(StartupError, match="warm-up failed: RuntimeError: no compiler found"):
        warm_up(detector)


def test_a_synthetic_data_model_is_logged_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    synthetic = TrainingData(kind="synthetic", name="synth v1", intended_use=SYNTHETIC_USE)
    with caplog.at_level(logging.INFO, logger="worker.app"):
        log_loaded_model(PipelineSpec(trained_on=synthetic), "d" * 64)
        log_loaded_model(PipelineSpec(), "e" * 64)  # an older checkpoint: unknown, no warning
    loaded = [r for r in caplog.records if r.getMessage() == "model loaded"]
    assert [r.trained_on["kind"] for r in loaded] == ["synthetic", "unknown"]  # type: ignore[attr-defined]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "synthetic data" in warning.getMessage()
    assert warning.trained_on["name"] == "synth v1"  # type: ignore[attr-defined]
