"""The host-side Linear that runs a canonical `QuantLayer` inside ComfyUI's LTXAV model.

It subclasses the host's `manual_cast.Linear` so the ModelPatcher treats it like its own ops
(lowvram partial loading, `weight_function` LoRA patches), and implements the host's LoRA
protocol (`convert_weight` / `set_weight`, comfy/model_patcher.py `get_key_weight`): a LoRA on an
fp8 layer is merged at full precision and re-quantized with a fresh scale, never re-cast without one.
"""

from __future__ import annotations

import logging
import weakref

import comfy.model_management
import comfy.ops
import torch
import torch.nn.functional as F

from ..quant.fp8 import E4M3_MAX, FP8, Fp8Weight
from ..quant.layer import QuantLayer
from ..quant.linear import linear_forward

log = logging.getLogger("ltx_fp8")


def _meta_param(shape, dtype):
    # Built on the meta device: a 22B model must not allocate its weights twice (once at
    # construction, once when the file's tensors arrive).
    return torch.nn.Parameter(torch.empty(shape, device="meta", dtype=dtype or torch.float32), requires_grad=False)


class QuantHostLinear(comfy.ops.manual_cast.Linear):
    """The host's ModelPatcher sees what it sees on its own Linear: `weight` (a Parameter, here the
    fp8 codes), `bias`, and the scales as buffers (`weight_scale`, `input_scale`), so they move with
    the module and count in its state_dict and the host's module_size."""

    quant_mode = "bf16"

    # `device`: the host's ops constructor protocol; the weights are built on meta (see _meta_param).
    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):  # noqa: ARG002
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
        self.layer_name = ""
        # (weakref to the codes Parameter a LoRA merge wrote, their fresh scale). ComfyUI's
        # ModelPatcher.unpatch_model puts the backup Parameter back: the identity check in fp8()
        # then pairs the file's codes with the file's scale again. Only a weakref: the merged codes
        # must not outlive the merge.
        self._merged = None

    # -- loading --------------------------------------------------------------------------------
    def set_layer(self, layer: QuantLayer, activation: str = "static", backend: str = "torch"):
        if (layer.out_features, layer.in_features) != (self.out_features, self.in_features):
            raise ValueError(
                f"layer {layer.name}: [out, in] = {[layer.out_features, layer.in_features]} "
                f"but the model wants {[self.out_features, self.in_features]}"
            )
        codes = layer.weight.codes if layer.quantized else layer.weight
        self.weight = torch.nn.Parameter(codes, requires_grad=False)
        if layer.bias is not None:
            self.bias = torch.nn.Parameter(layer.bias, requires_grad=False)
        self.weight_scale = layer.scale
        self.input_scale = layer.input_scale
        self.quant_mode = layer.mode
        self.activation = activation
        self.backend = backend
        self.quant_source = layer.source
        self.layer_name = layer.name
        self._merged = None
        return self

    @classmethod
    def from_layer(cls, layer: QuantLayer, activation="static", backend="torch") -> QuantHostLinear:
        m = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
        return m.set_layer(layer, activation, backend)

    def fp8(self) -> Fp8Weight | None:
        """The fp8 weight this module computes with now (None when it holds full precision): the
        codes Parameter in place with their scale, the merged one while a LoRA merge is in place."""
        if self.weight_scale is None:
            return None
        scale = self.weight_scale
        if self._merged is not None and self._merged[0]() is self.weight:
            scale = self._merged[1]
        return Fp8Weight(self.weight, scale, self.input_scale)

    # -- the host's LoRA protocol -----------------------------------------------------------------
    def convert_weight(self, weight, inplace=False, **_host_kwargs):
        """Dequantize for patching: the host hands us `weight` already upcast (codes as floats)."""
        fp8 = self.fp8()
        if fp8 is None:
            return weight
        scale = fp8.scale_like(weight)
        return weight.mul_(scale) if inplace else weight * scale

    # The host also passes `seed` (for its stochastic rounding): amax scaling is deterministic.
    def set_weight(self, weight, return_weight=False, inplace_update=False, **_host_kwargs):
        """Re-quantize a patched full-precision weight with a fresh amax scale; keep input_scale.

        `inplace_update` (ComfyUI 0.30 comfy/model_patcher.py: `weight_inplace_update`, and
        `patch_hook_weight_to_device` for hook LoRAs, which restores with `comfy.utils.copy_to_param`):
        the host backs up and restores only the weight's bytes, in place, so the codes must stay
        valid with the scale in force: they are written in place at that scale (values beyond its
        range saturate at the e4m3 max, and the log says so). A file-backed weight is a copy-on-write
        mapping: the write privatises the pages it touches and never reaches the file."""
        fp8 = self.fp8()
        if fp8 is None:
            out = weight.to(self.weight.dtype)
            if return_weight:
                return out
            if inplace_update:
                self.weight.data.copy_(out)
                return None
            self.weight = torch.nn.Parameter(out, requires_grad=False)
            return None
        if inplace_update and not return_weight:
            scale = fp8.scale_like(weight)
            w = weight / scale
            over = float(w.abs().amax()) > E4M3_MAX
            if over:
                log.warning(
                    "layer %s: the in-place LoRA update exceeds the fp8 range of the layer's scale; "
                    "values beyond it saturate (a regular, not in-place, patch re-scales instead)",
                    self.layer_name or f"[{self.out_features}, {self.in_features}]",
                )
            codes = w.clamp_(-E4M3_MAX, E4M3_MAX).to(FP8)
            self.weight.data.copy_(codes.to(self.weight.device))
            return None
        merged = fp8.requantize(weight)
        if return_weight:
            return merged.dequantize(weight.dtype)
        merged = merged.to(self.weight.device)
        self.weight = torch.nn.Parameter(merged.codes, requires_grad=False)
        self._merged = (weakref.ref(self.weight), merged.scale)
        return None

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x, *args, **kwargs):
        if self.quant_mode == "bf16" or self.weight_scale is None:
            return super().forward(x, *args, **kwargs)
        comfy.ops.run_every_op()
        dev = x.device
        nb = comfy.model_management.device_supports_non_blocking(dev)
        weight = self.fp8().to(dev, non_blocking=nb)
        bias = None if self.bias is None else self.bias.to(dev, non_blocking=nb)
        if self.bias_function:
            bias = bias.to(x.dtype)
            for f in self.bias_function:
                bias = f(bias)
        if self.weight_function:
            # lowvram LoRA patches work on the true (dequantized) weight, then fp8-cast math.
            w = weight.dequantize(x.dtype)
            for f in self.weight_function:
                w = f(w)
            return F.linear(x, w, None if bias is None else bias.to(x.dtype))
        return linear_forward(x, weight, bias, self.quant_mode, self.activation, self.backend)

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, mode={self.quant_mode}, weight={self.weight.dtype}"
