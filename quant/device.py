"""What the compute device can do with fp8, which decides `auto` and the scaled-mm fallbacks."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceCaps:
    name: str
    fp8_gemm: bool  # torch._scaled_mm runs here (CPU builds of torch 2.13 run it, slowly)
    fp8_gemm_fast: bool  # fp8 tensor cores: CUDA compute capability 8.9+ (Ada, Hopper, Blackwell)


def device_caps(device: torch.device | str | None = None) -> DeviceCaps:
    device = torch.device(device or "cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        fast = (major, minor) >= (8, 9)
        name = f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor})"
        return DeviceCaps(name, fp8_gemm=fast, fp8_gemm_fast=fast)
    if device.type == "cpu":
        return DeviceCaps("cpu", fp8_gemm=True, fp8_gemm_fast=False)
    # MPS, XPU, ...: no fp8 GEMM we can rely on; fp8-cast works everywhere.
    return DeviceCaps(str(device), fp8_gemm=False, fp8_gemm_fast=False)
