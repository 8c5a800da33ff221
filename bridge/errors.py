"""Turn failures inside a node into one clear error, and give memory back first."""

from __future__ import annotations

import contextlib
import gc

import comfy.model_management
import torch

from ..quant.holdings import layer_weight_bytes, other_tensor_bytes
from ..quant.modes import decide_mode
from ..quant.policy import Policy
from ..quant.stream import private_bytes
from ..quant.units import format_gib

_OOM_PRESETS = ("bf16", "fp8-cast")  # scaled-mm holds the same bytes as fp8-cast


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


class LoadRefused(MemoryError):
    """A load refused before it starts because it cannot fit the memory available: the message
    says what would fit. A MemoryError, so callers that handle running out of memory handle it."""


def ram_available() -> int | None:
    """System RAM available now (MemAvailable: free memory plus reclaimable file cache), or None
    where it cannot be read. The one probe of RAM the loader's estimates compare against."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def _preset_mode(plan, preset: str):
    """lp -> the mode a layer would take under `preset` (no rules)."""
    policy = Policy(preset)
    return lambda lp: decide_mode(policy, lp.name, lp.out_in, lp.stored_e4m3, plan.caps).mode


def private_bytes_by_preset(plan, tensor_dtype=None) -> dict[str, int]:
    """Private RAM the load would take with each preset (tensors converted at load; the rest stays
    file-backed, see quant/stream.py), and `"requested"`: with the plan's policy."""
    out = {"requested": private_bytes(plan, tensor_dtype)}
    for preset in _OOM_PRESETS:
        out[preset] = private_bytes(plan, tensor_dtype, mode_of=_preset_mode(plan, preset))
    return out


def refuse_if_too_big(plan, what: str, tensor_dtype=None, available: int | None = None) -> None:
    """Refuse, before a byte is read, a load whose private memory exceeds the RAM available now:
    the kernel's OOM killer would otherwise end the server half-way. The message is the
    out-of-memory estimate's, with what would fit."""
    avail = ram_available() if available is None else available
    if avail is None:
        return
    need = private_bytes_by_preset(plan, tensor_dtype)
    if need["requested"] <= avail:
        return
    est = weight_bytes_by_preset(plan)
    head = (
        f"{what}: not loaded, it would not fit in RAM: policy {plan.policy.to_string()} needs "
        f"{format_gib(need['requested'])} of private memory for the weights it converts at load, "
        f"{format_gib(avail)} RAM available now (the weights it keeps as stored stay in the file "
        f"cache, which the OS can page)"
    )
    parts = [
        f"{head}. Estimated weights: {format_gib(est['requested'])} with policy {plan.policy.to_string()}; "
        f"{format_gib(est['fp8-cast'])} with fp8-cast or scaled-mm ({format_gib(need['fp8-cast'])} of it "
        f"converted); {format_gib(est['bf16'])} with bf16 ({format_gib(need['bf16'])} converted)"
    ]
    if need["fp8-cast"] <= avail:
        advice = "Policy fp8-cast (or scaled-mm) would fit: try it"
    else:
        advice = (
            "No mode fits the memory available now, not even fp8-cast: free other models, or use a "
            "machine with more memory"
        )
    raise LoadRefused("; ".join(parts) + f". {advice}")


def weight_bytes_by_preset(plan) -> dict[str, int]:
    """Estimated bytes of the loaded model's weights if the file were loaded with each preset (no
    rules): fp8 layers 1 byte per weight + fp32 scales, bf16 layers the compute dtype's size, the
    other tensors and biases in the compute dtype. Also `"requested"`: with the plan's policy."""
    other = other_tensor_bytes(plan)

    def layer_bytes(lp, mode: str) -> int:
        return layer_weight_bytes(lp, plan.compute_dtype, mode, plan.per_row_quant)

    out = {"requested": other + sum(layer_bytes(lp, lp.mode) for lp in plan.layers)}
    for preset in _OOM_PRESETS:
        mode_of = _preset_mode(plan, preset)
        out[preset] = other + sum(layer_bytes(lp, mode_of(lp)) for lp in plan.layers)
    return out


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
