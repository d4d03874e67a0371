"""`explain`: a PNG strip of a video's sampled face crops with the ensemble's attention per frame.

Runs the checkpoint's own stages (`Detector.decode`, `faces`, `features`, `classify`), so the
crops, weights and score are exactly what serving computes.
"""

from __future__ import annotations

from pathlib import Path

from models.pipeline import Detector, Prediction
from training.plots import plot_attention_strip


def explain_video(detector: Detector, video: Path, out: Path) -> Prediction:
    """Write the attention strip of `video` to `out`; returns the prediction shown."""
    decoded = detector.decode(video)
    faces = detector.faces(decoded.frames, decoded.timestamps_s)
    crops = faces.kept_crops
    prediction = detector.classify([detector.features(faces)])[0]
    title = (
        f"{video.name}: P(fake) = {prediction.fake_probability:.3f} -> {prediction.label} "
        f"(threshold {prediction.threshold:.3f}; {prediction.with_face}/{prediction.sampled} "
        "frames with a face)"
    )
    plot_attention_strip(
        crops.permute(0, 2, 3, 1).cpu().numpy(),
        prediction.attention,
        prediction.timestamps_s,
        out,
        title,
    )
    return prediction
