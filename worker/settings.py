"""Worker settings: one pydantic-settings model is the single source of names, defaults and help.

Every field is an environment variable (`DFD_` + upper-case name, e.g. `DFD_MAX_INFLIGHT=8`) and a
command-line flag (kebab-case, e.g. `--max-inflight 8`); flags win over the environment. Lists take
commas in the environment (`DFD_ALLOWED_ROOTS=/data,/uploads`) or repeated flags. Extra Kafka client
settings pass through `DFD_KAFKA__SASL_MECHANISM=PLAIN` (underscores become dots) or
`--kafka sasl.mechanism=PLAIN`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, CliSettingsSource, NoDecode, SettingsConfigDict

from models.spec import DecodeLimits
from producer.contracts import DLQ_TOPIC, REQUESTS_TOPIC, VERDICTS_TOPIC

PROG = "python -m worker"

# Client settings the worker owns: overriding them would break offset handling.
RESERVED_KAFKA_KEYS = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "max.poll.interval.ms",
        "client.id",
        "isolation.level",
        "transactional.id",
        "transaction.timeout.ms",
    }
)
# Delivery guarantees the worker always sets (acks=all, idempotence on): not overridable.
FIXED_KAFKA_KEYS = frozenset({"acks", "request.required.acks", "enable.idempotence"})

DECODE_MIB_PER_REQUEST = 128
"""Default decode memory per in-flight request: 32 sampled 1080p frames take 190 MiB, 32 4K frames
scaled to 2757 px 391 MiB, so at 16 in flight about 10 1080p or 5 4K videos hold frames at once."""

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]


def default_worker_id() -> str:
    """`hostname-pid`: unique per process, stable for its lifetime."""
    return f"{socket.gethostname()}-{os.getpid()}"


class WorkerSettings(BaseSettings):
    """Settings of one `python -m worker` process (the Kafka-fed deepfake detector).

    Every option is also an environment variable: DFD_ + its name in upper case with
    underscores (--max-inflight -> DFD_MAX_INFLIGHT); flags win over the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="DFD_",
        env_nested_delimiter="__",
        extra="ignore",
        cli_prog_name=PROG,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        # Errors name the setting and the rule, never the value: values may be secrets (a Redis
        # URL's password, sasl.password in the Kafka pass-through).
        hide_input_in_errors=True,
    )

    # Kafka
    bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers.")
    group_id: str = Field("dfd-workers", description="Kafka consumer group of the workers.")
    requests_topic: str = Field(REQUESTS_TOPIC, description="Topic the requests are read from.")
    verdicts_topic: str = Field(VERDICTS_TOPIC, description="Topic the verdicts are written to.")
    dlq_topic: str = Field(DLQ_TOPIC, description="Dead-letter topic for malformed requests.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group without committed offsets starts reading."
    )
    max_poll_interval_ms: PositiveInt = Field(
        300_000, description="Kafka max.poll.interval.ms (the poll loop never blocks this long)."
    )
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="Extra Kafka client settings (security.protocol, sasl.*, ssl.*), as "
        "key=value; DFD_KAFKA__SASL_MECHANISM=PLAIN in the environment.",
    )
    startup_timeout_s: PositiveFloat = Field(
        10.0, description="How long to wait for the broker at startup before failing."
    )
    delivery_retries: Annotated[int, Field(ge=0)] = Field(
        3,
        description="Produce attempts after a retriable delivery failure before the record's "
        "dead-letter copy replaces it.",
    )
    delivery_backoff_s: PositiveFloat = Field(
        1.0, description="Wait before the first delivery retry; doubles each time (at most 30 s)."
    )
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description="Verdict delivery guarantee: at-least-once (a crash or rebalance may repeat "
        "a verdict) or exactly-once (verdicts and offsets committed in Kafka transactions; "
        "readers must use isolation.level=read_committed).",
    )
    transaction_interval_ms: PositiveInt = Field(
        100,
        description="Exactly-once: longest a finished verdict waits for others to share its "
        "transaction (it commits at once when no other request is being handled, or at "
        "transaction-max-records).",
    )
    transaction_max_records: PositiveInt = Field(
        64, description="Exactly-once: commit as soon as this many records are committable."
    )
    transaction_timeout_ms: PositiveInt = Field(
        10_000,
        description="Exactly-once: Kafka transaction.timeout.ms, and the limit of each "
        "transactional call; the broker aborts a dead worker's open transaction after it.",
    )

    # Model and compute
    checkpoint: Path = Field(description="Checkpoint file of the detector (required).")
    device: str = Field("cpu", description="Torch device, e.g. cpu, cuda, cuda:1.")
    compile_backbone: bool = Field(
        False,
        description="torch.compile the backbone (inductor, frozen weights) during the warm-up "
        "before /readyz: faster frames for a one-off compilation (about 20-30 s on 2 CPU cores; "
        "on CPU it needs a C++ compiler).",
    )
    max_batch_frames: PositiveInt = Field(
        256, description="Most frames per face-detection / backbone batch, shared across videos."
    )
    max_wait_ms: Annotated[float, Field(ge=0)] = Field(
        10.0, description="Longest a partial batch waits for more frames or videos."
    )
    classify_batch: PositiveInt = Field(32, description="Most videos per ensemble batch.")
    max_inflight: PositiveInt = Field(
        16, description="Requests processed at once; partitions pause when it is reached."
    )
    decode_workers: PositiveInt = Field(
        2,
        description="Videos decoded at the same time in the request threads (with "
        "--decode-processes 0).",
    )
    decode_threads: Annotated[int, Field(ge=0)] = Field(
        0,
        description="Codec threads per decoded video (0 = PyAV's default; one per decode "
        "process in the pool).",
    )
    decode_processes: Annotated[int, Field(ge=0)] | None = Field(
        None,
        description="Decode processes (models.decode_pool: a hard deadline per video, off the "
        "GIL); 0 decodes in the request threads (--decode-workers at once, deadline checked "
        "between FFmpeg calls only). Default: one per CPU core.",
    )
    decode_memory_mb: PositiveInt | None = Field(
        None,
        description="Budget of decoded frames held at once, in MiB (a video waits for it, or "
        f"is refused when alone over it). Default: {DECODE_MIB_PER_REQUEST} MiB per "
        "--max-inflight request.",
    )
    decode_max_side: PositiveInt | None = Field(
        None,
        description="Scale frames down to this longest side right after decoding. Default: what "
        "the checkpoint's face stage can use (models.faces.frame_max_side; 2757 px for the "
        "default spec).",
    )
    decoder: Literal["auto", "cpu", "nvdec"] = Field(
        "auto",
        description="Video decoder: nvdec (the GPU's NVDEC via PyNvVideoCodec, the nvdec extra; "
        "videos it does not take are decoded on the CPU and counted), cpu (PyAV), or auto (nvdec "
        "when the device is CUDA and PyNvVideoCodec imports, else cpu).",
    )

    # Feature and prediction cache
    redis_url: str | None = Field(
        None,
        description="Redis URL of the feature and prediction cache; without it an in-process LRU "
        "is used.",
    )
    cache_ttl_s: PositiveInt = Field(
        7 * 24 * 3600, description="Lifetime of cached features and predictions."
    )
    cache_timeout_s: PositiveFloat = Field(0.5, description="Socket timeout of Redis calls.")
    cache_retry_after_s: PositiveFloat = Field(
        10.0, description="After a Redis error, bypass the cache this long before trying again."
    )
    lru_entries: PositiveInt = Field(
        1024, description="Entries of the in-process cache (used without --redis-url)."
    )

    # Sources
    allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="Directories file:// URIs may point into."
    )
    http_enabled: bool = Field(False, description="Allow http(s):// video URIs.")
    http_allow_private: bool = Field(
        False,
        description="Allow http(s) fetches from private or loopback hosts (link-local and cloud "
        "metadata addresses stay refused).",
    )
    http_max_bytes: PositiveInt = Field(1 << 30, description="Largest video fetched over http.")
    http_connect_timeout_s: PositiveFloat = Field(
        5.0, description="http connect timeout; also bounds the DNS lookup."
    )
    http_read_timeout_s: PositiveFloat = Field(30.0, description="http read timeout.")
    http_max_redirects: Annotated[int, Field(ge=0)] = Field(3, description="http redirects.")
    http_total_timeout_s: PositiveFloat = Field(
        300.0,
        description="Hard deadline of one http(s) download, redirects included (a server "
        "dripping bytes within the read timeout is cut off here).",
    )
    tmp_dir: Path | None = Field(None, description="Directory for downloaded videos.")

    # Decode limit overrides (default: the checkpoint's)
    max_video_bytes: PositiveInt | None = Field(None, description="Override: largest video file.")
    max_duration_s: PositiveFloat | None = Field(None, description="Override: longest video.")
    max_pixels: PositiveInt | None = Field(None, description="Override: most pixels per frame.")
    max_decoded_frames: PositiveInt | None = Field(
        None, description="Override: most frames decoded per video."
    )
    max_decode_s: PositiveFloat | None = Field(
        None, description="Override: wall-time budget to decode one video."
    )

    # Operations
    metrics_host: str = Field("0.0.0.0", description="Address of /metrics, /healthz, /readyz.")
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = Field(
        9100, description="Port of /metrics, /healthz, /readyz (0 = any free port)."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Level.")
    drain_deadline_s: PositiveFloat = Field(
        30.0, description="On SIGTERM, how long in-flight requests may take to finish."
    )
    revoke_timeout_s: PositiveFloat = Field(
        10.0, description="On rebalance, how long revoked partitions' in-flight work may take."
    )
    lag_interval_s: PositiveFloat = Field(5.0, description="Period of the consumer-lag gauge.")
    stall_timeout_s: PositiveFloat = Field(
        900.0,
        description="/healthz answers 503 when requests are open and nothing was delivered for "
        "this long (a wedged worker); keep it above the longest request's budget.",
    )
    worker_id: str = Field(
        default_factory=default_worker_id, description="Worker id in verdicts (hostname-pid)."
    )

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.split(",") if part.strip()]
        return value

    @field_validator("kafka")
    @classmethod
    def _kafka_keys(cls, value: dict[str, str]) -> dict[str, str]:
        normalised = {key.strip().lower().replace("_", "."): item for key, item in value.items()}
        reserved = sorted(RESERVED_KAFKA_KEYS.intersection(normalised))
        if reserved:
            raise ValueError(f"set these through their own options, not kafka: {reserved}")
        fixed = sorted(FIXED_KAFKA_KEYS.intersection(normalised))
        if fixed:
            raise ValueError(
                f"the worker always produces with acks=all and enable.idempotence=true; "
                f"remove {fixed} from the kafka settings"
            )
        return normalised

    @model_validator(mode="after")
    def _within_poll_interval(self) -> WorkerSettings:
        longest = max(self.drain_deadline_s, self.revoke_timeout_s) * 1000
        if longest >= self.max_poll_interval_ms:
            raise ValueError(
                "drain_deadline_s and revoke_timeout_s must stay below max_poll_interval_ms, "
                "or the group evicts the worker while it waits"
            )
        return self

    def decode_process_count(self) -> int:
        """Decode processes to start (0: decode in the request threads)."""
        if self.decode_processes is None:
            return os.cpu_count() or 1
        return self.decode_processes

    def decode_memory_bytes(self) -> int:
        """The decoded-frame memory budget in bytes."""
        mib = self.decode_memory_mb or DECODE_MIB_PER_REQUEST * self.max_inflight
        return mib << 20

    def decode_limits(self, base: DecodeLimits) -> DecodeLimits:
        """The checkpoint's decode limits with this worker's overrides applied."""
        overrides = {
            "max_bytes": self.max_video_bytes,
            "max_duration_s": self.max_duration_s,
            "max_pixels": self.max_pixels,
            "max_decoded_frames": self.max_decoded_frames,
            "max_wall_s": self.max_decode_s,
        }
        return base.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def load_settings(argv: Sequence[str] | None = None) -> WorkerSettings:
    """Settings from the environment, overridden by `argv` flags (`--help` prints them all)."""
    source: CliSettingsSource[WorkerSettings] = CliSettingsSource(
        WorkerSettings, cli_parse_args=list(argv) if argv is not None else True
    )
    return WorkerSettings(_cli_settings_source=source)  # type: ignore[call-arg]
