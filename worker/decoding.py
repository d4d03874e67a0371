"""The worker's decoder, from its settings: the decode pool (or request threads), its memory
budget, the frame size the face stage needs, and their metrics."""

from __future__ import annotations

from models.decode_pool import DecodePool, ThreadDecoder, VideoDecoder
from models.decoders import FrameDecoder, GpuFirstDecoder
from models.faces import frame_max_side
from models.spec import PipelineSpec
from models.video_budget import MemoryBudget
from worker.metrics import Metrics
from worker.settings import WorkerSettings


def build_decoder(
    settings: WorkerSettings,
    spec: PipelineSpec,
    metrics: Metrics,
    frames: FrameDecoder | None = None,
) -> VideoDecoder:
    """A started `DecodePool` (`--decode-processes`, default one per core) or, with 0, a
    `ThreadDecoder`; both scale frames for `spec`'s face stage and share one memory budget.
    With an NVDEC `frames` decoder (`--decoder`), NVDEC decodes the videos it takes and the pool
    the rest. Raises `RuntimeError` when a decode process cannot start."""
    budget = MemoryBudget(settings.decode_memory_bytes())
    max_side = settings.decode_max_side or frame_max_side(spec.face, spec.backbone.input_size)
    processes = settings.decode_process_count()
    decoder: VideoDecoder
    if processes == 0:
        decoder = ThreadDecoder(
            settings.decode_workers, budget, max_side=max_side, threads=settings.decode_threads
        )
    else:
        pool = DecodePool(
            processes,
            budget,
            max_side=max_side,
            threads=settings.decode_threads or 1,
            on_restart=lambda reason: metrics.decode_restarts.labels(reason=reason).inc(),
        )
        pool.start()
        decoder = pool
    if frames is not None and frames.kind == "nvdec":
        decoder = GpuFirstDecoder(frames, decoder)
    metrics.decode_busy.set_function(lambda: float(decoder.busy))
    metrics.decode_queued.set_function(lambda: float(decoder.queued))
    metrics.decode_memory_bytes.set_function(lambda: float(budget.in_use))
    metrics.decode_memory_limit_bytes.set(budget.total_bytes)
    return decoder
