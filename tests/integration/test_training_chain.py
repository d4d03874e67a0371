"""The training chain end to end on small videos: index, extract, train, evaluate, export; the
ensemble learns (TEST ROC-AUC >= 0.85), and the exported checkpoint reproduces evaluate's TEST
probabilities through `Detector.predict_file`.

Offline there are no pretrained backbone weights, and a random-init backbone's features do not
separate the subtle `synth` fakes (see training/README.md). So that "the model learned" is a real
check of training and evaluation, fakes here carry a coarse signal that random MobileNetV3
features keep: a dark, colour-cast, flickering patch over the middle of every frame. With shuffled
labels the same chain scores near chance (checked by hand), so the AUC assertion can fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from models.checkpoint import spec_of
from models.pipeline import Detector
from tests.videos import make_video
from training.cli import main
from training.manifest import VideoEntry, write_labels

VIDEOS = 240
FRAMES = 12
SIZE = 64
MIN_TEST_AUC = 0.85
CAST = np.array([1.25, 1.0, 0.75], dtype=np.float32)


def _frames(index: int, fake: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(index)
    photo = (skdata.astronaut(), skdata.chelsea(), skdata.coffee())[index % 3]
    y0, x0 = rng.integers(0, 120, size=2)
    frames = []
    for t in range(FRAMES):
        dy, dx = int(y0 + 2 * t), int(x0 + t)
        crop = photo[dy : dy + 2 * SIZE : 2, dx : dx + 2 * SIZE : 2].astype(np.float32)
        if fake:  # a flickering, colour-cast patch over the middle of the frame
            patch = crop[SIZE // 4 : 3 * SIZE // 4, SIZE // 4 : 3 * SIZE // 4]
            patch *= rng.uniform(0.3, 0.6) * CAST
        noisy = crop + rng.normal(0, 3, crop.shape)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flicker")
    entries = []
    for index in range(VIDEOS):
        fake = index % 2 == 1
        path = make_video(root / f"v{index:03d}.mp4", _frames(index, fake), fps=12)
        entries.append(VideoEntry(str(path), "fake" if fake else "real", f"g{index:03d}"))
    write_labels(root / "labels.csv", entries)
    return root


def _command(*args: object) -> None:
    assert main([str(a) for a in args]) == 0


def test_chain_learns_and_export_matches_evaluate(dataset: Path, tmp_path: Path) -> None:
    torch.set_num_threads(2)
    manifest, store, run, checkpoint = (
        tmp_path / "manifest.csv",
        tmp_path / "store",
        tmp_path / "run",
        tmp_path / "model.ckpt",
    )
    _command(
        "index",
        *("--csv", dataset / "labels.csv", "--out", manifest, "--ratios", "0.6,0.2,0.2"),
        *("--dataset-kind", "synthetic", "--dataset-name", "flicker"),
    )
    extract = (
        "extract",
        "--manifest",
        manifest,
        "--out",
        store,
        "--arch",
        "mobilenet_v3_large",
        "--weights",
        "none",
        "--detector",
        "none",
        "--no-face",
        "full_frame",
        "--input-size",
        "32",
        "--inference-frames",
        "8",
        "--sampling",
        "uniform",
        "--views",
        "1",
    )
    _command(*extract)
    stored = json.loads((store / "store.json").read_text())
    assert len({e["path"] for e in stored["entries"]}) == VIDEOS
    _command(*extract)  # resume: nothing left to do
    assert json.loads((store / "store.json").read_text()) == stored

    _command(
        "train",
        "--store",
        store,
        "--out",
        run,
        "--members",
        "lstm16,gru16",
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--patience",
        "30",
    )
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert {r["member"] for r in log} == {"lstm16", "gru16"}
    assert (run / "curves" / "lstm16.png").stat().st_size > 0
    _command("evaluate", "--store", store, "--run", run)
    report = json.loads((run / "report.json").read_text())
    assert "| ensemble |" in (run / "report.md").read_text()
    assert (run / "roc.png").is_file() and (run / "confusion.png").is_file()
    assert set(report["models"]) == {"lstm16", "gru16", "ensemble"}
    for model in report["models"].values():
        assert 0.0 <= model["threshold"] <= 1.0
    assert report["counts"]["test"]["videos"] >= 40
    assert report["models"]["ensemble"]["test"]["roc_auc"] >= MIN_TEST_AUC

    _command("export", "--store", store, "--run", run, "--out", checkpoint, "--name", "t")
    spec = spec_of(checkpoint)
    assert spec.spec_hash == report["spec_hash"]
    assert (spec.trained_on.kind, spec.trained_on.name) == ("synthetic", "flicker")
    assert spec.temperature == pytest.approx(report["temperature"])
    assert spec.threshold == pytest.approx(report["threshold"])
    detector = Detector.load(checkpoint)
    assert report["test_predictions"]
    for path, expected in report["test_predictions"].items():
        prediction = detector.predict_file(path)
        assert prediction.fake_probability == pytest.approx(expected["fake_probability"], abs=1e-5)
        for name, probability in expected["members"].items():
            assert prediction.members[name] == pytest.approx(probability, abs=1e-5)

    strip = tmp_path / "explain.png"
    _command(
        "explain",
        "--checkpoint",
        checkpoint,
        next(iter(report["test_predictions"])),
        "--out",
        strip,
    )
    assert strip.stat().st_size > 0
