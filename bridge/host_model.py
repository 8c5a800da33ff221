"""Build the host's own LTXAV model (ModelPatcher) from a `LoadPlan`, streaming the file.

The host's `load_diffusion_model_state_dict` needs the whole state dict in memory and drops the
scales of ltx-core files (it logs `weight_scale` / `input_scale` as unexpected keys and loads the
codes as if they were the weights). We reuse its pieces instead: its
detection (`model_config_from_unet`) on a meta-tensor state dict, its dtype choice, its LTXAV model
class with our Linear as `custom_operations`, and its ModelPatcher. The weights then arrive one
tensor at a time from `quant.stream.iter_load`.
"""

from __future__ import annotations

import functools
import gc
import os
from dataclasses import dataclass, replace

import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils
import torch

from ..quant import in_use
from ..quant.budget import fit_budget
from ..quant.errors import CheckpointError
from ..quant.layer import QuantLayer
from ..quant.plan import LoadPlan
from ..quant.stream import item_bytes, iter_load, load_items
from .errors import refuse_if_too_big
from .host_linear import QuantHostLinear


@functools.cache
def make_ops(manual_cast: bool):
    """The host's ops with our Linear. manual_cast mirrors `comfy.ops.pick_operations`: it is what
    the host itself picks when weights are stored in a dtype the device does not compute in."""
    base = comfy.ops.manual_cast if manual_cast else comfy.ops.disable_weight_init

    class Linear(QuantHostLinear, base.Linear):
        comfy_cast_weights = base.Linear.comfy_cast_weights

    return type(f"LTXFP8Ops_{base.__name__}", (base,), {"Linear": Linear})


def meta_state_dict(plan: LoadPlan) -> dict[str, torch.Tensor]:
    """Canonical keys -> meta tensors with the shapes the model will hold ([out, in] linears)."""
    from ..quant.safetensors_header import DTYPES

    sd = {}
    for name, info in plan.contents.tensors.items():
        sd[name] = torch.empty(info.shape, dtype=DTYPES[info.dtype][0], device="meta")
    for lp in plan.layers:
        sd[lp.name + ".weight"] = torch.empty(lp.out_in, dtype=lp.src.weight.torch_dtype, device="meta")
        if lp.src.bias is not None:
            sd[lp.name + ".bias"] = torch.empty(lp.src.bias.shape, dtype=torch.bfloat16, device="meta")
    return sd


def detect(plan: LoadPlan, load_device):
    """The host's model config for this file, and its weight / compute dtypes on `load_device`."""
    sd = meta_state_dict(plan)
    _check_config(plan)
    try:
        model_config = comfy.model_detection.model_config_from_unet(sd, "", metadata=plan.index.metadata)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(
            f"the host cannot detect a model from this file ({type(e).__name__}: {str(e)[:200]})", file=plan.path
        ) from None
    if model_config is None or model_config.unet_config.get("image_model") != "ltxav":
        found = None if model_config is None else model_config.unet_config.get("image_model")
        raise CheckpointError(
            f"not an LTX-2 audio-video (LTXAV) transformer (host detected: {found}); "
            f"expected keys such as adaln_single.emb.timestep_embedder.linear_1.bias "
            f"and audio_adaln_single.linear.weight",
            file=plan.path,
        )
    params = sum(t.numel() for t in sd.values())
    supported = list(model_config.supported_inference_dtypes)
    # Our full-precision layers are bf16 in the official files; ask for the host's usual choice.
    weight_dtype = comfy.model_management.unet_dtype(
        model_params=params, supported_dtypes=supported, weight_dtype=torch.bfloat16
    )
    manual = comfy.model_management.unet_manual_cast(weight_dtype, load_device, supported)
    model_config.set_inference_dtype(weight_dtype, manual, device=load_device)
    return model_config, weight_dtype, manual


def _check_config(plan: LoadPlan) -> None:
    """The host builds the model from the header's `config["transformer"]` (it overrides even the
    block count it reads from the keys): a config that is not an object of sane sizes, or whose
    num_layers differs from the file's blocks, is refused before the host allocates anything.
    The planner parsed and checked the config once (`plan.config`); this decides what it means
    for the host."""
    config = plan.config
    if config is None or not config.present:
        return
    if config.transformer is None:
        raise CheckpointError("header config is not a JSON object with a 'transformer' object", file=plan.path)
    if config.problem:
        raise CheckpointError(f"header config['transformer'] cannot size the model: {config.problem}", file=plan.path)
    n, blocks = config.transformer.get("num_layers"), config.blocks
    if n is not None and n != blocks:
        raise CheckpointError(
            f"header config['transformer'] says num_layers = {n} but the file holds {blocks} transformer blocks",
            file=plan.path,
        )


