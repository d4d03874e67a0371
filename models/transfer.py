"""Host-to-device copies: pinned and asynchronous for CUDA, a plain move elsewhere."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`tensor` on `device`. A CPU tensor bound for CUDA is first copied into pinned (page-locked)
    memory, so the upload is a DMA that runs while the host goes on; the caching host allocator
    keeps the pinned buffer alive until the copy has finished."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
