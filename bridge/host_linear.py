"""The host-side Linear that runs a canonical `QuantLayer` inside ComfyUI's LTXAV model.

It subclasses the host's `manual_cast.Linear` so the ModelPatcher treats it like its own ops
(lowvram partial loading, `weight_function` LoRA patches), and implements the host's LoRA
protocol (`convert_weight` / `set_weight`, comfy/model_patcher.py `get_key_weight`): a LoRA on an
fp8 layer is merged at full precision and re-quantized with a fresh scale, never re-cast without one.
"""

from __future__ import annotations

import weakref

import comfy.model_management
import comfy.ops
import torch
import torch.nn.functional as F

from ..quant.fp8 import dequantize, quantize
from ..quant.layer import QuantLayer
from ..quant.linear import linear_forward


def _meta_param(shape, dtype):
    # Built on the meta device: a 22B model must not allocate its weights twice (once at
    # construction, once when the file's tensors arrive).
    return torch.nn.Parameter(torch.empty(shape, device="meta", dtype=dtype or torch.float32), requires_grad=False)


class QuantHostLinear(comfy.ops.manual_cast.Linear):
    quant_mode = "bf16"

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = in_features, out_features
        self.weight = _meta_param((out_features, in_features), dtype)
        self.bias = _meta_param((out_features,), dtype) if bias else None
        self.register_buffer("weight_scale", None)
        self.register_buffer("input_scale", None)
        self.quant_mode = "bf16"
        self.activation = "static"
        self.backend = "torch"
        self.quant_source = "full-precision"
        # (weakref to the weight Parameter a LoRA merge wrote, its fresh scale). The host's unpatch
        # puts a new Parameter back, so the identity check below falls back to the file's scale.
        self._merged = None

    # -- loading --------------------------------------------------------------------------------
    def set_layer(self, layer: QuantLayer, activation: str = "static", backend: str = "torch"):
        if (layer.out_features, layer.in_features) != (self.out_features, self.in_features):
            raise ValueError(
                f"layer {layer.name}: [out, in] = {[layer.out_features, layer.in_features]} "
                f"but the model wants {[self.out_features, self.in_features]}"
            )
        self.weight = torch.nn.Parameter(layer.weight, requires_grad=False)
        if layer.bias is not None:
            self.bias = torch.nn.Parameter(layer.bias, requires_grad=False)
        # Buffers, so they move with the module and show in state_dict / module_size.
        self.weight_scale = layer.scale
        self.input_scale = layer.input_scale
        self.quant_mode = layer.mode
        self.activation = activation
        self.backend = backend
        self.quant_source = layer.source
        self._merged = None
        return self

    def to_layer(self, name: str) -> QuantLayer:
        """The canonical layer this module holds (shares its tensors)."""
        return QuantLayer(
            name,
            self.weight.data,
            self.current_scale(),
            self.input_scale,
            None if self.bias is None else self.bias.data,
            self.quant_mode,
            self.quant_source,
        )

    @classmethod
    def from_layer(cls, layer: QuantLayer, activation="static", backend="torch") -> QuantHostLinear:
        m = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
        return m.set_layer(layer, activation, backend)

    def current_scale(self):
        if self._merged is not None and self._merged[0]() is self.weight:
            return self._merged[1]
        return self.weight_scale

    # -- the host's LoRA protocol -----------------------------------------------------------------
    def convert_weight(self, weight, inplace=False, **kwargs):
        """Dequantize for patching: the host hands us `weight` already upcast (codes as floats)."""
        scale = self.current_scale()
        if scale is None:
            return weight
        s = scale.to(device=weight.device, dtype=weight.dtype)
        return (
            weight.mul_(s[:, None] if s.dim() == 1 else s) if inplace else weight * (s[:, None] if s.dim() == 1 else s)
        )

    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        """Re-quantize a patched full-precision weight with a fresh amax scale; keep input_scale."""
        if self.weight_scale is None:
            out = weight.to(self.weight.dtype)
            if return_weight:
                return out
            self.weight = torch.nn.Parameter(out, requires_grad=False)
            return None
        codes, scale = quantize(weight, per_row=self.weight_scale.dim() == 1)
        if return_weight:
            return dequantize(codes, scale, weight.dtype)
        self.weight = torch.nn.Parameter(codes.to(self.weight.device), requires_grad=False)
        self._merged = (weakref.ref(self.weight), scale.to(self.weight.device))
        return None

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        if self.quant_mode == "bf16" or self.weight_scale is None:
            return super().forward(x, *args, **kwargs)
        comfy.ops.run_every_op()
        dev = x.device
        nb = comfy.model_management.device_supports_non_blocking(dev)
        weight = self.weight.to(dev, non_blocking=nb)
        bias = None if self.bias is None else self.bias.to(dev, non_blocking=nb)
        scale = self.current_scale().to(dev, non_blocking=nb)
        if self.bias_function:
            bias = bias.to(x.dtype)
            for f in self.bias_function:
                bias = f(bias)
        if self.weight_function:
            # lowvram LoRA patches work on the true (dequantized) weight, then fp8-cast math.
            w = dequantize(weight, scale, x.dtype)
            for f in self.weight_function:
                w = f(w)
            return F.linear(x, w, None if bias is None else bias.to(x.dtype))
        input_scale = None if self.input_scale is None else self.input_scale.to(dev, non_blocking=nb)
        return linear_forward(x, weight, bias, scale, input_scale, self.quant_mode, self.activation, self.backend)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, mode={self.quant_mode}, weight={self.weight.dtype}"


class QuantOps(comfy.ops.manual_cast):
    """`model_options["custom_operations"]`: the host's ops with our Linear."""

    Linear = QuantHostLinear
