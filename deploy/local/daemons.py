"""Background service processes tracked by pid files.

A pid file holds the pid and the process start time (Linux `/proc/<pid>/stat`), so a recycled pid
is never mistaken for the service: `stop` only ever signals the process that `start` launched.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_POLL_S = 0.1


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 of proc(5): the state
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22: starttime


class Daemon:
    """One service process in its own session, with a pid file and an appended log file."""

    def __init__(self, name: str, pid_file: Path, log_file: Path) -> None:
        self.name = name
        self.pid_file = pid_file
        self.log_file = log_file
        self._child: subprocess.Popen[bytes] | None = None

    def pid(self) -> int | None:
        """The pid of the running service, or None (a stale pid file is removed)."""
        try:
            record = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid = int(record["pid"])
        if process_start_ticks(pid) == record["start_ticks"]:
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, argv: Sequence[str], cwd: Path) -> int:
        """Launch `argv` detached from this process's session; returns its pid."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log_stream:
            child = subprocess.Popen(
                list(argv),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._child = child
        record = {"pid": child.pid, "start_ticks": process_start_ticks(child.pid)}
        tmp = self.pid_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.pid_file)
        log.info("started %s (pid %d), log %s", self.name, child.pid, self.log_file)
        return child.pid

    def exited(self) -> bool:
        """True when the process launched by this object has already exited."""
        return self._child is not None and self._child.poll() is not None

    def stop(self, timeout_s: float = 30.0, kill: bool = False) -> bool:
        """Stop the service (SIGTERM, or SIGKILL when `kill`); False if it was not running.

        A process still alive after `timeout_s` is killed.
        """
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL if kill else signal.SIGTERM)
        if not self._wait_gone(pid, timeout_s):
            log.warning(
                "%s (pid %d) ignored SIGTERM for %.0fs: killing it", self.name, pid, timeout_s
            )
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, timeout_s)
        self.pid_file.unlink(missing_ok=True)
        log.info("stopped %s (pid %d)", self.name, pid)
        return True

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while process_start_ticks(pid) is not None:
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL_S)
        if self._child is not None and self._child.pid == pid:
            self._child.wait()
            self._child = None
        return True
