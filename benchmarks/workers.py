"""The `DFD_*` settings of benchmark workers; the processes are `deploy.local.worker_process`."""

from __future__ import annotations

from functools import partial

from deploy.local import worker_process

worker_env = partial(worker_process.worker_env, log_level="WARNING")
"""`deploy.local.worker_process.worker_env` with warnings-only logs."""
