"""The machine a benchmark ran on, named in every report."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor string elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (what the worker's autocast needs)."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def bf16_supported(device: str) -> bool:
    """Whether `device` (cpu or cuda[:n]) computes bfloat16 natively."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_bf16_supported()


def gpu_info(device: str) -> dict[str, Any]:
    """The CUDA card's name, memory and the CUDA version torch was built with; empty on CPU."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return {}
    properties = torch.cuda.get_device_properties(torch.device(device))
    return {
        "gpu": properties.name,
        "gpu_memory_gib": round(properties.total_memory / 2**30, 1),
        "gpu_multiprocessors": properties.multi_processor_count,
        "cuda": torch.version.cuda,
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, torch threads, device (and its card) and the software versions."""
    flags = cpu_flags()
    return {
        **gpu_info(device),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cpu_bf16": cpu_bf16_supported(),
        "bf16_flags": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "kernel": platform.release(),
    }
