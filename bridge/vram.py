"""What each model costs, by mode and dtype, resident on the device or offloaded; and the device."""

from __future__ import annotations

import os
from collections import defaultdict

import comfy.model_management as mm
import torch

from . import model_view


def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None or t.device.type == "meta" else t.numel() * t.element_size()


def model_stats(patcher, label: str) -> dict:
    load_device = patcher.load_device
    by_mode = defaultdict(int)
    by_dtype = defaultdict(int)
    layers = defaultdict(int)
    resident = offloaded = 0
    seen: set[int] = set()  # shared tensors (mode switches share codes) count once

    def add(t, mode=None):
        nonlocal resident, offloaded
        if t is None or id(t) in seen:
            return
        seen.add(id(t))
        n = _tensor_bytes(t)
        by_dtype[str(t.dtype).replace("torch.", "")] += n
        if mode:
            by_mode[mode] += n
        if t.device == torch.device(load_device) or (t.device.type == load_device.type == "cpu"):
            resident += n
        else:
            offloaded += n

    linears = model_view.linears(patcher)
    linear_ids = {id(m) for m in model_view.original_linears(patcher).values()}
    for _name, m in linears.items():
        ours_fp8 = getattr(m, "weight_scale", None) is not None
        mode = m.quant_mode if ours_fp8 else "bf16"
        if not ours_fp8 and m.weight is not None and m.weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            mode = "host-fp8"  # the host's own fp8 storage (a model from its loaders), no scale of ours
        layers[mode] += 1
        add(m.weight, mode)
        add(getattr(m, "weight_scale", None), mode)
        add(getattr(m, "input_scale", None), mode)
        add(m.bias, "other")
    for mod in patcher.model.diffusion_model.modules():
        if id(mod) in linear_ids or isinstance(mod, torch.nn.Linear):
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            add(t, "other")
    total = sum(by_mode.values())
    return {
        "label": label,
        "weight_bytes_by_mode": dict(by_mode),
        "weight_bytes_by_dtype": dict(by_dtype),
        "layers_by_mode": dict(layers),
        "total_bytes": total,
        "resident_bytes": resident,
        "offloaded_bytes": offloaded,
        "load_device": str(load_device),
        "loaded": any(lm.model is patcher for lm in mm.current_loaded_models),
        "host_loaded_bytes": patcher.loaded_size(),
    }


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
