"""Inputs shared by the loader and Apply Quant Policy. Names and option strings are public: they
are saved in users' workflow files (never rename them)."""

from __future__ import annotations

from comfy_api.latest import io

from ..quant.backends import BACKENDS
from ..quant.linear import ACTIVATION_SCALES
from ..quant.policy import PRESETS, Policy

POLICY_TOOLTIP = (
    "How each linear layer is stored and computed. auto: the file's fp8 layers run as scaled-mm on GPUs "
    "with fp8 tensor cores (CUDA compute capability 8.9+: Ada, Hopper, Blackwell), else fp8-cast; "
    "full-precision layers stay full precision. fp8-cast: 1 byte per weight, upcast at compute, any GPU. "
    "scaled-mm: fp8 matrix multiply, fastest, needs compute capability 8.9+ (falls back to fp8-cast "
    "elsewhere). bf16: dequantized once at load, 2 bytes per weight, reference quality."
)
RULES_TOOLTIP = (
    "Optional per-layer rules, one per line: GLOB = MODE (first match wins; # comments). Layer names "
    "have no file prefix, e.g. 'transformer_blocks.0.* = bf16' or '*.ff.* = scaled-mm'. Modes: bf16, "
    "fp8-cast, scaled-mm, auto. Non-block layers (patchify, proj_out, adaln, connectors) stay full "
    "precision unless a rule names them. Memory: fp8-cast / scaled-mm 1 byte per weight, bf16 2 bytes; "
    "scaled-mm needs CUDA compute capability 8.9+ (elsewhere it runs as fp8-cast)."
)
ACTIVATION_TOOLTIP = (
    "scaled-mm only (CUDA compute capability 8.9+; ignored by fp8-cast and bf16). static: activations "
    "quantized with the file's calibrated input_scale (clamped to the fp8 range); layers without one use "
    "dynamic. dynamic: per-tensor amax of each input, one extra reduction per layer, robust to "
    "out-of-range activations. Neither stores anything: no extra memory."
)
BACKEND_TOOLTIP = (
    "scaled-mm only (CUDA compute capability 8.9+). auto: TensorRT-LLM's cuBLAS fp8 GEMM when tensorrt_llm "
    "is installed (CUDA only), else torch._scaled_mm. tensorrt-llm: require it (error if absent). torch: "
    "always torch._scaled_mm. Both read the same fp8 weights: no extra memory."
)


WEIGHT_BUDGET_TOOLTIP = (
    "Optional ceiling on the MODEL's weight memory, e.g. '20GB', '20 GB' or '18.5GiB' (B, KB, MB, GB count "
    "in powers of 1000; KiB, MiB, GiB in powers of 1024); empty: no budget. Counts what the load report's "
    "total and the VRAM Report show: every weight, scale and other tensor held. While the model is larger, "
    "full-precision layers go fp8 (1 byte per weight instead of 2), least harmful first by their measured "
    "fp8 error; layers your rules name keep their mode. Refused, before loading, when even the smallest "
    "model cannot fit. The same as a 'budget=SIZE' line in rules; both set must agree. Any GPU or CPU."
)


def policy_inputs() -> list:
    return [
        io.Combo.Input("policy", options=list(PRESETS), default="auto", tooltip=POLICY_TOOLTIP),
        io.String.Input("rules", multiline=True, default="", optional=True, tooltip=RULES_TOOLTIP),
        io.Combo.Input(
            "activation_scale",
            options=list(ACTIVATION_SCALES),
            default="static",
            optional=True,
            tooltip=ACTIVATION_TOOLTIP,
        ),
        io.Combo.Input("backend", options=list(BACKENDS), default="auto", optional=True, tooltip=BACKEND_TOOLTIP),
        # Appended last: saved workflows link inputs by position.
        io.String.Input("weight_budget", default="", optional=True, tooltip=WEIGHT_BUDGET_TOOLTIP),
    ]


def read_policy(policy: str, rules: str | None, weight_budget: str | None = "") -> Policy:
    """The preset, the rules (which may hold a `budget=SIZE` term) and the weight_budget input; two
    budgets that differ are refused (quant.policy.Policy.with_budget)."""
    return Policy(policy).with_rules(rules or "").with_budget(weight_budget or "")
