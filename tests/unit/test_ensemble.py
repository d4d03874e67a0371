"""Ensemble: softmax-probability averaging (weighted, temperature) and attention."""

from __future__ import annotations

import pytest
import torch

from models.ensemble import Ensemble, normalised_weights
from models.heads import pad_sequences
from models.spec import EnsembleSpec, MemberSpec

INPUT_DIM = 5
MEMBERS = (
    MemberSpec(name="lstm_a", kind="lstm", hidden_size=8, fc_dims=(8,)),
    MemberSpec(name="lstm_b", kind="lstm", hidden_size=6, num_layers=1, fc_dims=()),
    MemberSpec(name="gru_a", kind="gru", hidden_size=8, fc_dims=(8, 4)),
)


def _ensemble(weights: tuple[float, ...] | None, temperature: float = 1.0) -> Ensemble:
    torch.manual_seed(0)
    spec = EnsembleSpec(members=MEMBERS, weights=weights)
    return Ensemble(spec, INPUT_DIM, temperature=temperature).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return pad_sequences([torch.randn(n, INPUT_DIM) * 3 for n in (4, 2, 6)])


@pytest.mark.parametrize(
    ("weights", "temperature"), [(None, 1.0), ((3.0, 1.0, 0.0), 1.0), ((1.0, 2.0, 1.0), 2.5)]
)
@torch.inference_mode()
def test_probability_is_the_weighted_mean_of_member_softmaxes(
    weights: tuple[float, ...] | None, temperature: float
) -> None:
    ensemble = _ensemble(weights, temperature)
    x, mask = _batch()
    output = ensemble(x, mask)

    raw = weights or (1.0, 1.0, 1.0)
    expected = torch.zeros(3)
    expected_attention = torch.zeros(mask.shape)
    for weight, spec in zip(raw, MEMBERS, strict=True):
        logits, attention = ensemble.member(spec.name)(x, mask)
        probability = torch.softmax(logits / temperature, dim=1)[:, 1]
        torch.testing.assert_close(output.members[spec.name], probability)
        expected += weight / sum(raw) * probability
        expected_attention += weight / sum(raw) * attention

    assert list(output.members) == [m.name for m in MEMBERS]
    torch.testing.assert_close(output.fake_probability, expected)
    torch.testing.assert_close(output.attention, expected_attention)
    assert torch.all((output.fake_probability >= 0) & (output.fake_probability <= 1))


@torch.inference_mode()
def test_unweighted_average_matches_a_manual_mean() -> None:
    ensemble = _ensemble(None)
    x, mask = _batch()
    output = ensemble(x, mask)
    manual = sum(output.members.values()) / 3
    torch.testing.assert_close(output.fake_probability, manual)


@torch.inference_mode()
def test_temperature_pulls_probabilities_towards_one_half() -> None:
    x, mask = _batch()
    sharp = _ensemble(None, temperature=1.0)(x, mask)
    soft = _ensemble(None, temperature=50.0)(x, mask)
    for name in sharp.members:
        assert torch.all((soft.members[name] - 0.5).abs() <= (sharp.members[name] - 0.5).abs())


@torch.inference_mode()
def test_attention_is_zero_on_padding_and_sums_to_one() -> None:
    output = _ensemble((1.0, 2.0, 3.0))(*_batch())
    _, mask = _batch()
    assert torch.all(output.attention[~mask] == 0)
    torch.testing.assert_close(output.attention.sum(dim=1), torch.ones(3))


def test_state_dict_keys_are_namespaced_by_member() -> None:
    keys = _ensemble(None).state_dict().keys()
    assert {k.split(".")[1] for k in keys} == {m.name for m in MEMBERS}
    assert all(k.startswith("members.") for k in keys)


def test_normalised_weights() -> None:
    assert normalised_weights(EnsembleSpec(members=MEMBERS)) == pytest.approx([1 / 3] * 3)
    weighted = EnsembleSpec(members=MEMBERS, weights=(2.0, 1.0, 1.0))
    assert normalised_weights(weighted) == pytest.approx([0.5, 0.25, 0.25])
    with pytest.raises(ValueError):
        Ensemble(EnsembleSpec(members=MEMBERS), INPUT_DIM, temperature=0.0)
