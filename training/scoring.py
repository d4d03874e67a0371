"""Scoring sequences: windows of a sequence, per-video probabilities, ROC-AUC, early stopping.

Shared by `train` (validation), `evaluate` (calibration and TEST) and `finetune` (per-video VAL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from models.heads import FAKE, SequenceClassifier, pad_sequences


def windows(length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """`(start, end)` windows of `window` frames every `stride` frames covering `[0, length)`.

    One window `(0, length)` when `length <= window`; otherwise the last window ends at `length`.
    """
    if length < 1 or window < 1 or stride < 1:
        raise ValueError("length, window and stride must be positive")
    if length <= window:
        return [(0, length)]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return [(start, start + window) for start in starts]


def random_window(length: int, window: int, rng: np.random.Generator) -> tuple[int, int]:
    """A random `(start, end)` slice of at most `window` frames (the whole sequence if shorter)."""
    if length <= window:
        return (0, length)
    start = int(rng.integers(0, length - window + 1))
    return (start, start + window)


def window_logits(
    member: SequenceClassifier,
    sequences: Sequence[Tensor],
    window: int,
    stride: int,
    batch_size: int = 64,
) -> list[Tensor]:
    """Eval-mode logits `[n_windows, 2]` of every window of each `[T, D]` sequence."""
    pieces = [
        (index, seq[start:end])
        for index, seq in enumerate(sequences)
        for start, end in windows(len(seq), window, stride)
    ]
    outputs: list[list[Tensor]] = [[] for _ in sequences]
    member.eval()
    with torch.inference_mode():
        for offset in range(0, len(pieces), batch_size):
            batch = pieces[offset : offset + batch_size]
            x, mask = pad_sequences([seq for _, seq in batch])
            logits, _ = member(x, mask)
            for (index, _), row in zip(batch, logits, strict=True):
                outputs[index].append(row)
    return [torch.stack(rows) for rows in outputs]


def aggregate_probabilities(logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    """Per-video fake probability: mean over windows of `softmax(logits / temperature)[FAKE]`."""
    return torch.stack([torch.softmax(w / temperature, dim=1)[:, FAKE].mean() for w in logits])


def roc_auc(targets: Sequence[int], scores: Sequence[float] | Tensor) -> float:
    """ROC-AUC, or NaN when only one class is present."""
    if len(set(targets)) < 2:
        return math.nan
    return float(roc_auc_score(np.asarray(targets), np.asarray(scores, dtype=np.float64)))


def video_nll(probabilities: Tensor, targets: Sequence[int]) -> float:
    """Mean binary negative log-likelihood of per-video fake probabilities."""
    p = probabilities.double().clamp(1e-7, 1 - 1e-7)
    y = torch.tensor(targets, dtype=torch.float64)
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


class EarlyStopping:
    """Track the best score (higher is better); stop after `patience` epochs without improving."""

    def __init__(self, patience: int, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_score = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True when it is a new best. NaN never improves."""
        if not math.isnan(score) and score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience
