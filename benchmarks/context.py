"""What every benchmark gets: its size, a work directory, the services and the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from benchmarks.assets import (
    onet_spec,
    representative_spec,
    smoke_spec,
    synth_videos,
    write_checkpoint,
)
from benchmarks.machine import bf16_supported, machine_info
from benchmarks.report import Report
from deploy.local.worker_process import REPO
from models.spec import ComputeDtype

Size = Literal["smoke", "full"]
Model = Literal["size", "onet"]
MODELS: tuple[Model, ...] = get_args(Model)
"""`--model`: the size's own (representative ResNet50 at `full`, the smoke model at `smoke`) or
the demo's O-net model (`benchmarks.assets.onet_spec`)."""


class ProbeFailed(RuntimeError):
    """A child measuring process failed."""


@dataclass
class Context:
    size: Size
    root: Path  # shared by the benchmarks of one command (checkpoints)
    workdir: Path  # this benchmark's own
    kafka: str | None = None
    redis_url: str | None = None
    device: str = "cpu"  # torch device of the benchmarks that take one (`stages`)
    resolution: str = "160"  # clip size of `stages` and `pipeline` (benchmarks.assets)
    gop: str | None = None  # their keyframe interval (None: the synth's own 160 px clips)
    delivery: str = "at-least-once"  # the workers' DFD_DELIVERY where a benchmark takes it (drills)
    model: Model = "size"  # the benchmark checkpoint's model

    @property
    def dtype(self) -> ComputeDtype:
        """The worker spec's compute dtype: bfloat16 where the device runs it natively."""
        return "bfloat16" if bf16_supported(self.device) else "float32"

    def checkpoint(self) -> Path:
        """The benchmark checkpoint of this size and model (representative for `full`), made
        once."""
        name = self.size if self.model == "size" else self.model
        path = self.root / f"bench-{name}-{self.dtype}.safetensors"
        if not path.is_file():
            if self.model == "onet":
                spec = onet_spec
            else:
                spec = representative_spec if self.size == "full" else smoke_spec
            write_checkpoint(path, spec(self.dtype))
        return path

    def videos(self, count: int, *, frames: int, fps: float, seed: int) -> list[Path]:
        """`count` clips of this context's resolution and GOP under `workdir/videos`."""
        return synth_videos(
            self.workdir / "videos",
            count,
            frames=frames,
            fps=fps,
            seed=seed,
            resolution=self.resolution,
            gop=self.gop,
        )

    def report(self, name: str, **config: Any) -> Report:
        clips = {"resolution": self.resolution, "gop": self.gop, "model": self.model}
        return Report(
            name=name,
            size=self.size,
            machine=machine_info(self.device),
            config=clips | config,
        )


def run_probe(*args: str | Path) -> dict[str, Any]:
    """Run `python -m benchmarks.probe ARGS` and return its JSON line."""
    command = [sys.executable, "-m", "benchmarks.probe", *map(str, args)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ProbeFailed(f"{' '.join(command[3:5])} failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
