"""Sequence classifiers over per-frame features: bidirectional LSTM/GRU + attention pooling.

Class index 1 is "fake", 0 is "real" (training and inference share this convention).

Variable-length batches are padded at the end and described by a boolean mask (True = real
frame). The recurrent layers run on packed sequences, so padding never reaches their states, and
the attention softmax gives padding exactly 0 weight: a sequence padded to any length gives the
same output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from models.spec import MemberSpec

FAKE = 1
REAL = 0
NUM_CLASSES = 2


def pad_sequences(seqs: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Pad `[T_i, D]` sequences at the end into `x [B, Tmax, D]` and `mask [B, Tmax]` (bool)."""
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    if any(s.ndim != 2 or s.shape[0] == 0 for s in seqs):
        raise ValueError("every sequence must be a non-empty [T, D] tensor")
    lengths = torch.tensor([s.shape[0] for s in seqs])
    x = pad_sequence(seqs, batch_first=True)
    mask = torch.arange(x.shape[1]) < lengths[:, None]
    return x, mask.to(x.device)


def sequence_lengths(mask: Tensor) -> Tensor:
    """Per-row count of real frames of a `[B, T]` end-padded mask (validated), on CPU."""
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a [B, T] bool tensor, got {mask.dtype} {tuple(mask.shape)}")
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("every sequence needs at least one real frame")
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not torch.equal(mask, positions < lengths[:, None]):
        raise ValueError("mask must mark a prefix of real frames (pad at the end)")
    return lengths.cpu()


def centred(x: Tensor, mask: Tensor) -> Tensor:
    """`x [B, T, D]` minus each row's mean over its real frames (`mask [B, T]`); padding stays 0."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    mean = (x * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)
    return (x - mean) * weights


class AttentionPooling(nn.Module):
    """Additive attention over time: `Linear(F, A) -> tanh -> Linear(A, 1)`, masked softmax."""

    def __init__(self, features: int, attention_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(features, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """`x [B, T, F]`, `mask [B, T]` -> `(pooled [B, F], weights [B, T])`."""
        scores = self.score(torch.tanh(self.project(x))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        pooled = torch.bmm(weights.unsqueeze(1), x).squeeze(1)
        return pooled, weights


class SequenceClassifier(nn.Module):
    """One ensemble member: input standardisation (optional), per-sequence centring (optional),
    temporal change (optional), input dropout, bidirectional LSTM or GRU, attention pooling,
    BatchNorm, FC layers.

    With `spec.input_norm == "standardize"` the member holds buffers `input_mean` and `input_std`
    (`[input_dim]`, part of its state dict, so a checkpoint serves exactly the training-time
    standardisation); set them with `set_input_statistics`. The attention dimension equals the
    per-direction hidden size.
    """

    def __init__(self, spec: MemberSpec, input_dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.input_dim = input_dim
        standardize = spec.input_norm == "standardize"
        self.input_mean: Tensor | None
        self.input_std: Tensor | None
        self.register_buffer("input_mean", torch.zeros(input_dim) if standardize else None)
        self.register_buffer("input_std", torch.ones(input_dim) if standardize else None)
        self.input_dropout = nn.Dropout(spec.input_dropout)
        rnn_type = nn.LSTM if spec.kind == "lstm" else nn.GRU
        self.rnn = rnn_type(
            input_size=2 * input_dim if spec.temporal_change else input_dim,
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=spec.dropout if spec.num_layers > 1 else 0.0,
        )
        pooled_dim = 2 * spec.hidden_size
        self.attention = AttentionPooling(pooled_dim, spec.hidden_size)
        self.norm = nn.BatchNorm1d(pooled_dim)
        layers: list[nn.Module] = []
        width = pooled_dim
        for dim in spec.fc_dims:
            layers += [nn.Linear(width, dim), nn.ReLU(), nn.Dropout(spec.dropout)]
            width = dim
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.classifier = nn.Sequential(*layers)

    def set_input_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Set the standardisation of a `standardize` member: `(x - mean) / std` per feature."""
        if self.input_mean is None or self.input_std is None:
            raise ValueError(f"member {self.spec.name} has input_norm {self.spec.input_norm!r}")
        if mean.shape != (self.input_dim,) or std.shape != (self.input_dim,):
            raise ValueError(f"mean and std must have shape ({self.input_dim},)")
        if not bool((std > 0).all()):
            raise ValueError("every std must be positive")
        self.input_mean.copy_(mean)
        self.input_std.copy_(std)

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """`x [B, T, D]` float, `mask [B, T]` bool -> `(logits [B, 2], attention [B, T])`."""
        if x.ndim != 3 or x.shape[:2] != mask.shape or x.shape[2] != self.input_dim:
            raise ValueError(
                f"expected x [B, T, {self.input_dim}] and mask [B, T], "
                f"got {tuple(x.shape)} and {tuple(mask.shape)}"
            )
        if self.input_mean is not None and self.input_std is not None:
            x = (x - self.input_mean) / self.input_std
        if self.spec.centre_sequences:
            x = centred(x, mask)
        if self.spec.temporal_change:  # padding follows the real frames, so it changes none
            change = F.pad((x[:, 1:] - x[:, :-1]).abs(), (0, 0, 1, 0))
            x = torch.cat([x, change], dim=-1)
        x = self.input_dropout(x)
        lengths = sequence_lengths(mask)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        # Work on the longest real length only, so extra padding cannot change any reduction.
        hidden, _ = pad_packed_sequence(output, batch_first=True)
        longest = hidden.shape[1]
        pooled, attention = self.attention(hidden, mask[:, :longest])
        attention = F.pad(attention, (0, x.shape[1] - longest))
        return self.classifier(self.norm(pooled)), attention


class LSTMClassifier(SequenceClassifier):
    """Bidirectional-LSTM member (the research notebooks' `LSTMClassifier`)."""

    def __init__(self, spec: MemberSpec, input_dim: int) -> None:
        if spec.kind != "lstm":
            raise ValueError(f"LSTMClassifier needs a member of kind 'lstm', got {spec.kind!r}")
        super().__init__(spec, input_dim)


class GRUClassifier(SequenceClassifier):
    """Bidirectional-GRU member (the research notebooks' `GRUClassifier`)."""

    def __init__(self, spec: MemberSpec, input_dim: int) -> None:
        if spec.kind != "gru":
            raise ValueError(f"GRUClassifier needs a member of kind 'gru', got {spec.kind!r}")
        super().__init__(spec, input_dim)


def build_member(spec: MemberSpec, input_dim: int) -> SequenceClassifier:
    """The classifier described by `spec` (LSTM or GRU by `spec.kind`), randomly initialised."""
    if spec.kind == "lstm":
        return LSTMClassifier(spec, input_dim)
    return GRUClassifier(spec, input_dim)
