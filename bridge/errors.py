"""Turn failures inside a node into one clear error, and give memory back first."""

from __future__ import annotations

import contextlib
import gc

import comfy.model_management
import torch

from ..quant import ram_guard
from ..quant.ram_guard import LoadRefused, private_bytes_by_preset, weight_bytes_by_preset  # noqa: F401 (re-exported)
from ..quant.units import format_gib


def _is_oom(e: BaseException) -> bool:
    # CUDA: torch.OutOfMemoryError. CPU: torch raises RuntimeError("... DefaultCPUAllocator: can't
    # allocate memory ..."), Python's own buffers MemoryError.
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "can't allocate memory" in str(e)
    )


def _release() -> None:
    """Collect, empty the device caches, and hand freed heap pages back to the OS (glibc keeps
    freed chunks of a large failed load in its arenas otherwise: the process RSS would stay up)."""
    gc.collect()
    comfy.model_management.soft_empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def ram_available() -> int | None:
    """System RAM available now (MemAvailable: free memory plus reclaimable file cache), or None
    where it cannot be read. The host's probe (psutil, one of its requirements), the one the node's
    estimates compare against."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def refuse_if_too_big(plan, what: str, tensor_dtype=None) -> None:
    """quant/ram_guard's refusal, with the RAM available as the host's probe sees it."""
    ram_guard.refuse_if_too_big(plan, what, tensor_dtype, available=ram_available())


def _available(e: BaseException) -> tuple[str, int | None]:
    """(where, bytes available now) for the memory that ran out: the CUDA device for a CUDA OOM,
    else system RAM (the loader streams weights into RAM; the host moves them to the GPU later)."""
    if isinstance(e, torch.OutOfMemoryError) and torch.cuda.is_available():
        dev = comfy.model_management.get_torch_device()
        return f"free on {dev}", int(comfy.model_management.get_free_memory(dev))
    return "RAM available", ram_available()


def oom_message(what: str, e: BaseException, plan=None) -> str:
    head = f"{what}: out of memory while loading ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
    generic = (
        "fp8-cast holds 1 byte per weight and fits where bf16 (2 bytes) does not; try policy fp8-cast "
        "(or scaled-mm, same bytes), or free other models first"
    )
    if plan is None:
        return f"{head}. {generic}"
    est = weight_bytes_by_preset(plan)
    where, avail = _available(e)
    parts = [
        f"{head}. Estimated weights: {format_gib(est['requested'])} with policy {plan.policy.to_string()}; "
        f"{format_gib(est['fp8-cast'])} with fp8-cast or scaled-mm; {format_gib(est['bf16'])} with bf16"
    ]
    if avail is None:
        return "; ".join(parts) + f". {generic}"
    parts.append(f"{format_gib(avail)} {where} now")
    if est["requested"] <= avail:
        # The estimate fits but the load did not: something else held the memory at the time.
        advice = (
            "the requested policy fits by this estimate, so other models or processes hold the "
            "memory: free them (or restart) and retry; fp8-cast needs the least"
        )
    elif est["fp8-cast"] <= avail:
        advice = "policy fp8-cast (or scaled-mm) would fit: try it"
    else:
        advice = (
            "no mode fits the memory available now, not even fp8-cast: free other models, or use a "
            "machine with more memory"
        )
    return "; ".join(parts) + f". {advice[0].upper()}{advice[1:]}"


@contextlib.contextmanager
def node_error(what: str):
    """A failed load must leave nothing behind (no half-loaded model, no memory held): drop
    references, collect, empty caches, then let the error reach the host, which reports it on the
    node and keeps serving.

    Yields a dict: a node puts its `"plan"` there once planned, so that an out-of-memory error
    can say which modes would fit (estimated from the plan's shapes vs the memory available)."""
    ctx: dict = {}
    try:
        yield ctx
    except BaseException as e:
        if not _is_oom(e) or isinstance(e, LoadRefused):  # a refusal already says what fits
            _release()
            raise
        message = oom_message(what, e, ctx.pop("plan", None))
        # The MemoryError replaces it: the original's traceback (whose frames may hold tensors of the
        # failed load) must not ride along as its __context__.
        e.__traceback__ = None
        _release()
        raise MemoryError(message) from None
