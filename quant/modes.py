"""Which mode a layer runs in, and why it is not the one asked for: the one decision every caller
makes through `decide_mode` (the planner, Apply Quant Policy, the out-of-memory estimate, and so
the load report).

The policy asks (first matching rule, else the preset; `auto` means the device's best fp8 mode for
a layer stored as e4m3 codes, full precision otherwise); the kernel and the device may then refuse
scaled-mm, and the layer falls back to fp8-cast (same bytes, dequantized at forward) with a typed
reason. The text of every fallback message is written here, once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .device import DeviceCaps
from .ltx2_shapes import is_sensitive
from .policy import Policy

FP8_GEMM_NEEDS = "CUDA compute capability 8.9+"


class Fallback(enum.Enum):
    """Why a layer asked to run as scaled-mm runs as fp8-cast."""

    NO_FP8_GEMM = "no-fp8-gemm"  # the device has no fp8 GEMM (CUDA below compute capability 8.9)
    KERNEL_DIMS = "kernel-dims"  # the fp8 GEMM needs both dims multiples of 16


@dataclass(frozen=True)
class ModeDecision:
    mode: str  # how the layer computes, after any fallback
    requested: str  # what the policy asked for
    fallback: Fallback | None = None
    out_in: tuple[int, int] = (0, 0)  # context of the message
    device: str = ""
    # The policy's weight budget moved this layer from full precision to fp8 (quant/budget.py):
    # without the budget it would run in bf16.
    by_budget: bool = False

    @property
    def message(self) -> str:
        """Why `mode` is not `requested`, for one layer; empty without a fallback."""
        if self.fallback is Fallback.KERNEL_DIMS:
            return f"scaled-mm needs dims multiple of 16, got [{self.out_in[0]}, {self.out_in[1]}]"
        if self.fallback is Fallback.NO_FP8_GEMM:
            return f"{self.device} has no fp8 GEMM (needs {FP8_GEMM_NEEDS})"
        return ""


def fallback_warning(fallback: Fallback, names: list[str], device: str) -> str:
    """One warning for all the layers of a load that fell back for the same reason."""
    if fallback is Fallback.NO_FP8_GEMM:
        return (
            f"scaled-mm is not available on {device}: {len(names)} layers run as "
            f"fp8-cast instead (fp8 GEMM needs {FP8_GEMM_NEEDS})"
        )
    return (
        f"{len(names)} layers have dims not multiple of 16 and run as fp8-cast: "
        f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}"
    )


def kernel_accepts(out_features: int, in_features: int) -> bool:
    """cuBLAS fp8 GEMM needs K and N multiples of 16 (a gate-logit layer `[heads, dim]` fails
    this when the head count is not a multiple of 16)."""
    return out_features % 16 == 0 and in_features % 16 == 0


def decide_mode(
    policy: Policy,
    name: str,
    out_in: tuple[int, int],
    stored_fp8: bool,
    caps: DeviceCaps,
    by_budget: bool = False,
) -> ModeDecision:
    """The mode of layer `name` (`[out, in]` = `out_in`) under `policy` on a device with `caps`.

    `stored_fp8`: the layer holds e4m3 codes with their scale (what `auto` keeps as fp8). Layers
    outside the transformer blocks (patchify, proj_out, adaln, connectors) keep the file's storage
    unless a rule names them: the official fp8 files never quantize them.

    `by_budget`: the weight budget's planner (quant/budget.py) chose this layer to go fp8 (the
    device's best fp8 mode, subject to the same fallbacks). A rule the user wrote for the layer
    wins over the budget: such a layer is never moved.
    """
    rule = policy.rule_for(name)
    wanted = rule.mode if rule else policy.preset
    if rule is None and wanted != "bf16" and is_sensitive(name):
        wanted = "auto"
    if wanted == "auto":
        wanted = ("scaled-mm" if caps.fp8_gemm_fast else "fp8-cast") if stored_fp8 else "bf16"
    by_budget = by_budget and rule is None and wanted == "bf16"
    if by_budget:
        wanted = "scaled-mm" if caps.fp8_gemm_fast else "fp8-cast"
    fallback = None
    if wanted == "scaled-mm" and not kernel_accepts(*out_in):
        fallback = Fallback.KERNEL_DIMS
    elif wanted == "scaled-mm" and not caps.fp8_gemm:
        fallback = Fallback.NO_FP8_GEMM
    mode = "fp8-cast" if fallback else wanted
    return ModeDecision(mode, wanted, fallback, (int(out_in[0]), int(out_in[1])), caps.name, by_budget)
