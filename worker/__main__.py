"""`python -m worker`: the Kafka-fed streaming deepfake detector (`--help` lists every option)."""

from __future__ import annotations

import json
import logging
import os
import sys

from pydantic import ValidationError

from worker.app import EXIT_STARTUP, WorkerApp
from worker.logs import configure_logging
from worker.settings import load_settings


def main(argv: list[str] | None = None) -> int:
    """Run one worker until SIGTERM/SIGINT; returns the exit code."""
    try:
        settings = load_settings(argv if argv is not None else sys.argv[1:])
    except ValidationError as exc:
        error = {"level": "ERROR", "msg": "invalid worker settings", "detail": str(exc)}
        print(json.dumps(error), file=sys.stderr)
        return EXIT_STARTUP
    configure_logging(settings.log_format, settings.log_level)
    return WorkerApp(settings).run()


def exit_now(code: int) -> None:
    """Exit without interpreter teardown once Kafka is closed and logs are flushed.

    Tearing down torch takes seconds, and a request stuck past the drain deadline would keep
    its pool thread (and the process) alive; its message is redelivered to another worker.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
