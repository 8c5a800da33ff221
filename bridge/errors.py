"""Turn failures inside a node into one clear error, and give memory back first."""
from __future__ import annotations

import contextlib
import gc

import torch

import comfy.model_management


@contextlib.contextmanager
def node_error(what: str):
    """Failed loads must leave nothing behind (issue 5): drop references, collect, empty caches,
    then let the error reach the host, which reports it on the node and keeps serving."""
    try:
        yield
    except torch.OutOfMemoryError as e:
        gc.collect()
        comfy.model_management.soft_empty_cache()
        raise MemoryError(f"{what}: out of memory while loading ({e}). fp8-cast holds 1 byte per weight "
                          f"and fits where bf16 (2 bytes) does not; try policy fp8-cast, or free other "
                          f"models first") from None
    except BaseException:
        gc.collect()
        comfy.model_management.soft_empty_cache()
        raise
