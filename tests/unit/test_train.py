"""Training utilities: windows, aggregation, masking, class weights, early stopping, a tiny fit."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch

from models.heads import build_member, pad_sequences
from models.spec import MemberSpec
from training.commands.train import add_parser, config_from_args
from training.runs import TrainConfig
from training.scoring import (
    EarlyStopping,
    aggregate_probabilities,
    random_window,
    window_logits,
    windows,
)
from training.train import (
    MEMBER_BASE,
    Sample,
    batches,
    class_weights,
    epoch_order,
    feature_statistics,
    parse_members,
    train_member,
)

TINY = MemberSpec(name="lstm8", kind="lstm", hidden_size=8, num_layers=1, dropout=0.0, fc_dims=(8,))
STANDARDIZED = TINY.model_copy(update={"input_norm": "standardize", "input_dropout": 0.5})


def test_windows_cover_the_sequence() -> None:
    assert windows(5, 8, 4) == [(0, 5)]
    assert windows(8, 8, 4) == [(0, 8)]
    assert windows(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert windows(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (7, 11)]
    with pytest.raises(ValueError):
        windows(0, 4, 2)


def test_random_window_bounds() -> None:
    rng = np.random.default_rng(0)
    assert random_window(3, 8, rng) == (0, 3)
    starts = set()
    for _ in range(50):
        start, end = random_window(10, 4, rng)
        assert end - start == 4 and 0 <= start <= 6
        starts.add(start)
    assert len(starts) > 1


def test_aggregate_is_mean_of_window_probabilities() -> None:
    logits = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])]
    probabilities = aggregate_probabilities(logits)
    assert probabilities.tolist() == pytest.approx([0.5, (0.75 + 0.5) / 2])
    cooled = aggregate_probabilities(logits, temperature=2.0)
    assert cooled[1].item() == pytest.approx((math.sqrt(3) / (1 + math.sqrt(3)) + 0.5) / 2)


def test_window_logits_ignore_padding_and_batching() -> None:
    torch.manual_seed(0)
    member = build_member(TINY, 6)
    sequences = [torch.randn(length, 6) for length in (3, 9, 5)]
    batched = window_logits(member, sequences, window=4, stride=2, batch_size=16)
    alone = [window_logits(member, [seq], window=4, stride=2, batch_size=1)[0] for seq in sequences]
    assert [len(w) for w in batched] == [1, 4, 2]
    for together, single in zip(batched, alone, strict=True):
        torch.testing.assert_close(together, single, rtol=1e-5, atol=1e-6)


def test_class_weights_balance_the_classes() -> None:
    weights = class_weights([1] * 9 + [0])
    assert weights.tolist() == pytest.approx([5.0, 10 / 18])
    assert (weights * torch.tensor([1, 9])).tolist() == pytest.approx([5.0, 5.0])
    with pytest.raises(ValueError):
        class_weights([1, 1, 1])


def test_balanced_sampler_draws_both_classes_equally() -> None:
    targets = [1] * 90 + [0] * 10
    order = epoch_order(targets * 10, "sampler", np.random.default_rng(0))
    share = np.mean(np.asarray(targets * 10)[order])
    assert 0.45 < share < 0.55
    assert sorted(epoch_order(targets, "loss", np.random.default_rng(0))) == list(range(100))


def test_batches_never_leave_a_single_sample() -> None:
    assert [len(b) for b in batches(np.arange(9), 4)] == [4, 5]
    assert [len(b) for b in batches(np.arange(8), 4)] == [4, 4]


def test_early_stopping() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.6, 0)
    assert not stopper.update(math.nan, 1)
    assert stopper.update(0.7, 2)
    assert not stopper.update(0.7, 3)
    assert not stopper.should_stop
    assert not stopper.update(0.65, 4)
    assert stopper.should_stop
    assert (stopper.best_score, stopper.best_epoch) == (0.7, 2)


def test_parse_members() -> None:
    base = MemberSpec(name="x", kind="gru", hidden_size=1, num_layers=1, fc_dims=(16,))
    members = parse_members("lstm64, gru32", base)
    assert [(m.name, m.kind, m.hidden_size, m.num_layers) for m in members] == [
        ("lstm64", "lstm", 64, 1),
        ("gru32", "gru", 32, 1),
    ]
    with pytest.raises(ValueError):
        parse_members("transformer8")
    assert all(
        (m.input_norm, m.input_dropout) == (MEMBER_BASE.input_norm, MEMBER_BASE.input_dropout)
        for m in parse_members("lstm8,gru8")
    )


@pytest.mark.parametrize(
    ("flag", "field"),
    [("--temporal-change", "temporal_change"), ("--centre-sequences", "centre_sequences")],
)
def test_member_input_flags_reach_the_named_members(flag: str, field: str) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--store", "s", "--out", "r", "--members", "lstm8,gru4"])
    assert not any(getattr(m, field) for m in config_from_args(args).members)
    args = parser.parse_args(
        ["train", "--store", "s", "--out", "r", "--members", "lstm8,gru4", flag]
    )
    assert all(getattr(m, field) for m in config_from_args(args).members)


def test_feature_statistics_over_all_frames() -> None:
    samples = [
        Sample(torch.tensor([[1.0, 5.0], [3.0, 5.0]]), 0),
        Sample(torch.tensor([[5.0, 5.0]]), 1),
    ]
    mean, std = feature_statistics(samples)
    assert mean.tolist() == pytest.approx([3.0, 5.0])
    assert std[0].item() == pytest.approx(math.sqrt(8 / 3))
    assert std[1].item() == pytest.approx(0.01 * math.sqrt(8 / 3) / 2)  # floored, not zero


def test_standardized_member_stores_its_statistics() -> None:
    torch.manual_seed(0)
    member = build_member(STANDARDIZED, 3).eval()
    x, mask = pad_sequences([torch.randn(4, 3) * 50 + 100])
    mean, std = torch.full((3,), 100.0), torch.full((3,), 50.0)
    member.set_input_statistics(mean, std)
    assert set(member.state_dict()) >= {"input_mean", "input_std"}
    copy = build_member(STANDARDIZED, 3).eval()
    copy.load_state_dict(member.state_dict())
    plain = build_member(TINY, 3).eval()
    plain.load_state_dict({k: v for k, v in member.state_dict().items() if "input_" not in k})
    with torch.inference_mode():
        expected = plain((x - mean) / std, mask)[0]
        torch.testing.assert_close(member(x, mask)[0], expected)
        torch.testing.assert_close(copy(x, mask)[0], expected)
    assert "input_mean" not in plain.state_dict()
    with pytest.raises(ValueError):
        plain.set_input_statistics(mean, std)
    with pytest.raises(ValueError):
        member.set_input_statistics(mean, torch.zeros(3))


def test_train_member_learns_a_separable_problem() -> None:
    generator = torch.Generator().manual_seed(1)

    def sample(target: int, index: int) -> Sample:
        length = 3 + index % 6
        features = torch.randn(length, 6, generator=generator)
        features[:, 0] += 1.5 if target else -1.5
        return Sample(features, target)

    train = [sample(int(i % 4 == 0), i) for i in range(48)]  # 1 fake : 3 real
    val = [sample(i % 2, i) for i in range(16)]
    config = TrainConfig(
        members=(TINY,), epochs=12, batch_size=8, lr=1e-2, window=4, stride=2, patience=12
    )
    result = train_member(TINY, train, val, config)
    assert result.best_val_auc >= 0.9
    assert len(result.history) == 12
    assert 0 <= result.best_epoch < 12
    assert set(result.state) == set(build_member(TINY, 6).state_dict())
    again = train_member(TINY, train, val, config)
    assert again.history == result.history


def test_standardized_member_learns_uncentred_features_and_keeps_train_statistics() -> None:
    generator = torch.Generator().manual_seed(2)
    dim = 256

    def sample(target: int, index: int) -> Sample:
        features = 5.0 + torch.rand(6, dim, generator=generator) * 3.0
        features[:, :16] += 3.0 if target else 0.0
        return Sample(features, target)

    train = [sample(i % 2, i) for i in range(48)]
    val = [sample(i % 2, i) for i in range(16)]
    config = TrainConfig(members=(TINY,), epochs=10, batch_size=8, lr=3e-3, patience=10)
    result = train_member(STANDARDIZED, train, val, config)
    assert result.best_val_auc >= 0.95
    mean, std = feature_statistics(train)
    torch.testing.assert_close(result.state["input_mean"], mean)
    torch.testing.assert_close(result.state["input_std"], std)
