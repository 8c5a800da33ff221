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

from ..quant.budget import (
    KEPT_BY_AUTHOR,
    KEPT_CODES,
    MEASURED,
    BudgetError,
    BudgetFit,
    Candidate,
    add_pin,
    choose,
    fp8_relative_error,
    impossible_message,
)
from ..quant.device import DeviceCaps
from ..quant.fp8 import Fp8Weight
from ..quant.holdings import fp8_weight_bytes
from ..quant.layer import QuantLayer
from ..quant.ltx2_shapes import is_sensitive
from ..quant.modes import decide_mode
from ..quant.policy import Policy
from . import model_view
from .host_linear import QuantHostLinear
from .host_model import make_ops
from .vram import model_rows


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
    entries = []
    for name, module in model_view.linears(patcher).items():
        layer = _current(module, model_view.original_weight(patcher, name, module))
        decision = decide_mode(policy, name, (layer.out_features, layer.in_features), layer.quantized, caps)
        entries.append((name, module, layer, decision))
    budget = None
    if policy.budget is not None:
        moving, budget = _fit_budget(patcher, policy, entries, full_dtype, per_row_quant)
        entries = [
            (n, m, lay, decide_mode(policy, n, (lay.out_features, lay.in_features), lay.quantized, caps, True))
            if n in moving
            else (n, m, lay, d)
            for n, m, lay, d in entries
        ]
    for name, module, layer, decision in entries:
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
        "budget": budget,
    }


def _held_bytes(layer: QuantLayer, mode: str, full_dtype: torch.dtype, per_row_quant: bool) -> int:
    """Bytes `layer` will hold in `mode` after the swap: its own tensors when its storage stays, a
    dequantized copy in the model's dtype, or fresh fp8 codes with their scale."""
    if (mode == "bf16") != layer.quantized:
        return layer.weight_bytes()
    if mode == "bf16":
        return layer.out_features * layer.in_features * full_dtype.itemsize
    return fp8_weight_bytes(layer.out_features, layer.in_features, per_row_quant, False)


def _fit_budget(patcher, policy: Policy, entries, full_dtype, per_row_quant) -> tuple[set[str], dict]:
    """Which full-precision layers go fp8 for the returned MODEL to fit the policy's budget: the
    loader's rules (quant/budget.py) on the live weights, which are in memory (nothing to read)."""
    target = policy.budget_bytes
    _, others, _ = model_rows(patcher)
    other_bytes = sum(r.bytes for r in others)
    held = {n: _held_bytes(lay, d.mode, full_dtype, per_row_quant) for n, _, lay, d in entries}
    unbudgeted = sum(held.values()) + other_bytes
    has_fp8 = any(lay.quantized for _, _, lay, _ in entries)
    pool, pinned, fp8_floor = [], {}, 0
    for n, _, lay, d in entries:
        rule = policy.rule_for(n) if d.mode == "bf16" else None
        fp8 = _held_bytes(lay, "fp8-cast", full_dtype, per_row_quant)
        if rule is not None:
            add_pin(pinned, rule, held[n])
            continue
        fp8_floor += fp8
        if d.mode != "bf16":
            continue
        if lay.quantized:
            tier, err = KEPT_CODES, 0.0
        else:
            tier = KEPT_BY_AUTHOR if has_fp8 or is_sensitive(n) else MEASURED
            err = None  # measured below, only when the budget needs it
        pool.append([n, lay, held[n] - fp8, tier, err])
    minimum = unbudgeted - sum(c[2] for c in pool)
    if minimum > target:
        msg = impossible_message(policy, target, minimum, len(pool), pinned, other_bytes, fp8_floor, full_dtype)
        raise BudgetError(msg)
    moved, total = [], unbudgeted
    if unbudgeted > target:
        for c in pool:
            if c[4] is None:
                c[4] = fp8_relative_error(c[1].weight, per_row_quant)
        cands = [Candidate(n, lay.out_features * lay.in_features, s, t, e) for n, lay, s, t, e in pool]
        moved, total = choose(cands, unbudgeted, target)
    fit = BudgetFit(policy.budget, target, total, unbudgeted, minimum, len(pool), tuple(moved))
    return {c.name for c in moved}, fit.as_dict()


def _size_with_patches(patcher) -> int:
    import comfy.model_management

    total = comfy.model_management.module_size(patcher.model)
    for name, module in model_view.linears(patcher).items():
        orig = model_view.original_linears(patcher)[name]
        if module is not orig:
            total += comfy.model_management.module_size(module) - comfy.model_management.module_size(orig)
    return total
