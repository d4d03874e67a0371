"""Sequence classifiers: masking invariance, attention, shapes, determinism."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.heads import (
    GRUClassifier,
    LSTMClassifier,
    SequenceClassifier,
    build_member,
    centred,
    pad_sequences,
)
from models.spec import MemberSpec

INPUT_DIM = 6


def _member(
    kind: str, seed: int = 0, temporal_change: bool = False, centre_sequences: bool = False
) -> SequenceClassifier:
    torch.manual_seed(seed)
    spec = MemberSpec(
        name=f"tiny_{kind}",
        kind=kind,  # type: ignore[arg-type]
        hidden_size=8,
        fc_dims=(8,),
        temporal_change=temporal_change,
        centre_sequences=centre_sequences,
    )
    member = build_member(spec, INPUT_DIM)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        member.norm.running_mean.uniform_(-0.5, 0.5)
        member.norm.running_var.uniform_(0.5, 2.0)
    return member.eval()


@pytest.fixture(
    params=[
        ("lstm", False, False),
        ("gru", False, False),
        ("lstm", True, False),
        ("gru", True, False),
        ("gru", True, True),
    ],
    ids=["lstm", "gru", "lstm-temporal-change", "gru-temporal-change", "gru-centred-change"],
)
def member(request: pytest.FixtureRequest) -> SequenceClassifier:
    kind, temporal_change, centre_sequences = request.param
    return _member(kind, temporal_change=temporal_change, centre_sequences=centre_sequences)


@torch.inference_mode()
def test_temporal_change_reads_frame_to_frame_differences() -> None:
    member = _member("gru", temporal_change=True)
    assert member.rnn.input_size == 2 * INPUT_DIM
    still = torch.zeros(1, 6, INPUT_DIM)
    flicker = torch.zeros(1, 6, INPUT_DIM)
    flicker[0, 1::2] = 1.0
    flicker[0, 0::2] = -1.0
    mask = torch.ones(1, 6, dtype=torch.bool)
    plain = _member("gru")
    assert not torch.allclose(member(still, mask)[0], member(flicker, mask)[0])
    assert plain.rnn.input_size == INPUT_DIM


@settings(max_examples=25, deadline=None)
@given(
    offset=st.lists(
        st.floats(-100, 100, allow_nan=False, allow_subnormal=False),
        min_size=INPUT_DIM,
        max_size=INPUT_DIM,
    ),
    length=st.integers(1, 7),
)
@torch.inference_mode()
def test_centred_members_ignore_what_every_frame_of_a_video_shares(
    offset: list[float], length: int
) -> None:
    member = _member("lstm", temporal_change=True, centre_sequences=True)
    x = torch.randn(1, length, INPUT_DIM, generator=torch.Generator().manual_seed(length))
    mask = torch.ones(1, length, dtype=torch.bool)
    shifted = x + torch.tensor(offset)
    torch.testing.assert_close(member(shifted, mask)[0], member(x, mask)[0], atol=1e-4, rtol=0)


@torch.inference_mode()
def test_centring_subtracts_the_mean_of_real_frames_and_keeps_padding_zero() -> None:
    x = torch.tensor([[[1.0], [3.0], [9.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert centred(x, mask).squeeze(-1).tolist() == [[-1.0, 1.0, 0.0], [-2.0, 0.0, 2.0]]


@torch.inference_mode()
def test_uncentred_members_see_what_every_frame_of_a_video_shares() -> None:
    plain = _member("lstm")
    offset = torch.full((1, 4, INPUT_DIM), 3.0)
    still = torch.zeros(1, 4, INPUT_DIM)
    full = torch.ones(1, 4, dtype=torch.bool)
    assert not torch.allclose(plain(still, full)[0], plain(offset, full)[0])


def test_centring_is_left_out_of_the_spec_json_when_off() -> None:
    spec = MemberSpec(name="a", kind="lstm", hidden_size=4)
    assert "centre_sequences" not in spec.model_dump(mode="json")
    on = spec.model_copy(update={"centre_sequences": True})
    assert on.model_dump(mode="json")["centre_sequences"] is True
    assert MemberSpec.model_validate_json(on.model_dump_json()) == on


def test_build_member_picks_the_recurrent_kind() -> None:
    lstm = build_member(MemberSpec(name="a", kind="lstm", hidden_size=4), INPUT_DIM)
    gru = build_member(MemberSpec(name="b", kind="gru", hidden_size=4), INPUT_DIM)
    assert isinstance(lstm, LSTMClassifier) and isinstance(lstm.rnn, torch.nn.LSTM)
    assert isinstance(gru, GRUClassifier) and isinstance(gru.rnn, torch.nn.GRU)
    assert lstm.rnn.bidirectional and lstm.rnn.num_layers == 2
    with pytest.raises(ValueError, match="kind 'gru'"):
        GRUClassifier(MemberSpec(name="c", kind="lstm", hidden_size=4), INPUT_DIM)


def test_pad_sequences_pads_at_the_end() -> None:
    a, b = torch.ones(3, INPUT_DIM), torch.full((5, INPUT_DIM), 2.0)
    x, mask = pad_sequences([a, b])
    assert x.shape == (2, 5, INPUT_DIM)
    assert mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.equal(x[0, :3], a) and torch.equal(x[0, 3:], torch.zeros(2, INPUT_DIM))
    with pytest.raises(ValueError):
        pad_sequences([])
    with pytest.raises(ValueError):
        pad_sequences([torch.zeros(0, INPUT_DIM)])


@torch.inference_mode()
def test_padding_to_any_length_gives_the_same_output(member: SequenceClassifier) -> None:
    torch.manual_seed(1)
    sequence = torch.randn(4, INPUT_DIM)
    reference_logits, reference_attention = member(sequence[None], torch.ones(1, 4, dtype=bool))
    for total in (5, 9, 17, 40):
        padded = torch.full((1, total, INPUT_DIM), 123.0)  # garbage in the padding
        padded[0, :4] = sequence
        mask = torch.arange(total)[None] < 4
        logits, attention = member(padded, mask)
        assert attention.shape == (1, total)
        assert torch.equal(logits, reference_logits)  # exact, not merely close
        assert torch.equal(attention[:, :4], reference_attention)
        assert torch.all(attention[:, 4:] == 0)


@torch.inference_mode()
def test_batch_output_equals_single_outputs(member: SequenceClassifier) -> None:
    torch.manual_seed(2)
    sequences = [torch.randn(n, INPUT_DIM) for n in (3, 7, 1, 5)]
    x, mask = pad_sequences(sequences)
    logits, attention = member(x, mask)
    for i, sequence in enumerate(sequences):
        single_logits, single_attention = member(
            sequence[None], torch.ones(1, len(sequence), dtype=bool)
        )
        torch.testing.assert_close(logits[i : i + 1], single_logits)
        torch.testing.assert_close(attention[i : i + 1, : len(sequence)], single_attention)


@torch.inference_mode()
def test_attention_sums_to_one_over_real_frames_and_is_zero_on_padding(
    member: SequenceClassifier,
) -> None:
    torch.manual_seed(3)
    x, mask = pad_sequences([torch.randn(n, INPUT_DIM) for n in (2, 6, 4)])
    logits, attention = member(x, mask)
    assert logits.shape == (3, 2) and attention.shape == (3, 6)
    assert torch.all(attention[~mask] == 0)
    assert torch.all(attention[mask] > 0)
    torch.testing.assert_close(attention.sum(dim=1), torch.ones(3))


def test_masks_that_are_not_end_padded_are_rejected(member: SequenceClassifier) -> None:
    x = torch.randn(2, 3, INPUT_DIM)
    with pytest.raises(ValueError, match="prefix"):
        member(x, torch.tensor([[True, False, True], [True, True, True]]))
    with pytest.raises(ValueError, match="at least one real frame"):
        member(x, torch.tensor([[False, False, False], [True, True, True]]))
    with pytest.raises(ValueError, match="expected x"):
        member(torch.randn(2, 3, INPUT_DIM + 1), torch.ones(2, 3, dtype=bool))


def test_same_seed_gives_identical_weights_and_outputs() -> None:
    first, second = _member("gru", seed=7), _member("gru", seed=7)
    x, mask = pad_sequences([torch.randn(5, INPUT_DIM), torch.randn(2, INPUT_DIM)])
    with torch.inference_mode():
        assert torch.equal(first(x, mask)[0], second(x, mask)[0])
        assert torch.equal(first(x, mask)[0], first(x, mask)[0])


def test_gradients_flow_in_training_mode(member: SequenceClassifier) -> None:
    member.train()
    x, mask = pad_sequences([torch.randn(4, INPUT_DIM), torch.randn(2, INPUT_DIM)])
    x.requires_grad_(True)
    logits, _ = member(x, mask)
    logits.sum().backward()
    assert x.grad is not None
    assert torch.all(x.grad[1, 2:] == 0)  # padding does not influence the output
    assert torch.any(x.grad[1, :2] != 0)
