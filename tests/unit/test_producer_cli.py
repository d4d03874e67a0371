"""`python -m producer` argument parsing (the commands themselves need Kafka: integration tests)."""

from __future__ import annotations

import pytest

from producer.cli import build_parser


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--request-id", "A", "--request-id", "B"], ["A", "B"]),
        (["--request-id", "A", "B"], ["A", "B"]),
        (["--request-id", "A", "--request-id", "B", "C"], ["A", "B", "C"]),
    ],
)
def test_results_keeps_every_request_id(flags: list[str], expected: list[str]) -> None:
    args = build_parser().parse_args(["results", "--bootstrap-servers", "k:9092", *flags])
    assert args.request_id == expected


def test_results_without_request_ids_reads_everything() -> None:
    args = build_parser().parse_args(["results", "--bootstrap-servers", "k:9092"])
    assert args.request_id == []


def test_request_id_needs_a_value() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["results", "--bootstrap-servers", "k:9092", "--request-id"])


def test_results_reads_committed_verdicts_unless_told_otherwise() -> None:
    parse = build_parser().parse_args
    assert parse(["results", "--bootstrap-servers", "k:9092"]).read_uncommitted is False
    flags = ["results", "--bootstrap-servers", "k:9092", "--read-uncommitted"]
    assert parse(flags).read_uncommitted is True
