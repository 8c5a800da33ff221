"""What each model costs, by mode and dtype, resident on the device or offloaded; and the device."""

from __future__ import annotations

import os
from collections import defaultdict

import comfy.model_management as mm
import torch

from ..quant.fp8 import is_fp8
from ..quant.holdings import HOST_FP8, LayerRow, TensorRow, by_mode, holdings
from . import model_view
from .host_linear import QuantHostLinear


def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.device.type == "meta" else t.numel() * t.element_size()


def layer_state(module) -> tuple[str, tuple[torch.Tensor | None, ...]]:
    """(mode, the tensors holding its weight) of a live linear, as it will run: this pack's fp8
    layer (codes, scale, input scale; its quant_mode), the host's own scale-less fp8 storage
    (HOST_FP8), or a full-precision weight ("bf16"). The one place that reads a live linear's
    storage; its bias is an other tensor."""
    fp8 = module.fp8() if isinstance(module, QuantHostLinear) else None
    if fp8 is not None:  # the scale in force: a LoRA merge's fresh one while it is in place
        return module.quant_mode, (fp8.codes, fp8.scale, fp8.input_scale)
    w = module.weight
    return (HOST_FP8 if w is not None and is_fp8(w.dtype) else "bf16"), (w,)


def model_rows(patcher) -> tuple[list[LayerRow], list[TensorRow], list[torch.Tensor]]:
    """The rows of the model a ModelPatcher will run (its own object patches resolved), and the
    tensors they count. Each tensor counts once: the modes of one fp8 layer share its codes."""
    seen: set[int] = set()
    counted: list[torch.Tensor] = []

    def take(tensors) -> int:
        n = 0
        for t in tensors:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                counted.append(t)
                n += _tensor_bytes(t)
        return n

    layers, others = [], []
    linears = model_view.linears(patcher)
    for name, m in linears.items():
        mode, tensors = layer_state(m)
        w = m.weight
        out_f, in_f = (w.shape[0], w.shape[1]) if w is not None else (m.out_features, m.in_features)
        layers.append(LayerRow(name, mode, out_f, in_f, take(tensors)))
        if m.bias is not None:
            others.append(TensorRow(name + ".bias", take((m.bias,))))
    skip = {id(m) for m in model_view.original_linears(patcher).values()}
    for mod_name, mod in patcher.model.diffusion_model.named_modules():
        if id(mod) in skip or isinstance(mod, torch.nn.Linear):
            continue
        for t_name, t in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            if t is not None and id(t) not in seen:
                others.append(TensorRow(f"{mod_name}.{t_name}" if mod_name else t_name, take((t,))))
    return layers, others, counted


def model_stats(patcher, label: str) -> dict:
    """The VRAM Report's figures of one model: its holdings (quant/holdings.py), by dtype, and
    how many bytes are resident on its load device vs offloaded."""
    load_device = patcher.load_device
    layers, others, counted = model_rows(patcher)
    held = holdings(layers, others)
    by_dtype: dict[str, int] = defaultdict(int)
    resident = offloaded = 0
    for t in counted:
        n = _tensor_bytes(t)
        by_dtype[str(t.dtype).replace("torch.", "")] += n
        if t.device == torch.device(load_device) or (t.device.type == load_device.type == "cpu"):
            resident += n
        else:
            offloaded += n
    weight_bytes_by_mode = by_mode(held, "bytes")
    if held["other"]["tensors"]:
        weight_bytes_by_mode["other"] = held["other"]["bytes"]
    return {
        "label": label,
        "holdings": held,
        # Flat views of `holdings`, kept for readers of the report's JSON: weight_bytes_by_mode
        # includes the other tensors under "other".
        "weight_bytes_by_mode": weight_bytes_by_mode,
        "weight_bytes_by_dtype": dict(by_dtype),
        "layers_by_mode": by_mode(held, "layers"),
        "total_bytes": held["total_bytes"],
        "resident_bytes": resident,
        "offloaded_bytes": offloaded,
        "load_device": str(load_device),
        "loaded": any(lm.model is patcher for lm in mm.current_loaded_models),
        "host_loaded_bytes": patcher.loaded_size(),
    }


def model_holdings(patcher) -> dict:
    """What the model a ModelPatcher will run holds (the Apply Quant Policy badge)."""
    layers, others, _ = model_rows(patcher)
    return holdings(layers, others)


def device_stats(device=None) -> dict:
    device = device or mm.get_torch_device()
    out = {
        "device": str(device),
        "total_bytes": int(mm.get_total_memory(device)),
        "free_bytes": int(mm.get_free_memory(device)),
    }
    if getattr(device, "type", str(device)) == "cuda":
        out["cuda"] = {
            "name": torch.cuda.get_device_name(device),
            "allocated_bytes": torch.cuda.memory_allocated(device),
            "reserved_bytes": torch.cuda.memory_reserved(device),
            "peak_allocated_since_last_report_bytes": torch.cuda.max_memory_allocated(device),
        }
        torch.cuda.reset_peak_memory_stats(device)
    try:
        import psutil

        proc = psutil.Process(os.getpid())
        vm = psutil.virtual_memory()
        out["process_rss_bytes"] = proc.memory_info().rss
        out["system_ram_total_bytes"] = vm.total
        out["system_ram_available_bytes"] = vm.available
    except ImportError:  # psutil is a host requirement; a stripped host still gets a report
        pass
    return out
