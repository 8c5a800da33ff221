"""The quant core: read any LTX-2 fp8 checkpoint encoding, keep every scale, hold each layer as
`[out, in]`, and run it as fp8-cast, scaled-mm or bf16. torch + safetensors only; never imports
ComfyUI (the pack's bridge/ does). `python -m quant --help` for the command line."""

from .device import DeviceCaps, device_caps
from .errors import CheckpointError
from .fp8 import Fp8Weight
from .layer import MODES, QuantLayer
from .linear import QuantLinear, linear_forward
from .modes import Fallback, ModeDecision, decide_mode
from .plan import LoadPlan, plan_checkpoint
from .policy import PRESETS, Policy, PolicyError
from .report import build_report, format_text
from .stream import iter_load, load

__all__ = [
    "CheckpointError",
    "DeviceCaps",
    "Fallback",
    "Fp8Weight",
    "LoadPlan",
    "MODES",
    "ModeDecision",
    "PRESETS",
    "Policy",
    "PolicyError",
    "QuantLayer",
    "QuantLinear",
    "build_report",
    "decide_mode",
    "device_caps",
    "format_text",
    "iter_load",
    "linear_forward",
    "load",
    "plan_checkpoint",
]
