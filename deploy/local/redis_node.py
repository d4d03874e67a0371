"""A throw-away Redis server (Debian's redis-server) on 127.0.0.1 without persistence."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from deploy.local.daemons import Daemon
from deploy.local.errors import MissingTool, StartFailed
from deploy.local.ports import HOST, ensure_free

log = logging.getLogger(__name__)


def render_redis_conf(port: int, work_dir: Path) -> str:
    """Loopback-only, no RDB snapshots, no AOF, runs in the foreground (we track its pid)."""
    return (
        f"bind {HOST}\n"
        f"port {port}\n"
        'save ""\n'
        "appendonly no\n"
        "daemonize no\n"
        f"dir {work_dir}\n"
        f"logfile {work_dir / 'redis.log'}\n"
    )


def _redis_server() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise MissingTool("redis-server not found: apt-get install redis-server")
    return binary


class RedisNode:
    """One redis-server whose config, log and pid file live under `home`."""

    def __init__(self, home: Path, port: int) -> None:
        self.home = home
        self.port = port
        self.config_file = home / "redis.conf"
        self.daemon = Daemon("redis", home / "redis.pid", home / "stdout.log")

    @property
    def url(self) -> str:
        """Client URL, `redis://127.0.0.1:<port>/0`."""
        return f"redis://{HOST}:{self.port}/0"

    def pid(self) -> int | None:
        return self.daemon.pid()

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True when the server answers PING."""
        client = redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self, timeout_s: float = 30.0) -> bool:
        """Start the server and wait for PING; False when it was already running."""
        if self.pid() is not None:
            return False
        binary = _redis_server()
        ensure_free(self.port, "Redis")
        self.home.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(render_redis_conf(self.port, self.home))
        self.daemon.start([binary, str(self.config_file)], cwd=self.home)
        deadline = time.monotonic() + timeout_s
        while not self.is_ready():
            if self.daemon.exited():
                raise StartFailed(f"redis-server exited while starting; see {self.home}/redis.log")
            if time.monotonic() > deadline:
                raise StartFailed(f"Redis did not answer PING within {timeout_s:.0f}s")
            time.sleep(0.05)
        return True

    def stop(self, timeout_s: float = 10.0, kill: bool = False) -> bool:
        """Stop the server (SIGTERM, or SIGKILL when `kill`); False if it was not running."""
        return self.daemon.stop(timeout_s, kill=kill)
