"""`python -m deploy.local up|down|status`: the local Kafka (KRaft) + Redis stack.

    python -m deploy.local up [--partitions 4] [--env]
    python -m deploy.local status [--env]     # exit 0 only when Kafka and Redis both answer
    python -m deploy.local down               # stops only what `up` started in this state dir

Common options: --state-dir (env DFD_LOCAL_STATE_DIR, default <repo>/.dfd/local),
--kafka-port (DFD_LOCAL_KAFKA_PORT, 19092), --controller-port (DFD_LOCAL_KAFKA_CONTROLLER_PORT,
Kafka port + 1), --redis-port (DFD_LOCAL_REDIS_PORT, 16379); 0 picks a free port. The Kafka jars
are copied once by Maven into DFD_KAFKA_LIBS (default ~/.cache/dfd/kafka-<version>/libs).

Output: one JSON line on stdout, e.g. for `up`
    {"kafka_bootstrap": "127.0.0.1:19092", "redis_url": "redis://127.0.0.1:16379/0", ...}
With --env, shell lines instead, for the test fixtures and CI:
    eval "$(python -m deploy.local up --env)"
exports DFD_TEST_KAFKA_BOOTSTRAP and DFD_TEST_REDIS_URL. Logs go to stderr; service logs, data
and pid files stay in the state dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from deploy.local.errors import LocalStackError
from deploy.local.stack import LocalStack

KAFKA_ENV = "DFD_TEST_KAFKA_BOOTSTRAP"
REDIS_ENV = "DFD_TEST_REDIS_URL"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, default=None)
    common.add_argument("--kafka-port", type=int, default=None)
    common.add_argument("--controller-port", type=int, default=None)
    common.add_argument("--redis-port", type=int, default=None)
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", parents=[common], help="start the stack and create the topics")
    up.add_argument("--partitions", type=int, default=4, help="partitions per topic (default 4)")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    up.add_argument("--env", action="store_true", help="print export lines instead of JSON")
    status = commands.add_parser("status", parents=[common], help="exit 0 when both answer")
    status.add_argument("--env", action="store_true", help="print export lines instead of JSON")
    commands.add_parser("down", parents=[common], help="stop what up started")
    return parser


def _print_addresses(stack: LocalStack, as_env: bool, fields: dict[str, object]) -> None:
    if as_env:
        print(f"export {KAFKA_ENV}={shlex.quote(stack.kafka_bootstrap)}")
        print(f"export {REDIS_ENV}={shlex.quote(stack.redis_url)}")
        return
    addresses = {"kafka_bootstrap": stack.kafka_bootstrap, "redis_url": stack.redis_url}
    print(json.dumps({**addresses, **fields, "state_dir": str(stack.state_dir)}))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        stack = LocalStack(args.state_dir, args.kafka_port, args.controller_port, args.redis_port)
        if args.command == "up":
            result = stack.up(partitions=args.partitions, timeout_s=args.timeout)
            fields = {"started": result.started, "topics_created": result.topics_created}
            _print_addresses(stack, args.env, fields)
            return 0
        if args.command == "status":
            status = stack.status()
            _print_addresses(stack, args.env, status.to_dict())
            return 0 if status.ready else 1
        print(json.dumps({"stopped": stack.down(), "state_dir": str(stack.state_dir)}))
        return 0
    except LocalStackError as exc:
        print(json.dumps({"error": exc.code, "message": exc.message}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
