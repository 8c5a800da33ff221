"""Write a live MODEL as an fp8 bundle: the node "Save LTX FP8 Checkpoint".

Each layer is written as the model runs it: an fp8 layer as its codes with the scale in force (a
LoRA merged in: the merged codes with their fresh scale, `QuantHostLinear.fp8()`), a layer in bf16
mode at full precision; the other transformer tensors as the model holds them. The source bundle
gives what the model does not hold: the passengers (copied byte for byte), the header's `config`
and `model_version`, the key prefix, and the dtype of each full-precision tensor whose values came from it
unchanged (a CPU host holds a bf16 file's weights upcast to fp32: written back as bf16, exactly). A
full-precision tensor the model changed (a LoRA merged into a bf16-mode layer, an fp8 layer
dequantized by Apply Quant Policy) is written in the dtype the model holds it in, so that loading
the file gives the model's values. The file is written through quant's streaming writer: complete
or absent.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.utils
import torch

from ..quant.convert import (
    ENCODINGS,
    check_encoding,
    copied_keys,
    copy_unchanged,
    layer_specs,
    layer_tensors,
    output_metadata,
    refuse_per_row,
)
from ..quant.device import device_caps
from ..quant.errors import CheckpointError
from ..quant.fp8 import FP8, Fp8Weight, is_fp8
from ..quant.plan import plan_checkpoint
from ..quant.safetensors_header import DTYPES
from ..quant.safetensors_writer import SafetensorsWriter, TensorSpec, st_dtype
from . import model_view
from .host_linear import QuantHostLinear

__all__ = ["ENCODINGS", "save_model"]


def _host_fp8(name: str, module, w) -> Fp8Weight | None:
    """The host's own fp8 storage as an Fp8Weight (None: full precision): comfy-kitchen's
    QuantizedTensor in the per-tensor float8_e4m3fn layout (`_qdata` codes with `_params.scale`,
    ComfyUI 0.30 comfy/quant_ops.py), or a plain e4m3 weight without a scale (UNETLoader's fp8
    weight_dtype: the codes are the values). Other storage is refused, naming the layer."""
    qdata, params = getattr(w, "_qdata", None), getattr(w, "_params", None)
    scale = getattr(params, "scale", None)
    if qdata is not None and scale is not None and qdata.dtype == FP8 and qdata.dim() == 2 and scale.numel() == 1:
        return Fp8Weight(qdata, scale.float().reshape(()), _input_scale(module))
    if qdata is None and w.dtype == FP8:
        return Fp8Weight(w.data, torch.ones((), dtype=torch.float32))
    if qdata is not None or is_fp8(w.dtype):
        raise CheckpointError(
            f"layer {name}: the host holds its weight as {type(w).__name__} {getattr(qdata, 'dtype', w.dtype)}, "
            f"which this node cannot write as e4m3 codes with one scale; load the model with Load LTX FP8 "
            f"Checkpoint",
            tensor=f"{model_view.DM}{name}.weight",
        )
    return None


def _input_scale(module) -> torch.Tensor | None:
    s = getattr(module, "input_scale", None)
    return None if s is None else s.detach().float().reshape(())


def _live_layer(name: str, module, patcher) -> tuple[Fp8Weight | torch.Tensor, torch.Tensor | None]:
    """(the weight the module computes with, its bias). Refuses a LoRA patch not merged into the
    weight (the host keeps one as a `weight_function` when it loads a model partly, lowvram)."""
    key = f"{model_view.DM}{name}.weight"
    if key in patcher.patches and (key not in patcher.backup or getattr(module, "weight_function", None)):
        raise CheckpointError(
            f"layer {name}: its LoRA patch is not merged into the weight (the model is loaded partly); "
            f"free memory and run again",
            tensor=key,
        )
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, QuantHostLinear):
        fp8 = module.fp8()
        return (fp8 if fp8 is not None else module.weight.detach()), bias
    host = _host_fp8(name, module, module.weight)
    return (host if host is not None else module.weight.detach()), bias


def save_model(patcher, src_path: str, out_path: str, encoding: str = "comfy-native", progress=None) -> dict:
    """Write `patcher`'s model to `out_path` (see the module docstring). `src_path`: the bundle the
    model was loaded from. `progress(done_bytes, total_bytes, key)` after each tensor; it may raise
    (the host's interrupt) to cancel: the output is then left untouched. Returns a summary."""
    check_encoding(encoding)
    plan = plan_checkpoint(src_path, "auto", device=device_caps("cpu"))
    prefix = plan.contents.prefix

    # As the host's own checkpoint save does (ComfyUI 0.30 comfy/sd.py save_checkpoint: load_models_gpu
    # before reading the weights). Clones share one module tree: loading this MODEL undoes the LoRA
    # patches another clone may have merged into it (ModelPatcher.load compares patches_uuid) and
    # merges its own, through our Linear's set_weight for fp8 layers (fresh scale). Fully, when it
    # has patches: a partial (lowvram) load would leave some as unmerged weight functions.
    comfy.model_management.load_models_gpu([patcher], force_full_load=bool(patcher.patches))
    in_force = getattr(patcher.model, "current_weight_patches_uuid", None)
    if in_force is not None and in_force != patcher.patches_uuid:
        raise CheckpointError("the model's weights hold another model's LoRA patches; run again", file=src_path)
    dm = patcher.model.diffusion_model
    planned = {lp.name: lp for lp in plan.layers}
    # The layers by the file's names: model_view knows torch Linears (ours and the host's plain ones),
    # but the host's mixed-precision Linear (its own fp8 loader, ComfyUI 0.30 comfy/ops.py
    # mixed_precision_ops) is a plain Module; this MODEL's object patches win, as model_view's do.
    linears = dict(model_view.linears(patcher))
    for name in planned:
        if name not in linears:
            module = patcher.object_patches.get(model_view.DM + name)
            if module is None:
                try:
                    module = dm.get_submodule(name)
                except AttributeError:
                    continue
            if getattr(module, "weight", None) is not None:
                linears[name] = module
    missing = [n for n in linears if n not in planned]
    extra = [n for n in planned if n not in linears]
    if missing or extra:
        first = (missing or extra)[0]
        raise CheckpointError(
            f"the model and the source bundle do not match: {len(missing)} linear(s) of the model are not in "
            f"the file, {len(extra)} of the file not in the model (first {first}); pick the bundle the model "
            f"was loaded from",
            file=src_path,
            tensor=prefix + first,
        )

    def patched(key: str) -> bool:
        return model_view.DM + key in patcher.patches

    def full_dtype_of(lp, live: torch.Tensor) -> torch.dtype:
        """The source's dtype when the values are the source's, else the model's own."""
        if lp.src.stored_fp8 or patched(lp.name + ".weight"):
            return live.dtype
        return DTYPES[lp.src.weight.dtype][0]

    def bias_dtype_of(lp, live: torch.Tensor) -> torch.dtype:
        return live.dtype if patched(lp.name + ".bias") else DTYPES[lp.src.bias.dtype][0]

    def weight_of(lp):
        w, bias = _live_layer(lp.name, linears[lp.name], patcher)
        if tuple(w.shape) != tuple(lp.out_in):
            raise CheckpointError(
                f"layer {lp.name}: the model holds [out, in] = {list(w.shape)}, the source bundle "
                f"{list(lp.out_in)}; pick the bundle the model was loaded from",
                file=src_path,
                tensor=lp.src.weight.name,
            )
        if (bias is None) != (lp.src.bias is None):
            raise CheckpointError(
                f"layer {lp.name}: the model {'has no' if bias is None else 'has a'} bias, the source bundle "
                f"{'has one' if bias is None else 'has none'}",
                file=src_path,
                tensor=prefix + lp.name + ".bias",
            )
        w_dtype = None if isinstance(w, Fp8Weight) else full_dtype_of(lp, w)
        return w, bias, w_dtype, (None if bias is None else bias_dtype_of(lp, bias))

    def tensor_of(name, info):
        t = comfy.utils.get_attr(dm, name)
        t = getattr(t, "data", t).detach()
        if tuple(t.shape) != tuple(info.shape):
            raise CheckpointError(
                f"{name}: the model holds {list(t.shape)}, the source bundle {list(info.shape)}",
                file=src_path,
                tensor=info.name,
            )
        return t, (t.dtype if patched(name) else DTYPES[info.dtype][0])

    # The header, from the live model's tensors (dtypes and shapes only: nothing is copied here).
    specs, fp8_names, per_row = [], [], []
    order = sorted(
        [(lp.src.weight.begin, "layer", lp) for lp in plan.layers]
        + [(info.begin, "tensor", (n, info)) for n, info in plan.contents.tensors.items()],
        key=lambda t: t[0],
    )
    counts = {"fp8": 0, "full_precision": 0}
    for _, kind, item in order:
        if kind == "tensor":
            name, info = item
            _, dt = tensor_of(name, info)
            specs.append(TensorSpec(prefix + name, st_dtype(dt), info.shape))
            continue
        lp = item
        w, _, w_dtype, b_dtype = weight_of(lp)
        bias_dt = None if b_dtype is None else st_dtype(b_dtype)
        if isinstance(w, Fp8Weight):
            counts["fp8"] += 1
            fp8_names.append(prefix + lp.name)
            if w.per_row:
                per_row.append(prefix + lp.name)
            specs += layer_specs(prefix + lp.name, lp.out_in, "F8_E4M3", w.per_row, w.input_scale is not None, bias_dt)
        else:
            counts["full_precision"] += 1
            specs += layer_specs(prefix + lp.name, lp.out_in, st_dtype(w_dtype), False, False, bias_dt)
    refuse_per_row(encoding, per_row, src_path)
    copied = copied_keys(plan)
    specs += [TensorSpec(i.name, i.dtype, i.shape) for i in copied]

    label = patcher.model_options.get("ltx_fp8", {}).get("label", "a MODEL")
    note = {
        "made_by": "comfyui-ltx-fp8 Save LTX FP8 Checkpoint",
        "source": os.path.basename(src_path),
        "model": label,
        "lora_patched_weights": len(patcher.patches),
        "encoding": encoding,
        "layers": counts,
    }
    metadata = output_metadata(plan.index.metadata, encoding, fp8_names, note)

    with SafetensorsWriter(out_path, specs, metadata, sources=[src_path], progress=progress) as w:
        for _, kind, item in order:
            if kind == "tensor":
                name, info = item
                t, dt = tensor_of(name, info)
                w.write(prefix + name, t.to(dt))  # one tensor copied at a time, at most
                continue
            weight, bias, w_dtype, b_dtype = weight_of(item)
            if w_dtype is not None:
                weight = weight.to(w_dtype)
            if b_dtype is not None:
                bias = bias.to(b_dtype)
            for key, t in layer_tensors(prefix + item.name, weight, bias):
                w.write(key, t)
        copy_unchanged(w, plan, copied)
        total = w.total_bytes
    return {
        "out": out_path,
        "source": src_path,
        "encoding": encoding,
        "bytes": total,
        "tensors": len(specs),
        "layers": counts,
        "copied_keys": len(copied),
        "lora_patched_weights": len(patcher.patches),
    }
