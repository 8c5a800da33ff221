"""The memory a load will take, decided from the plan before a byte is read, and the refusal of a
load that cannot fit: the kernel's OOM killer would otherwise end the process half-way (on Linux it
may pick another process, or the host server with every model it holds).

Private memory only: what `quant/stream.py` converts at load (`private_bytes`); the weights kept as
stored stay file-backed, which the OS can page. `refuse_if_too_big` is the one check, used by the
core's `stream.load` and by the node (bridge/host_model.py, with the host's RAM probe).
"""

from __future__ import annotations

from .holdings import layer_weight_bytes, other_tensor_bytes
from .modes import decide_mode
from .policy import Policy
from .stream import private_bytes
from .units import format_gib

_OOM_PRESETS = ("bf16", "fp8-cast")  # scaled-mm holds the same bytes as fp8-cast


class LoadRefused(MemoryError):
    """A load refused before it starts because it cannot fit the memory available: the message
    says what would fit. A MemoryError, so callers that handle running out of memory handle it."""


def ram_available() -> int | None:
    """System RAM available now (Linux `MemAvailable`: free memory plus the file cache the kernel can
    reclaim), or None where it cannot be read: then nothing is refused. The host's side
    (bridge/errors.ram_available) asks psutil, which also works off Linux."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _preset_mode(plan, preset: str):
    """lp -> the mode a layer would take under `preset` (no rules)."""
    policy = Policy(preset)
    return lambda lp: decide_mode(policy, lp.name, lp.out_in, lp.stored_e4m3, plan.caps).mode


def private_bytes_by_preset(plan, tensor_dtype=None, in_ram: bool | None = None) -> dict[str, int]:
    """Private RAM the load would take with each preset (tensors converted at load; the rest stays
    file-backed, see quant/stream.py), and `"requested"`: with the plan's policy."""
    out = {"requested": private_bytes(plan, tensor_dtype, in_ram)}
    for preset in _OOM_PRESETS:
        out[preset] = private_bytes(plan, tensor_dtype, in_ram, mode_of=_preset_mode(plan, preset))
    return out


def refuse_if_too_big(
    plan, what: str, tensor_dtype=None, available: int | None = None, in_ram: bool | None = None
) -> None:
    """Refuse, before a byte is read, a load whose private memory exceeds the RAM available now:
    the kernel's OOM killer would otherwise end the process half-way. The message is the
    out-of-memory estimate's, with what would fit. `available`: the caller's probe of RAM (default
    `ram_available()`); `in_ram`: the copy-mode setting of the load (default `LTX_FP8_WEIGHTS`)."""
    avail = ram_available() if available is None else available
    if avail is None:
        return
    need = private_bytes_by_preset(plan, tensor_dtype, in_ram)
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
