"""Where a CPU tensor's bytes live, read from the kernel (/proc/self/maps), not from the loader:
file-backed (a mapping of a file, named) or private (anonymous memory)."""

from __future__ import annotations

import os

import torch


def _maps() -> list[tuple[int, int, str]]:
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            inode = int(parts[4])
            out.append((lo, hi, parts[5].strip() if inode and len(parts) > 5 else ""))
    return out


def backing(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """name -> the real path of the file the tensor's bytes are mapped from, or "" (private)."""
    maps = _maps()
    out = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        hit = next((p for lo, hi, p in maps if lo <= ptr < hi), "")
        out[name] = os.path.realpath(hit) if hit else ""
    return out


def storage_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def live_ltxav_models() -> int:
    """How many of the host's LTXAV models are alive in this process (after a collection): a
    failed load must leave none behind."""
    import gc

    from comfy.ldm.lightricks.av_model import LTXAVModel

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, LTXAVModel))
