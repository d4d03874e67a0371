"""Decode-pool targets for tests, run inside the pool's child processes (imported there by name).

`hang_or_crash` decodes normally, except for paths whose names ask it to hang in a blocking call
or to die: the supervisor must handle both like a real FFmpeg hang or segfault.
"""

from __future__ import annotations

import os
import signal
import time

from models.decode_pool import DecodeJob, decode_job
from models.video import DecodedVideo, FrameStore


def hang_or_crash(source: int | str, job: DecodeJob, store: FrameStore) -> DecodedVideo:
    """`*.hang`: block for an hour; `*.crash`: die of SIGSEGV; `*.garbage`: answer a frame that
    lies outside the shared memory; anything else: `decode_job`."""
    name = str(source)
    if name.endswith(".hang"):
        time.sleep(3600)
    if name.endswith(".crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.endswith(".garbage"):
        store.reserve(12)
        store._sock.send(  # type: ignore[attr-defined]
            b'{"done": {"frames": [[0, 1000, 1000]], "indices": [0], "timestamps_s": [0.0], '
            b'"fps": 25.0, "duration_s": 1.0, "width": 1000, "height": 1000, '
            b'"frames_decoded": 1, "packets_skipped": 0}}'
        )
        time.sleep(3600)
    return decode_job(source, job, store)