def _check_skeleton(plan: LoadPlan, dm: torch.nn.Module) -> dict[str, QuantHostLinear]:
    """Every linear of the model has its layer in the file with the right [out, in], and every other
    parameter has its tensor: nothing loads with a default-initialised weight."""
    linears = {n: m for n, m in dm.named_modules() if isinstance(m, QuantHostLinear)}
    planned = {lp.name: lp for lp in plan.layers}
    for name, m in linears.items():
        lp = planned.get(name)
        if lp is None:
            raise CheckpointError(
                f"the model needs layer {name} [{m.out_features}, {m.in_features}] but the file has no weight for it",
                file=plan.path,
                tensor=plan.contents.prefix + name + ".weight",
            )
        if tuple(lp.out_in) != (m.out_features, m.in_features):
            raise CheckpointError(
                f"layer {name}: [out, in] = {list(lp.out_in)} but the model built from "
                f"the header config wants {[m.out_features, m.in_features]}",
                file=plan.path,
                tensor=lp.src.weight.name,
            )
        if (m.bias is None) != (lp.src.bias is None):
            # A missing bias would stay an unloaded (meta) parameter; an extra one would be invented.
            raise CheckpointError(
                f"layer {name}: the model {'has' if m.bias is not None else 'has no'} a bias "
                f"but the file {'has none' if lp.src.bias is None else 'has one'}",
                file=plan.path,
                tensor=plan.contents.prefix + name + ".bias",
            )
    extra = [n for n in planned if n not in linears]
    if extra:
        raise CheckpointError(
            f"{len(extra)} linear layer(s) of the file are not in the model, first {extra[0]}",
            file=plan.path,
            tensor=plan.contents.prefix + extra[0] + ".weight",
        )
    linear_keys = {f"{n}.{p}" for n in linears for p in ("weight", "bias", "weight_scale", "input_scale")}
    wanted = [k for k in dm.state_dict(keep_vars=True) if k not in linear_keys]
    missing = [k for k in wanted if k not in plan.contents.tensors]
    if missing:
        raise CheckpointError(
            f"{len(missing)} tensor(s) of the model are missing from the file, first {missing[0]}",
            file=plan.path,
            tensor=plan.contents.prefix + missing[0],
        )
    params = dm.state_dict(keep_vars=True)
    for k in wanted:
        info = plan.contents.tensors[k]
        if tuple(info.shape) != tuple(params[k].shape):
            raise CheckpointError(
                f"{k} has shape {list(info.shape)} but the model wants {list(params[k].shape)}",
                file=plan.path,
                tensor=info.name,
            )
    unknown = [k for k in plan.contents.tensors if k not in set(wanted)]
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} tensor(s) of the file are not part of the model, first {unknown[0]}",
            file=plan.path,
            tensor=plan.contents.prefix + unknown[0],
        )
    return linears


@dataclass(frozen=True)
class HostPlan:
    """A plan with what the host decided for it on a load device: its model config, and `plan`
    derived with the host's weight dtype as compute dtype (bf16-mode layers and the other tensors
    are held in it; the load report and the memory estimate read it from there)."""

    plan: LoadPlan
    model_config: object
    manual_cast: torch.dtype | None


def host_plan(plan: LoadPlan, load_device) -> HostPlan:
    model_config, weight_dtype, manual = detect(plan, load_device)
    derived = replace(plan, compute_dtype=weight_dtype)
    if plan.budget is not None and weight_dtype != plan.compute_dtype:
        # A weight budget counts bytes in the dtype the model holds: fit it again for the host's
        # (the errors measured for the first fit are reused, nothing is read twice).
        derived = fit_budget(derived)
    return HostPlan(derived, model_config, manual)


class _BytesProgress:
    """The host's progress bar (comfy.utils.ProgressBar, as its own long nodes use) by file bytes
    read, updated every 1/200 of the load: one websocket message per tensor would be thousands."""

    def __init__(self, total: int):
        self.total, self.done, self.shown = max(total, 1), 0, 0
        self.bar = comfy.utils.ProgressBar(self.total)

    def __call__(self, n: int) -> None:
        self.done += n
        if self.done - self.shown >= self.total // 200 or self.done >= self.total:
            self.shown = self.done
            self.bar.update_absolute(min(self.done, self.total), self.total)


def build_model_patcher(plan: LoadPlan | HostPlan, load_device=None, offload_device=None):
    """The host's LTXAV ModelPatcher with every layer as the plan says. All or nothing: on any
    error the partly built model is dropped before the error propagates, so no half-loaded model
    is ever cached by the host. A load whose converted weights cannot fit the RAM available is
    refused before anything is built (quant/ram_guard.refuse_if_too_big, with the host's RAM probe).

    The host's modules get the loaded tensors themselves: those that need no conversion stay
    file-backed (quant/stream.py), and the other tensors arrive in the host's weight dtype, so
    with a bf16 weight dtype (GPUs, `--bf16-unet`) the file's bf16 tensors are not copied either."""
    load_device = load_device or comfy.model_management.get_torch_device()
    offload_device = offload_device or comfy.model_management.unet_offload_device()
    hp = plan if isinstance(plan, HostPlan) else host_plan(plan, load_device)
    plan, model_config, weight_dtype = hp.plan, hp.model_config, hp.plan.compute_dtype
    refuse_if_too_big(plan, os.path.basename(plan.path), tensor_dtype=weight_dtype)
    model_config.custom_operations = make_ops(hp.manual_cast is not None)
    model = dm = linears = target = item = patcher = None
    try:
        model = model_config.get_model({}, "")
        dm = model.diffusion_model
        linears = _check_skeleton(plan, dm)
        progress = _BytesProgress(sum(item_bytes(it) for _, _, it in load_items(plan)))
        for name, item in iter_load(plan, "cpu", tensor_dtype=weight_dtype, progress=progress):
            # A user's Cancel during a multi-GB load stops it here, between tensors.
            comfy.model_management.throw_exception_if_processing_interrupted()
            if isinstance(item, QuantLayer):
                linears[name].set_layer(item, plan.activation, plan.backend)
            else:
                target = comfy.utils.get_attr(dm, name)
                with torch.no_grad():
                    target.data = item.to(target.dtype)  # no copy: iter_load cast it already
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
        in_use.register(plan.path, model)  # no writer of this pack replaces the file under the model
        if not comfy.model_management.is_device_cpu(offload_device):
            model.to(offload_device)
        return patcher
    except BaseException:
        # The traceback keeps this frame alive while the error travels to the host (which may keep
        # it a while): drop every reference to the partly built model now, so its memory is freed.
        model = dm = linears = target = item = patcher = None
        gc.collect()
        raise
