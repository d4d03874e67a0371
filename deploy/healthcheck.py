"""`python -m deploy.healthcheck`: the container HEALTHCHECK; exit 0 when `/healthz` answers 200.

The port is `DFD_METRICS_PORT` when set, else `DEFAULT_PORT`. This module imports only the
standard library: the check runs every 30 s, and the worker's settings would pull in
pydantic-settings and confluent-kafka (a test keeps `DEFAULT_PORT` equal to the settings' default).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORT_ENV = "DFD_METRICS_PORT"
DEFAULT_PORT = 9100
TIMEOUT_S = 3.0


def healthz_url() -> str:
    """The worker's `/healthz` on loopback."""
    port = os.environ.get(PORT_ENV) or DEFAULT_PORT
    return f"http://127.0.0.1:{port}/healthz"


def main() -> int:
    url = healthz_url()
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
