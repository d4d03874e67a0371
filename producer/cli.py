"""`python -m producer`: submit requests, read verdicts, create topics, write JSON Schemas."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from producer.client import (
    BrokerUnavailable,
    DeliveryFailed,
    RequestPublisher,
    VerdictReader,
    VerdictTimeout,
    iter_verdicts,
    make_request,
)
from producer.contracts import REQUESTS_TOPIC, VERDICTS_TOPIC, schemas
from producer.topics import create_topics

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent.parent / "deploy" / "schemas"


def _metadata(pairs: Sequence[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"metadata must look like key=value, got {pair!r}")
        result[key] = value
    return result


def _emit(document: object) -> None:
    print(json.dumps(document, separators=(",", ":")), flush=True)


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        metadata = _metadata(args.metadata)
        requests = [
            make_request(target, with_sha256=args.sha256, metadata=metadata)
            for target in args.targets
        ]
    except (argparse.ArgumentTypeError, ValueError, ValidationError, OSError) as exc:
        return _fail(str(exc), 2)
    try:
        with RequestPublisher(
            args.bootstrap_servers, topic=args.topic, timeout_s=args.timeout
        ) as publisher:
            deliveries = publisher.submit(requests)
    except (BrokerUnavailable, DeliveryFailed) as exc:
        return _fail(str(exc))
    for delivery in deliveries:
        _emit(
            {
                "request_id": delivery.request_id,
                "video_uri": delivery.video_uri,
                "topic": delivery.topic,
                "partition": delivery.partition,
                "offset": delivery.offset,
            }
        )
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    start = "beginning" if args.from_beginning else "end"
    try:
        reader = VerdictReader(
            args.bootstrap_servers,
            topic=args.topic,
            start=start,
            timeout_s=args.timeout,
            read_uncommitted=args.read_uncommitted,
        )
    except BrokerUnavailable as exc:
        return _fail(str(exc))
    with reader:
        if not args.request_id:
            for verdict in reader.poll(args.timeout):
                print(verdict.model_dump_json(), flush=True)
            return 0
        try:
            for verdict in iter_verdicts(reader, args.request_id, args.timeout):
                print(verdict.model_dump_json(), flush=True)
        except VerdictTimeout as exc:
            return _fail(str(exc))
        return 0


def cmd_topics(args: argparse.Namespace) -> int:
    try:
        created = create_topics(
            args.bootstrap_servers, partitions=args.partitions, timeout_s=args.timeout
        )
    except Exception as exc:  # librdkafka reports unreachable brokers as KafkaException
        return _fail(f"could not create topics on {args.bootstrap_servers}: {exc}")
    _emit({"created": created})
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in schemas().items():
        (out / name).write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        _emit({"written": str(out / name)})
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m producer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def with_broker(sub: argparse.ArgumentParser, default_timeout: float) -> None:
        sub.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT")
        sub.add_argument(
            "--timeout",
            type=float,
            default=default_timeout,
            metavar="S",
            help=f"seconds to wait for the broker and answers (default {default_timeout:g})",
        )

    submit = commands.add_parser("submit", help="publish one request per video")
    with_broker(submit, 30.0)
    submit.add_argument("--topic", default=REQUESTS_TOPIC)
    submit.add_argument("--sha256", action="store_true", help="send the file's SHA-256")
    submit.add_argument("--metadata", nargs="*", default=[], metavar="K=V")
    submit.add_argument("targets", nargs="+", metavar="URI_OR_PATH")
    submit.set_defaults(run=cmd_submit)

    results = commands.add_parser("results", help="print verdicts as JSON lines")
    with_broker(results, 60.0)
    results.add_argument("--topic", default=VERDICTS_TOPIC)
    results.add_argument(
        "--request-id",
        action="extend",
        nargs="+",
        default=[],
        metavar="ID",
        help="exit 0 once each id has a verdict, non-zero on timeout (repeatable)",
    )
    results.add_argument(
        "--from-beginning",
        action="store_true",
        help="read the topic from its start instead of new verdicts only",
    )
    results.add_argument(
        "--read-uncommitted",
        action="store_true",
        help="also show verdicts of open or aborted transactions (default: committed only)",
    )
    results.set_defaults(run=cmd_results)

    topics = commands.add_parser("topics", help="create the request, verdict and DLQ topics")
    with_broker(topics, 30.0)
    topics.add_argument("--partitions", type=int, default=4)
    topics.set_defaults(run=cmd_topics)

    schema = commands.add_parser("schemas", help="write the JSON Schemas of both messages")
    schema.add_argument("--out", type=Path, default=DEFAULT_SCHEMA_DIR)
    schema.set_defaults(run=cmd_schemas)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)
