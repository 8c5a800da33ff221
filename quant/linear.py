"""The forward math of each mode, and `QuantLinear`, a plain-torch module running a `QuantLayer`.

The host bridge (bridge/host_linear.py) reuses `linear_forward` so the same numerics run inside
ComfyUI and in the CLI/benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backends import gemm_fp8, resolve_backend
from .fp8 import E4M3_MAX, FP8, Fp8Weight
from .layer import QuantLayer

ACTIVATION_SCALES = ("static", "dynamic")
# A dynamic activation scale never goes below this: an all-zero input must not divide by zero.
_MIN_ACT_SCALE = 1e-12


def fp8_cast_forward(x, weight: Fp8Weight, bias):
    """fp8 storage, upcast at compute: `F.linear(x, codes * scale)` in x's dtype.

    Codes are exact in bf16/fp16/fp32; the scale and the product each round in x's dtype (within
    two roundings of the compute dtype, measured 0.0026 vs 0.0023 output error in bf16). Forming
    the product in fp32 instead would cost a weight-sized fp32 temporary per layer per step.
    """
    # In place on the fresh copy: one weight-sized temporary per call, not two.
    w = weight.codes.to(x.dtype, copy=True)
    w.mul_(weight.scale_like(w))
    return F.linear(x, w, bias.to(x.dtype) if bias is not None else None)


def activation_scale(x2d: torch.Tensor, input_scale: torch.Tensor | None, activation: str) -> torch.Tensor:
    """The fp32 activation scale: the file's static `input_scale`, or the per-tensor amax / 448."""
    if activation == "static" and input_scale is not None:
        return input_scale.to(device=x2d.device, dtype=torch.float32)
    return (x2d.abs().amax().float() / E4M3_MAX).clamp_min(_MIN_ACT_SCALE)


def quantize_activation(x2d: torch.Tensor, a_scale: torch.Tensor) -> torch.Tensor:
    # The clamp is what keeps a static scale safe: without it, activations past 448 * input_scale
    # cast to NaN (e4m3fn has no inf) and the video goes black.
    return (x2d / a_scale.to(x2d.dtype)).clamp_(-E4M3_MAX, E4M3_MAX).to(FP8)


def scaled_mm_forward(x, weight: Fp8Weight, bias, activation="static", backend="torch"):
    """fp8 x fp8 GEMM through `torch._scaled_mm` (or TensorRT-LLM), output in x's dtype."""
    shape = x.shape
    x2d = x.reshape(-1, shape[-1])
    a_scale = activation_scale(x2d, weight.input_scale, activation)
    # The activation is divided by the scale in x's dtype: hand the GEMM exactly that value (an
    # fp32 scale there would bias every output by the scale's rounding, up to 2^-9 in bf16), and
    # never one that rounds to 0 there (fp16: 0 / 0 gives NaN on an all-zero input).
    a_scale = a_scale.to(x2d.dtype).clamp_min(torch.finfo(x2d.dtype).tiny).float()
    xq = quantize_activation(x2d, a_scale)
    b_scale = weight.scale.to(device=x.device, dtype=torch.float32)
    out = gemm_fp8(xq, weight.codes, a_scale, b_scale, bias, x.dtype, backend)
    return out.reshape(*shape[:-1], weight.codes.shape[0])


def linear_forward(x, weight: Fp8Weight | torch.Tensor, bias, mode, activation="static", backend="torch"):
    """Dispatch on mode; all tensors already on x's device."""
    if mode == "scaled-mm":
        return scaled_mm_forward(x, weight, bias, activation, backend)
    if mode == "fp8-cast":
        return fp8_cast_forward(x, weight, bias)
    return F.linear(x, weight.to(x.dtype), bias.to(x.dtype) if bias is not None else None)


class QuantLinear(torch.nn.Module):
    """A linear layer in one of the three modes, built from a `QuantLayer` (shares its tensors)."""

    def __init__(self, layer: QuantLayer, activation: str = "static", backend: str = "auto"):
        super().__init__()
        if activation not in ACTIVATION_SCALES:
            raise ValueError(f"activation scale must be one of {ACTIVATION_SCALES}, not {activation!r}")
        self.name = layer.name
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.mode = layer.mode
        self.activation = activation
        self.backend = resolve_backend(backend) if layer.mode == "scaled-mm" else "torch"
        codes = layer.weight.codes if layer.quantized else layer.weight
        self.weight = torch.nn.Parameter(codes, requires_grad=False)
        self.bias = None if layer.bias is None else torch.nn.Parameter(layer.bias, requires_grad=False)
        # Buffers, so the scales move with the module and count in its state_dict.
        self.register_buffer("weight_scale", layer.scale)
        self.register_buffer("input_scale", layer.input_scale)

    def forward(self, x):
        w = self.weight if self.weight_scale is None else Fp8Weight(self.weight, self.weight_scale, self.input_scale)
        return linear_forward(x, w, self.bias, self.mode, self.activation, self.backend)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, mode={self.mode}, weight={self.weight.dtype}"
