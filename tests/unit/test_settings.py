"""Worker settings: environment, flags, precedence, Kafka pass-through, decode overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.spec import DecodeLimits
from worker.settings import WorkerSettings, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DFD_"):
            monkeypatch.delenv(name)


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFD_CHECKPOINT", "/env.pt")
    monkeypatch.setenv("DFD_MAX_INFLIGHT", "3")
    monkeypatch.setenv("DFD_GROUP_ID", "from-env")
    settings = load_settings(["--max-inflight", "7", "--http-enabled"])
    assert settings.checkpoint == Path("/env.pt")
    assert settings.max_inflight == 7
    assert settings.group_id == "from-env"
    assert settings.http_enabled is True


def test_lists_split_on_commas_or_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFD_ALLOWED_ROOTS", "/data,/uploads")
    assert load_settings(["--checkpoint", "c.pt"]).allowed_roots == [
        Path("/data"),
        Path("/uploads"),
    ]
    flags = ["--checkpoint", "c.pt", "--allowed-roots", "/a", "--allowed-roots", "/b"]
    assert load_settings(flags).allowed_roots == [Path("/a"), Path("/b")]


def test_kafka_pass_through_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DFD_KAFKA__SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("DFD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    settings = load_settings(["--checkpoint", "c.pt"])
    assert settings.kafka == {"sasl.mechanism": "PLAIN", "security.protocol": "SASL_SSL"}
    flagged = load_settings(["--checkpoint", "c.pt", "--kafka", "ssl.ca.location=/ca.pem"])
    assert flagged.kafka == {**settings.kafka, "ssl.ca.location": "/ca.pem"}


def test_kafka_pass_through_cannot_override_offset_handling() -> None:
    with pytest.raises(ValidationError, match=r"enable\.auto\.offset\.store"):
        WorkerSettings(checkpoint=Path("c.pt"), kafka={"enable.auto.offset.store": "true"})


@pytest.mark.parametrize(
    "override", [{"acks": "1"}, {"enable.idempotence": "false"}, {"request_required_acks": "0"}]
)
def test_kafka_pass_through_cannot_weaken_delivery(override: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match=r"acks=all and enable\.idempotence=true"):
        WorkerSettings(checkpoint=Path("c.pt"), kafka=override)
    with pytest.raises(ValidationError, match="acks=all"):
        load_settings(["--checkpoint", "c.pt", "--kafka", "acks=0"])


def test_checkpoint_is_required() -> None:
    with pytest.raises(ValidationError, match="checkpoint"):
        load_settings([])


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValidationError, match="max_inflight"):
        load_settings(["--checkpoint", "c.pt", "--max-inflight", "0"])


def test_decode_overrides_apply_only_when_set() -> None:
    base = DecodeLimits()
    assert WorkerSettings(checkpoint=Path("c.pt")).decode_limits(base) == base
    settings = WorkerSettings(checkpoint=Path("c.pt"), max_pixels=640 * 480, max_decode_s=5)
    limits = settings.decode_limits(base)
    assert limits.max_pixels == 640 * 480
    assert limits.max_wall_s == 5
    assert limits.max_bytes == base.max_bytes


def test_worker_id_defaults_to_host_and_pid() -> None:
    assert WorkerSettings(checkpoint=Path("c.pt")).worker_id.endswith(f"-{os.getpid()}")


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for name in WorkerSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in text


def test_waits_must_fit_in_the_poll_interval() -> None:
    with pytest.raises(ValidationError, match="max_poll_interval_ms"):
        WorkerSettings(checkpoint=Path("c.pt"), drain_deadline_s=60, max_poll_interval_ms=30_000)


@pytest.mark.parametrize(
    ("overrides", "rule"),
    [
        ({"kafka": {"sasl.password": "s3cr3t", "group.id": "g"}}, "group.id"),
        (
            {"redis_url": "redis://:s3cr3t@c/0", "max_poll_interval_ms": 1000},
            "max_poll_interval_ms",
        ),
        ({"redis_url": "redis://:s3cr3t@c/0", "max_inflight": 0}, "max_inflight"),
    ],
)
def test_invalid_settings_never_print_secret_values(overrides: dict, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WorkerSettings(checkpoint=Path("c.pt"), **overrides)
    assert rule in str(caught.value)
    assert "s3cr3t" not in str(caught.value)


def test_the_command_line_prints_no_secret_of_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.__main__ import main

    monkeypatch.setenv("DFD_KAFKA__SASL_PASSWORD", "s3cr3t")
    monkeypatch.setenv("DFD_KAFKA__GROUP_ID", "g")
    assert main(["--checkpoint", "c.pt"]) != 0
    printed = capsys.readouterr()
    assert "group.id" in printed.err
    assert "s3cr3t" not in printed.err + printed.out


def test_decode_pool_defaults_follow_the_cores_and_max_inflight() -> None:
    settings = WorkerSettings(checkpoint=Path("m.pt"), max_inflight=4)
    assert settings.decode_process_count() == os.cpu_count()
    assert settings.decode_memory_bytes() == 4 * 128 << 20
    explicit = WorkerSettings(
        checkpoint=Path("m.pt"), decode_processes=0, decode_memory_mb=300, decode_max_side=960
    )
    assert explicit.decode_process_count() == 0
    assert explicit.decode_memory_bytes() == 300 << 20
    with pytest.raises(ValidationError):
        WorkerSettings(checkpoint=Path("m.pt"), decode_processes=-1)
