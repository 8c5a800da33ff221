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
    ]


def read_policy(policy: str, rules: str | None) -> Policy:
    return Policy(policy).with_rules(rules or "")
