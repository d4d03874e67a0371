"""The ensemble: sequence classifiers whose softmax probabilities are averaged.

Each member's logits are divided by the temperature before the softmax; the probability of class
1 ("fake") is averaged over members with the spec's weights (equal weights when none are given).
The ensemble's attention is the same weighted mean of the members' attention maps, so it is still
0 on padding and sums to 1 over the real frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from models.heads import FAKE, SequenceClassifier, build_member
from models.spec import EnsembleSpec


@dataclass(frozen=True)
class EnsembleOutput:
    """Ensemble result for a batch of B videos."""

    fake_probability: Tensor  # [B]
    members: dict[str, Tensor]  # member name -> [B] fake probability
    attention: Tensor  # [B, T]


def normalised_weights(spec: EnsembleSpec) -> list[float]:
    """Member weights summing to 1 (equal when the spec gives none)."""
    raw = spec.weights or (1.0,) * len(spec.members)
    total = sum(raw)
    return [w / total for w in raw]


class Ensemble(nn.Module):
    """Members of an `EnsembleSpec`; state dict keys are `members.<member name>.<tensor name>`."""

    def __init__(self, spec: EnsembleSpec, input_dim: int, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.spec = spec
        self.input_dim = input_dim
        self.temperature = temperature
        self.weights = normalised_weights(spec)
        self.members = nn.ModuleDict({m.name: build_member(m, input_dim) for m in spec.members})

    def member(self, name: str) -> SequenceClassifier:
        """The member called `name`."""
        return cast(SequenceClassifier, self.members[name])

    def forward(self, x: Tensor, mask: Tensor) -> EnsembleOutput:
        """`x [B, T, D]` float, `mask [B, T]` bool (True = real frame) -> `EnsembleOutput`."""
        probabilities: dict[str, Tensor] = {}
        fake = torch.zeros(x.shape[0], device=x.device)
        attention = torch.zeros(mask.shape, device=x.device)
        for weight, (name, member) in zip(self.weights, self.members.items(), strict=True):
            logits, member_attention = member(x, mask)
            probability = torch.softmax(logits / self.temperature, dim=1)[:, FAKE]
            probabilities[name] = probability
            fake = fake + weight * probability
            attention = attention + weight * member_attention
        return EnsembleOutput(fake_probability=fake, members=probabilities, attention=attention)
