"""Apply Quant Policy on any LTX MODEL: swap linears on a clone through object patches.

The input MODEL is untouched for other branches of the graph (ModelPatcher.clone + object
patches, the host's own mechanism). Switching an fp8 layer between fp8-cast and scaled-mm makes a
new small module that shares the fp8 codes and scales: no weight memory is allocated. Only layers
that change storage allocate: fp8 -> bf16 (dequantize) and full precision -> fp8 (quantize).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import torch

from ..quant.device import DeviceCaps
from ..quant.fp8 import Fp8Weight
from ..quant.layer import QuantLayer
from ..quant.modes import decide_mode
from ..quant.policy import Policy
from . import model_view
from .host_linear import QuantHostLinear
from .host_model import make_ops


def _plain(w: torch.Tensor) -> torch.Tensor:
    """The host's own mixed-precision loader holds fp8 as a comfy-kitchen QuantizedTensor (a tensor
    subclass carrying its scale): dequantize it. Plain tensors pass through."""
    return w.dequantize() if type(w) not in (torch.Tensor, torch.nn.Parameter) and hasattr(w, "dequantize") else w


def _current(module, weight) -> QuantLayer:
    """The canonical layer a module holds now: ours (fp8 codes + scale, or full precision), or a
    host Linear's weight as full precision."""
    bias = None if module.bias is None else _plain(module.bias.data)
    if isinstance(module, QuantHostLinear) and module.weight_scale is not None:
        fp8 = Fp8Weight(weight.data, module.weight_scale, module.input_scale)
        return QuantLayer("", fp8, bias, module.quant_mode, module.quant_source)
    return QuantLayer("", _plain(weight.data), bias, "bf16", "full-precision")


def apply_policy(patcher, policy: Policy, caps: DeviceCaps, activation="static", backend="torch", per_row_quant=False):
    """Returns `(clone, summary)`; `summary` counts layers per mode and the bytes newly allocated."""
    clone = patcher.clone()
    model = patcher.model
    ops = make_ops(getattr(model, "manual_cast_dtype", None) is not None)
    full_dtype = model.get_dtype() if not str(model.get_dtype()).startswith("torch.float8") else torch.bfloat16
    counts, changed, allocated, notes = Counter(), Counter(), 0, []
    for name, module in model_view.linears(patcher).items():
        layer = _current(module, model_view.original_weight(patcher, name, module))
        decision = decide_mode(policy, name, (layer.out_features, layer.in_features), layer.quantized, caps)
        mode = decision.mode
        counts[mode] += 1
        if decision.fallback:
            notes.append(f"{name}: {decision.message}")
        if mode == layer.mode and (mode == "bf16" or (module.activation, module.backend) == (activation, backend)):
            continue  # already runs as asked: keep the module (and any LoRA state) as it is
        if mode == "bf16" and layer.quantized:
            new = QuantLayer(name, layer.weight.dequantize(full_dtype), layer.bias, "bf16", layer.source)
            allocated += new.weight_bytes()
        elif layer.quantized:
            new = replace(layer, name=name, mode=mode)  # shares the codes and scales
        else:
            new = QuantLayer(name, Fp8Weight.quantize(layer.weight, per_row_quant), layer.bias, mode, layer.source)
            allocated += new.weight_bytes()
        replacement = ops.Linear.from_layer(new, activation, backend)
        setattr(replacement, model_view.PATCH_FLAG, True)
        clone.add_object_patch(model_view.DM + name, replacement)
        changed[f"{layer.mode}->{mode}"] += 1
    # The host's memory planning reads model_size(); our swaps changed it.
    clone.size = _size_with_patches(clone)
    return clone, {
        "layers_by_mode": dict(counts),
        "changed": dict(changed),
        "allocated_bytes": allocated,
        "notes": notes,
        "policy": policy.to_string(),
    }


def _size_with_patches(patcher) -> int:
    import comfy.model_management

    total = comfy.model_management.module_size(patcher.model)
    for name, module in model_view.linears(patcher).items():
        orig = model_view.original_linears(patcher)[name]
        if module is not orig:
            total += comfy.model_management.module_size(module) - comfy.model_management.module_size(orig)
    return total
